"""Quantized decode speed: fewer bytes per weight, proportionally more tokens per second.

Batch-1 decode streams every weight once per token, so its floor is weight_bytes / bandwidth and its
ceiling bandwidth / weight_bytes tok/s: int8 doubles bf16's speed, int4 quadruples it. Per-group
quantization stores a scale (and maybe a zero point) per `group_size` weights, which memory's
`bytes_per_param` adds. Weight-only formats (W8A16, W4A16) still compute in bf16, so the compute
roof, and with it the batch at which decode turns compute-bound, comes from the compute dtype.
"""

from __future__ import annotations

import math

from nanoserve.planner.checks import fraction as _fraction
from nanoserve.planner.checks import positive as _positive
from nanoserve.planner.checks import positive_int as _positive_int
from nanoserve.planner.derivation import Result, _fmt, derive
from nanoserve.planner.memory import bytes_per_param


def quantized_weight_bytes(
    n_params: float, dtype: str, group_size: int | None = None, zero_point: bool = False
) -> Result:
    """Weight memory of `n_params` stored as `dtype`: N · bytes per param (scales included)."""
    n = _positive("n_params", n_params)
    bpp = bytes_per_param(dtype, group_size, zero_point=zero_point)
    return derive(
        "weight memory",
        n * bpp.value,
        "bytes",
        "N · bytes_per_param",
        f"{_fmt(n)} × {_fmt(bpp.value)}",
        {"n_params": n, "dtype": dtype},
        [bpp],
    )


def quantized_decode_speed(
    n_params: float,
    dtype: str,
    bandwidth_bytes_per_s: float,
    batch: int = 1,
    group_size: int | None = None,
    efficiency: float = 1.0,
) -> Result:
    """Bandwidth-bound decode tokens/s: batch · bandwidth · efficiency / weight bytes."""
    w = quantized_weight_bytes(n_params, dtype, group_size)
    bw = _positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    b = _positive_int("batch", batch)
    efficiency = _fraction("efficiency", efficiency)
    t = derive(
        "time per step",
        w.value / (bw * efficiency),
        "s",
        "weight bytes / (bandwidth · efficiency)",
        f"{_fmt(w.value)} / ({_fmt(bw)} × {_fmt(efficiency)})",
        steps=[w],
    )
    return derive(
        "decode speed",
        b / t.value,
        "tok/s",
        "batch / time per step",
        f"{b} / {_fmt(t.value)}",
        {"n_params": n_params, "dtype": dtype, "batch": b, "ms_per_token": t.value * 1e3},
        [t],
        note="bandwidth-bound: holds below the compute crossover batch",
    )


def quantization_table(
    n_params: float,
    bandwidth_bytes_per_s: float,
    dtypes: tuple[str, ...] = ("bf16", "int8", "int4"),
    batch: int = 1,
) -> list[dict]:
    """One row per dtype: weight GB, ms per step, tok/s and speedup over the first dtype."""
    rows = []
    base = None
    for d in dtypes:
        s = quantized_decode_speed(n_params, d, bandwidth_bytes_per_s, batch)
        base = base or s.value
        rows.append(
            {
                "dtype": d,
                "weight_gb": s.steps[0].steps[0].value / 1e9,
                "ms_per_step": s.inputs["ms_per_token"],
                "tok_per_s": s.value,
                "speedup": s.value / base,
                "result": s,
            }
        )
    return rows


def gpus_for_weights(weight_bytes: float, gpu_memory_bytes: float, usable_fraction: float = 1.0) -> Result:
    """Fewest GPUs whose memory holds the weights alone: ceil(weights / (memory · usable))."""
    w = _positive("weight_bytes", weight_bytes)
    m = _positive("gpu_memory_bytes", gpu_memory_bytes)
    ratio = w / (m * usable_fraction)
    return derive(
        "GPUs for weights",
        math.ceil(ratio - 1e-12),
        "GPUs",
        "ceil(weights / (GPU memory · usable))",
        f"ceil({_fmt(w)} / ({_fmt(m)} × {_fmt(usable_fraction)}) = {_fmt(ratio)})",
        {"weight_bytes": w, "gpu_memory_bytes": m, "usable_fraction": usable_fraction},
        note="weights only: KV cache, activations and runtime overhead need more",
    )
