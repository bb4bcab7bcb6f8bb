"""Which checkpoint a benchmark runs: a directory, the demo model, or random weights of a known shape.

`--random-model qwen2.5-0.5b` builds a checkpoint with the exact shape of Qwen2.5-0.5B (from the
planner's preset) and random bf16 weights, saved once to a temp folder and reused: the speed of a
model does not depend on its weights' values, and nothing is downloaded. It carries a word-level
tokenizer over the whole vocabulary (token i <-> "<i>"), so detokenization costs what it costs
with a real tokenizer; benchmarks feed prompt token ids directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from nanoserve.errors import InvalidRequestError

log = logging.getLogger(__name__)

RANDOM_MODEL_SEED = 0


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """`--random-model PRESET [--random-layers N]`: the alternative to EngineArgs' `--model DIR`."""
    p.add_argument(
        "--random-model",
        default=None,
        metavar="PRESET",
        help="random bf16 weights shaped like a planner preset, e.g. qwen2.5-0.5b (instead of --model)",
    )
    p.add_argument("--random-layers", type=int, default=None, help="fewer layers for a quick random model")


def resolve_model(model: str | None, random_model: str | None, random_layers: int | None = None) -> str:
    """The checkpoint directory to benchmark."""
    if random_model:
        if model:
            raise InvalidRequestError("pass either --model or --random-model, not both", "random_model")
        return str(build_random_model(random_model, layers=random_layers))
    if model:
        from nanoserve.models_cache import resolve_model as resolve_named

        model = resolve_named(model)  # a named model (`nanoserve fetch smollm2`) is its cached folder
        if not (Path(model) / "config.json").is_file():
            raise InvalidRequestError(f"--model {model}: no config.json in that directory", "model")
        return model
    from nanoserve.demo import default_model

    return default_model()


def random_model_dir(name: str, layers: int | None = None) -> Path:
    suffix = f"-{layers}l" if layers else ""
    return Path(tempfile.gettempdir()) / "nanoserve-random-models" / f"{name}{suffix}-seed{RANDOM_MODEL_SEED}"


def build_random_model(name: str, out_dir: str | Path | None = None, layers: int | None = None) -> Path:
    """Random bf16 checkpoint shaped like the planner preset `name` (Llama / Qwen2 families)."""
    from nanoserve.planner.models import get_model

    spec = get_model(name)
    if layers:
        spec = spec.with_(layers=layers)
    if spec.is_moe or spec.mlp_kind != "swiglu" or spec.learned_positions:
        raise InvalidRequestError(
            f"--random-model supports Llama/Qwen-shaped dense models, not {spec.name}", "random_model"
        )
    out = Path(out_dir) if out_dir else random_model_dir(name, layers)
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    import torch
    import transformers

    common = dict(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position or 32768,
        tie_word_embeddings=spec.tied_embeddings,
        rms_norm_eps=1e-6,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    if spec.qkv_bias:  # the Qwen2 family
        config = transformers.Qwen2Config(rope_theta=1e6, **common)
    else:
        config = transformers.LlamaConfig(rope_theta=5e5, attention_bias=False, **common)
    log.info("building random %s (%d layers) in %s", spec.name, spec.layers, out)
    torch.manual_seed(RANDOM_MODEL_SEED)
    with torch.device("cpu"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    del model
    _word_tokenizer(spec.vocab).save_pretrained(tmp)
    meta = {
        "random_model": name,
        "layers": spec.layers,
        "seed": RANDOM_MODEL_SEED,
        "shape_source": spec.source,
    }
    (tmp / "nanoserve_random_model.json").write_text(json.dumps(meta, indent=2))
    tmp.rename(out)
    return out


def _word_tokenizer(vocab_size: int):
    """Token i <-> "<i>" (0, 1, 2 = bos, eos, pad): decodes any id of the model's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<2>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<0>", eos_token="<1>", pad_token="<2>", unk_token="<2>"
    )


def special_token_ids(model_dir: str) -> set[int]:
    """bos / eos / pad ids from config.json: prompts avoid them."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    ids: set[int] = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = cfg.get(key)
        ids.update(v if isinstance(v, list) else [v] if isinstance(v, int) else [])
    return ids


def vocab_size(model_dir: str) -> int:
    return int(json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"])
