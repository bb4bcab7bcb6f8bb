"""Benchmark request lengths that fit the model's context, decided before any request is sent.

`--input-len` / `--output-len` default to 128 each, as in vLLM, shrunk to fit a shorter context
(the demo model has 128 tokens: 64 in, 63 out). Lengths given explicitly that cannot fit (with their
range ratios, the longest request) are an error naming the flags and the context.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from nanoserve.bench.dataset import length_bounds

DEFAULT_INPUT_LEN = 128
DEFAULT_OUTPUT_LEN = 128


class LengthError(ValueError):
    """Requested lengths that cannot fit the context."""


def context_len(model_dir: str, max_model_len: int | None) -> int:
    """The context the engine will have: --max-model-len, else config.json's max_position_embeddings."""
    if max_model_len:
        return int(max_model_len)
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return int(cfg.get("max_position_embeddings") or 2048)


def fit_lengths(input_len: int | None, output_len: int | None, max_model_len: int,
                input_ratio: float = 0.0, output_ratio: float = 0.0) -> tuple[int, int]:
    """(input_len, output_len): defaults shrunk to fit max_model_len; LengthError if given ones do not."""
    if max_model_len < 2:
        raise LengthError(f"the model's context ({max_model_len} tokens) has no room for a prompt and output")
    if input_len is None:
        # At most half the context for the longest prompt: room is left for the output.
        input_len = min(DEFAULT_INPUT_LEN, max(1, math.floor((max_model_len // 2) / (1 + input_ratio))))
    in_high = length_bounds(input_len, input_ratio, "input_len")[1]
    if output_len is None:
        room = max_model_len - in_high
        output_len = min(DEFAULT_OUTPUT_LEN, max(1, math.floor(room / (1 + output_ratio))))
    out_high = length_bounds(output_len, output_ratio, "output_len")[1]
    if in_high + out_high > max_model_len:
        raise LengthError(
            f"--input-len {input_len} and --output-len {output_len} (longest request {in_high} + {out_high} "
            f"tokens with the range ratios) do not fit the model's context of {max_model_len} tokens; "
            "choose smaller lengths (or leave them out: the defaults fit the context)")
    return input_len, output_len
