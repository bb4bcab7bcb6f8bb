"""Tiny random Hugging Face checkpoints for tests: every supported architecture, built with
transformers and saved to a folder, with a character-level tokenizer and a chat template.

Nothing is downloaded. Weights use a larger init than transformers' default so that logits are
peaked and greedy argmax is not decided by float rounding noise.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)
# A Hermes-style template that renders tools, assistant tool calls and tool results (for tool-calling tests).
TOOL_CHAT_TEMPLATE = (
    "{% if tools %}{{ '<tools>' }}{% for t in tools %}{{ t | tojson }}{% endfor %}"
    "{{ '</tools>\\n' }}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'tool' %}{{ '<tool_response id=' + m['tool_call_id'] + '>' + m['content'] + '\\n' }}"
    "{% else %}{{ '<' + m['role'] + '>' + (m['content'] or '') }}"
    "{% for c in m['tool_calls'] or [] %}{{ '<tool_call>' }}"
    "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}"
    "{{ '</tool_call>' }}{% endfor %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
VOCAB_SIZE = 128

# name -> (transformers config class name, overrides of the common config)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "llama_mqa": ("LlamaConfig", {"num_key_value_heads": 1}),
    "llama_tied": ("LlamaConfig", {"tie_word_embeddings": True}),
    "llama3_rope": (
        "LlamaConfig",
        {
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    ),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {"head_dim": 32}),
}


def char_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A PreTrainedTokenizerFast over printable ASCII, one token per character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    assert len(vocab) <= VOCAB_SIZE
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_tiny_model(
    variant: str,
    out_dir: str | Path,
    dtype: str = "float32",
    seed: int = 0,
    init_std: float = 0.15,
    chat_template: str | None = CHAT_TEMPLATE,
    **overrides: Any,
) -> Path:
    """Build a random tiny checkpoint of `variant` (see VARIANTS) in `out_dir` and return the path."""
    import torch
    import transformers

    cls_name, variant_overrides = VARIANTS[variant]
    kwargs: dict[str, Any] = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        initializer_range=init_std,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    kwargs.update(variant_overrides)
    kwargs.update(overrides)
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # transformers initialises norms to one; perturb them so q/k-norm and final-norm weights matter.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model = model.to(getattr(torch, dtype))
    out = Path(out_dir)
    model.save_pretrained(out)
    # Note: for model_type qwen2, transformers 5's AutoTokenizer forces Qwen2Tokenizer, whose
    # pre-tokenizer drops whitespace with this vocabulary; tests compare token ids, so that is harmless.
    char_tokenizer(chat_template).save_pretrained(out)
    return out
