"""Training compute, time and cost (6·N·D at an MFU), Chinchilla-optimal sizing, MFU from throughput.

6·N·D: forward 2N plus backward 4N FLOPs per token for N (active) parameters over D tokens.
MFU (PaLM's definition) = achieved model FLOP/s / peak, with model FLOPs = 6N per trained token;
recomputation is not credited. Chinchilla: D ≈ 20·N, so for compute C, N = √(C / 120), D = 20·N.
"""

from __future__ import annotations

import math

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.checks import fraction as _fraction
from nanoserve.planner.checks import positive as _positive
from nanoserve.planner.checks import positive_int as _positive_int
from nanoserve.planner.derivation import Result, _fmt, derive

SECONDS_PER_DAY = 86400.0


def training_flops(n_params: float, n_tokens: float, flops_per_param_token: float = 6.0) -> Result:
    """Total training FLOPs ≈ 6·N·D (N: active parameters for MoE)."""
    n = _positive("n_params", n_params)
    d = _positive("n_tokens", n_tokens)
    return derive(
        "training FLOPs",
        flops_per_param_token * n * d,
        "FLOP",
        f"{_fmt(flops_per_param_token)}·N·D",
        f"{_fmt(flops_per_param_token)} × {_fmt(n)} × {_fmt(d)}",
        {"n_params": n, "n_tokens": d},
    )


def training_time(
    n_params: float, n_tokens: float, n_gpus: int, peak_flops_per_s: float, mfu: float = 0.4
) -> Result:
    """Wall-clock seconds: 6ND / (GPUs · peak · MFU). The note gives days."""
    c = training_flops(n_params, n_tokens)
    g = _positive_int("n_gpus", n_gpus)
    p = _positive("peak_flops_per_s", peak_flops_per_s)
    u = _fraction("mfu", mfu)
    rate = derive("cluster FLOP/s", g * p * u, "FLOP/s", "GPUs · peak · MFU", f"{g} × {_fmt(p)} × {_fmt(u)}")
    s = c.value / rate.value
    return derive(
        "training time",
        s,
        "s",
        "6ND / cluster FLOP/s",
        f"{_fmt(c.value)} / {_fmt(rate.value)}",
        {"n_gpus": g, "mfu": u, "days": s / SECONDS_PER_DAY},
        [c, rate],
        note=f"{_fmt(s / SECONDS_PER_DAY)} days",
    )


def training_cost(time_s: float, n_gpus: int, usd_per_gpu_hour: float) -> Result:
    """$ = GPU-hours · $/GPU-hour."""
    t = _positive("time_s", time_s)
    g = _positive_int("n_gpus", n_gpus)
    p = _positive("usd_per_gpu_hour", usd_per_gpu_hour)
    hours = derive("GPU-hours", g * t / 3600, "GPU·h", "GPUs · seconds / 3600", f"{g} × {_fmt(t)} / 3600")
    return derive(
        "training cost",
        hours.value * p,
        "$",
        "GPU-hours · $/GPU-hour",
        f"{_fmt(hours.value)} × {_fmt(p)}",
        {"n_gpus": g, "usd_per_gpu_hour": p},
        [hours],
    )


def chinchilla_tokens(n_params: float, tokens_per_param: float = 20.0) -> Result:
    """Compute-optimal tokens for a model of N parameters: ≈ 20·N (Hoffmann et al. 2022)."""
    n = _positive("n_params", n_params)
    return derive(
        "Chinchilla tokens",
        tokens_per_param * n,
        "tok",
        f"{_fmt(tokens_per_param)}·N",
        f"{_fmt(tokens_per_param)} × {_fmt(n)}",
        {"n_params": n, "tokens_per_param": tokens_per_param},
    )


