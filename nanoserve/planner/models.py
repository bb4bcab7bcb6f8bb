"""Model shapes: what the calculators need to know of a transformer, no weights.

`head_dim` is explicit (Qwen3, Gemma and others break head_dim = hidden / heads), `kv_heads` carries
GQA/MQA, and the flags record the small parameters calculators usually forget (q/k/v biases, qk-norm,
norm biases, learned positions, an untied lm_head, the MoE router).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nanoserve.errors import InvalidRequestError

MLP_KINDS = ("swiglu", "gelu")   # swiglu: gate, up, down (3 matrices); gelu: up, down (2 matrices)
NORM_KINDS = ("rmsnorm", "layernorm")  # rmsnorm: weight only; layernorm: weight and bias


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int                 # per expert for MoE
    vocab: int
    tied_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False             # Qwen3: RMSNorm(head_dim) on q and k
    mlp_kind: str = "swiglu"
    norm_kind: str = "rmsnorm"
    learned_positions: int = 0        # rows of a learned position table (GPT-2: 1024); 0 = rotary
    max_position: int = 0             # context the model was trained for
    num_experts: int = 0              # 0 = dense
    experts_per_token: int = 0        # top-k routing
    sliding_window: int | None = None
    dtype: str = "bf16"               # checkpoint dtype
    source: str = ""

    def __post_init__(self) -> None:
        for f in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise InvalidRequestError(f"model {f} must be a positive integer (got {v!r})", f)
        if self.heads % self.kv_heads:
            raise InvalidRequestError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})", "kv_heads")
        if self.mlp_kind not in MLP_KINDS:
            raise InvalidRequestError(f"mlp_kind must be one of {MLP_KINDS}", "mlp_kind")
        if self.norm_kind not in NORM_KINDS:
            raise InvalidRequestError(f"norm_kind must be one of {NORM_KINDS}", "norm_kind")
        if self.num_experts and not 0 < self.experts_per_token <= self.num_experts:
            raise InvalidRequestError("experts_per_token must be in 1..num_experts", "experts_per_token")

    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads (= hidden for most models, not Qwen3/Gemma)."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): kv_heads · head_dim."""
        return self.kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def gqa_group(self) -> int:
        """Query heads sharing one KV head (1 = MHA, heads = MQA)."""
        return self.heads // self.kv_heads

    def with_(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)


def _llama(name: str, layers: int, hidden: int, heads: int, kv: int, inter: int, vocab: int,
           max_pos: int, source: str, **kw: Any) -> ModelSpec:
    return ModelSpec(name, layers, hidden, heads, kv, kw.pop("head_dim", hidden // heads), inter, vocab,
                     max_position=max_pos, source=source, **kw)


_HF = "Hugging Face config.json of"
PRESETS: dict[str, ModelSpec] = {
    "gpt2": ModelSpec("GPT-2 small", 12, 768, 12, 12, 64, 3072, 50257, tied_embeddings=True,
                      qkv_bias=True, o_bias=True, mlp_bias=True, mlp_kind="gelu", norm_kind="layernorm",
                      learned_positions=1024, max_position=1024, dtype="fp32",
                      source=f"{_HF} openai-community/gpt2 (124.4M params)"),
    "llama-3.1-8b": _llama("Llama-3.1-8B", 32, 4096, 32, 8, 14336, 128256, 131072,
                           f"{_HF} meta-llama/Llama-3.1-8B (8.03B params)"),
    "llama-3.1-70b": _llama("Llama-3.1-70B", 80, 8192, 64, 8, 28672, 128256, 131072,
                            f"{_HF} meta-llama/Llama-3.1-70B (70.55B params)"),
    "llama-3.1-405b": _llama("Llama-3.1-405B", 126, 16384, 128, 8, 53248, 128256, 131072,
                             f"{_HF} meta-llama/Llama-3.1-405B (405.85B params)"),
    "qwen2.5-0.5b": _llama("Qwen2.5-0.5B", 24, 896, 14, 2, 4864, 151936, 32768,
                           f"{_HF} Qwen/Qwen2.5-0.5B (0.494B params)", tied_embeddings=True, qkv_bias=True),
    "qwen2.5-7b": _llama("Qwen2.5-7B", 28, 3584, 28, 4, 18944, 152064, 131072,
                         f"{_HF} Qwen/Qwen2.5-7B (7.62B params)", qkv_bias=True),
    "qwen2.5-72b": _llama("Qwen2.5-72B", 80, 8192, 64, 8, 29568, 152064, 131072,
                          f"{_HF} Qwen/Qwen2.5-72B (72.71B params)", qkv_bias=True),
    "mistral-7b": _llama("Mistral-7B-v0.1", 32, 4096, 32, 8, 14336, 32000, 32768,
                         f"{_HF} mistralai/Mistral-7B-v0.1 (7.24B params)", sliding_window=4096),
    "mixtral-8x7b": _llama("Mixtral-8x7B-v0.1", 32, 4096, 32, 8, 14336, 32000, 32768,
                           f"{_HF} mistralai/Mixtral-8x7B-v0.1 (46.7B total / 12.9B active)",
                           num_experts=8, experts_per_token=2),
}

ALIASES: dict[str, str] = {
    "gpt2-small": "gpt2", "gpt-2": "gpt2", "gpt-2-small": "gpt2", "gpt2-124m": "gpt2",
    "llama-3-8b": "llama-3.1-8b", "llama3-8b": "llama-3.1-8b", "llama3.1-8b": "llama-3.1-8b",
    "llama-3-70b": "llama-3.1-70b", "llama3-70b": "llama-3.1-70b", "llama3.1-70b": "llama-3.1-70b",
    "llama-70b": "llama-3.1-70b", "llama-3-405b": "llama-3.1-405b", "llama3.1-405b": "llama-3.1-405b",
    "mistral-7b-v0.1": "mistral-7b", "mixtral": "mixtral-8x7b", "mixtral-8x7b-v0.1": "mixtral-8x7b",
    "qwen2.5-0.5b-instruct": "qwen2.5-0.5b", "qwen2.5-7b-instruct": "qwen2.5-7b",
    "qwen2.5-72b-instruct": "qwen2.5-72b",
}


def _norm(name: str) -> str:
    s = name.strip().lower().split("/")[-1]     # drop an org prefix: meta-llama/Llama-3.1-8B
    s = re.sub(r"[\s_]+", "-", s)
    s = s.replace("meta-llama-", "llama-").replace("-instruct", "").replace("-hf", "")
    return s


def get_model(name: str | ModelSpec) -> ModelSpec:
    """Preset by forgiving name ("llama-3.1-70b", "meta-llama/Llama-3.1-8B", "gpt2") or a config.json."""
    if isinstance(name, ModelSpec):
        return name
    if not isinstance(name, (str, Path)):
        raise InvalidRequestError(
            f"model must be a preset name, a config.json path or a ModelSpec (got {type(name).__name__})",
            "model")
    p = Path(name)
    if p.suffix == ".json" or (p.is_dir() and (p / "config.json").is_file()):
        return from_hf_config(p)
    key = _norm(name)
    if key in PRESETS:
        return PRESETS[key]
    if key in ALIASES:
        return PRESETS[ALIASES[key]]
    squashed = key.replace("-", "").replace(".", "")
    for k in list(PRESETS) + list(ALIASES):
        if k.replace("-", "").replace(".", "") == squashed:
            return PRESETS[ALIASES.get(k, k)]
    raise InvalidRequestError(
        f"unknown model {name!r}; presets: {', '.join(PRESETS)} (or pass a config.json path)", "model")


def list_models() -> list[ModelSpec]:
    return list(PRESETS.values())


SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "gpt2")


