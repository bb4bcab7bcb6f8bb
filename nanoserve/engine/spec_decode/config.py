"""SpeculativeConfig: vLLM's `speculative_config`, parsed from a dict (Python) or a JSON string (CLI).

    {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 1}
    {"method": "draft_model", "model": "models/toy-assistant-draft", "num_speculative_tokens": 3}
    optional: "disable_by_batch_size": N (no drafting in a step once N sequences run; null: never)
    optional (draft_model): "dtype": "auto" | "float32" | "bfloat16" | "float16" (the draft model's; see
    DRAFT_DTYPES)

vLLM also infers the method from "model" alone, and takes "[ngram]" as the model of an n-gram config;
both are accepted here. Pure Python (config.py validates EngineArgs with it before anything loads).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nanoserve.errors import InvalidRequestError

METHODS = ("ngram", "draft_model")
_FIELD = "speculative_config"
_KEYS = {"method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min", "model",
         "disable_by_batch_size", "dtype"}
# The draft model's dtype (vLLM has no such key: its draft runs in the target's dtype). The draft's
# precision never changes what is emitted (every draft is verified by the target), only how often it
# is accepted, so "auto" runs an fp32 target's draft in bf16 where the CPU has the native bf16 kernels
# (draft_runner.draft_dtype): on the demo models the draft is then ~20% cheaper (its weights fit in L2)
# with the same acceptance at every position; otherwise it is the target's dtype.
DRAFT_DTYPES = ("auto", "float32", "bfloat16", "float16")
# Drafting stops for a step once this many sequences run (vLLM's key); None: never. See
# benchmarks/RESULTS.md "Speculative decoding (issue #13)" for the measurement behind the default.
# Measured on the demo models: at batch 1 the draft model speeds decoding up 1.1-1.8x (k 3-6), at batch 8 it
# is break-even or worse and at batch 32 speculation costs 25-80% (the k + 1-token verify goes through
# the prefill attention path), so drafting stops from 4 running sequences; null turns this off.
DEFAULT_DISABLE_BY_BATCH_SIZE: int | None = 4


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str  # "ngram" | "draft_model"
    num_speculative_tokens: int  # k: draft tokens proposed per sequence and step
    prompt_lookup_max: int = 4  # ngram: longest suffix looked up in the sequence's earlier tokens
    prompt_lookup_min: int = 1  # ngram: shortest
    model: str | None = None  # draft_model: checkpoint directory (must share the target's tokenizer)
    # Skip drafting for a step when at least this many sequences are running (exactness unaffected:
    # those sequences decode plainly); None: always draft.
    disable_by_batch_size: int | None = DEFAULT_DISABLE_BY_BATCH_SIZE
    dtype: str = "auto"  # draft_model: the draft's dtype, one of DRAFT_DTYPES


def parse_speculative_config(
    value: dict[str, Any] | str | SpeculativeConfig | None,
) -> SpeculativeConfig | None:
    """The validated config, or None (speculation off). Raises InvalidRequestError with the reason."""
    if value is None or isinstance(value, SpeculativeConfig):
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise InvalidRequestError(f"speculative_config is not valid JSON: {e}", _FIELD) from None
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"speculative_config must be a dict (or a JSON object), got {type(value).__name__}", _FIELD
        )
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise InvalidRequestError(
            f"speculative_config has unknown key(s) {unknown}; known: {sorted(_KEYS)}", _FIELD
        )
    model = value.get("model")
    method = value.get("method")
    if method is None:  # vLLM's shorthands
        method = "ngram" if model in ("[ngram]", "ngram") else "draft_model" if model else None
    if model in ("[ngram]", "ngram"):
        model = None
    if method not in METHODS:
        raise InvalidRequestError(
            f"speculative_config.method must be one of {METHODS}, got {method!r}", _FIELD
        )
    k = value.get("num_speculative_tokens")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidRequestError(
            f"speculative_config.num_speculative_tokens must be a positive integer, got {k!r}", _FIELD
        )
    lo = value.get("prompt_lookup_min", 1)
    hi = value.get("prompt_lookup_max", max(4, lo) if isinstance(lo, int) else 4)
    for name, v in (("prompt_lookup_min", lo), ("prompt_lookup_max", hi)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InvalidRequestError(
                f"speculative_config.{name} must be a positive integer, got {v!r}", _FIELD
            )
    if lo > hi:
        raise InvalidRequestError(
            f"speculative_config.prompt_lookup_min ({lo}) must not exceed prompt_lookup_max ({hi})", _FIELD
        )
    off = value.get("disable_by_batch_size", DEFAULT_DISABLE_BY_BATCH_SIZE)
    if off is not None and (not isinstance(off, int) or isinstance(off, bool) or off < 1):
        raise InvalidRequestError(
            f"speculative_config.disable_by_batch_size must be a positive integer or null, got {off!r}",
            _FIELD,
        )
    dtype = value.get("dtype", "auto")
    if dtype not in DRAFT_DTYPES:
        raise InvalidRequestError(
            f"speculative_config.dtype must be one of {DRAFT_DTYPES}, got {dtype!r}", _FIELD
        )
    if method == "draft_model":
        if not isinstance(model, str) or not model:
            raise InvalidRequestError(
                "speculative_config.model must name the draft model's checkpoint directory", _FIELD
            )
    elif model is not None:
        raise InvalidRequestError("speculative_config.model is for method draft_model, not ngram", _FIELD)
    elif "dtype" in value:
        raise InvalidRequestError("speculative_config.dtype is for method draft_model, not ngram", _FIELD)
    return SpeculativeConfig(method, k, hi, lo, model, off, dtype)