def chinchilla_optimal(compute_flops: float, tokens_per_param: float = 20.0) -> tuple[Result, Result]:
    """(N, D) for a compute budget: C = 6·N·D with D = r·N → N = √(C / 6r), D = r·N."""
    c = _positive("compute_flops", compute_flops)
    r = _positive("tokens_per_param", tokens_per_param)
    n = math.sqrt(c / (6 * r))
    nr = derive(
        "compute-optimal params",
        n,
        "params",
        f"√(C / (6 × {_fmt(r)}))",
        f"√({_fmt(c)} / {_fmt(6 * r)})",
        {"compute_flops": c, "tokens_per_param": r},
    )
    dr = derive("compute-optimal tokens", r * n, "tok", f"{_fmt(r)}·N", f"{_fmt(r)} × {_fmt(n)}", steps=[nr])
    return nr, dr


def tokens_for_compute(compute_flops: float, n_params: float) -> Result:
    """Tokens a budget buys a model of N (active) parameters: D = C / 6N."""
    c = _positive("compute_flops", compute_flops)
    n = _positive("n_params", n_params)
    return derive(
        "tokens",
        c / (6 * n),
        "tok",
        "C / (6·N)",
        f"{_fmt(c)} / (6 × {_fmt(n)})",
        {"compute_flops": c, "n_params": n},
    )


def mfu_from_throughput(
    tok_per_s_per_gpu: float, n_params: float, peak_flops_per_s: float, flops_per_param_token: float = 6.0
) -> Result:
    """MFU = tokens/s per GPU · 6N / peak. A value above 1 means the measurement cannot be right."""
    r = _positive("tok_per_s_per_gpu", tok_per_s_per_gpu)
    n = _positive("n_params", n_params)
    p = _positive("peak_flops_per_s", peak_flops_per_s)
    value = r * flops_per_param_token * n / p
    note = ""
    if value > 1:
        note = (
            f"impossible: above peak; at 40% MFU this model trains at "
            f"{_fmt(0.4 * p / (flops_per_param_token * n))} tok/s per GPU"
        )
    return derive(
        "MFU",
        value,
        "fraction",
        f"tok/s · {_fmt(flops_per_param_token)}N / peak",
        f"{_fmt(r)} × {_fmt(flops_per_param_token)} × {_fmt(n)} / {_fmt(p)}",
        {"tok_per_s_per_gpu": r, "n_params": n, "peak_flops_per_s": p},
        note=note,
    )


def sqrt_lr_scaling(base_lr: float, base_batch: float, new_batch: float) -> Result:
    """Square-root learning-rate scaling with batch size: lr · √(new / base)."""
    lr = _positive("base_lr", base_lr)
    b0 = _positive("base_batch", base_batch)
    b1 = _positive("new_batch", new_batch)
    return derive(
        "learning rate",
        lr * math.sqrt(b1 / b0),
        "",
        "lr · √(batch_new / batch_base)",
        f"{_fmt(lr)} × √({_fmt(b1)} / {_fmt(b0)})",
        {"base_lr": lr, "base_batch": b0, "new_batch": b1},
    )


def width_for_params(target_params: float, n_layers: int, multiple: int = 64) -> Result:
    """Model width d with L·12·d² ≈ target (rounded to a `multiple` of heads' size): the 12d² rule."""
    t = _positive("target_params", target_params)
    L = _positive_int("n_layers", n_layers)
    if L != n_layers:
        raise InvalidRequestError("n_layers must be an integer", "n_layers")
    exact = math.sqrt(t / (12 * L))
    d = max(multiple, round(exact / multiple) * multiple)
    return derive(
        "width",
        d,
        "d_model",
        f"round(√(N / (12·L)) to a multiple of {multiple})",
        f"√({_fmt(t)} / (12 × {L})) = {_fmt(exact)} → {d}",
        {"target_params": t, "n_layers": L, "exact": exact, "params_at_width": 12 * L * d * d},
        note=f"12·L·d² = {12 * L * d * d:,} parameters at d = {d}",
    )