def from_hf_config(config: dict[str, Any] | str | Path, name: str | None = None) -> ModelSpec:
    """ModelSpec from a Hugging Face config (a dict, a config.json path, or a model directory)."""
    if not isinstance(config, dict):
        p = Path(config)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise InvalidRequestError(f"config not found: {p}", "model")
        try:
            config = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise InvalidRequestError(f"{p}: not valid JSON ({e})", "model") from e
        name = name or p.parent.name
    cfg: dict[str, Any] = dict(config)
    try:
        return _spec_from_config(cfg, name)
    except KeyError as e:
        raise InvalidRequestError(f"config.json lacks {e.args[0]!r}, which a {cfg.get('model_type')!r} "
                                  "model needs", "model") from e
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(f"config.json has a malformed value: {e}", "model") from e


def _spec_from_config(cfg: dict[str, Any], name: str | None) -> ModelSpec:
    mtype = str(cfg.get("model_type", "")).lower()
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise InvalidRequestError(
            f"unsupported model_type {mtype!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}", "model")
    name = name or cfg.get("_name_or_path") or mtype
    dtype = _dtype_name(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16")
    if mtype == "gpt2":
        hidden = int(cfg.get("n_embd", 768))
        heads = int(cfg.get("n_head", 12))
        n_pos = int(cfg.get("n_positions", 1024))
        return ModelSpec(
            name, int(cfg.get("n_layer", 12)), hidden, heads, heads, hidden // heads,
            int(cfg.get("n_inner") or 4 * hidden), int(cfg.get("vocab_size", 50257)),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", True)), qkv_bias=True, o_bias=True,
            mlp_bias=True, mlp_kind="gelu", norm_kind="layernorm", learned_positions=n_pos,
            max_position=n_pos, dtype=dtype, source="from config.json (gpt2)")
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    attn_bias = bool(cfg.get("attention_bias", False))
    qkv_bias = mtype == "qwen2" or attn_bias  # Qwen2 always has q/k/v biases (and no o bias)
    experts = int(cfg.get("num_local_experts", 0)) if mtype == "mixtral" else 0
    return ModelSpec(
        name, int(cfg["num_hidden_layers"]), hidden, heads, kv, head_dim, int(cfg["intermediate_size"]),
        int(cfg["vocab_size"]), tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias, o_bias=attn_bias and mtype != "qwen2", mlp_bias=bool(cfg.get("mlp_bias", False)),
        qk_norm=mtype == "qwen3", max_position=int(cfg.get("max_position_embeddings", 0)),
        num_experts=experts, experts_per_token=int(cfg.get("num_experts_per_tok", 0)) if experts else 0,
        sliding_window=cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None,
        dtype=dtype, source=f"from config.json ({mtype})")


def _dtype_name(d: Any) -> str:
    s = str(d).lower().replace("torch.", "")
    names = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "half": "fp16", "float": "fp32"}
    return names.get(s, s)
