"""Serving bounds: prefill and decode throughput, TTFT, batching utilisation, Little's law.

Prefill pushes a whole prompt through the model at once: ~2N FLOPs per token, compute-bound, so its
throughput is peak / 2N. Decode makes one token per sequence per step and must stream every weight
(and each sequence's KV cache) from HBM per step, so a step costs max(bytes / bandwidth,
batch·2N / peak): memory-bound until batch ≈ ridge · bytes_per_param / 2 (`decode_crossover_batch`).
`efficiency` (0 < e ≤ 1) scales the ceilings, to report achievable beside peak.
"""

from __future__ import annotations

import math

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.checks import fraction as _fraction
from nanoserve.planner.checks import positive as _positive
from nanoserve.planner.checks import positive_int as _positive_int
from nanoserve.planner.derivation import Result, _fmt, derive
from nanoserve.planner.models import ModelSpec, get_model


def prefill_attention_flops_per_token(model: ModelSpec | str, prompt_tokens: int) -> Result:
    """Attention FLOPs per prompt token of a causal prefill: 4·layers·q_dim·(S+1)/2.

    Token i attends to i keys: Q·Kᵀ and P·V cost 2·q_dim·i FLOPs each per layer; the mean over a
    prompt of S tokens is (S+1)/2 keys. The 2N rule leaves this out; it grows with the prompt (70B at
    S = 4,096: 5.4 GFLOP per token beside 2N = 141 GFLOP, +4%; at 32k, 43 GFLOP, +30%). Pass the value as
    `attn_flops_per_token` to `prefill_time` / `prefill_throughput`.
    """
    m = get_model(model)
    s = _positive_int("prompt_tokens", prompt_tokens)
    value = 4 * m.layers * m.q_dim * (s + 1) / 2
    return derive(
        f"attention FLOPs per prompt token of {m.name}",
        value,
        "FLOP",
        "4 · layers · q_dim · (S + 1)/2",
        f"4 × {m.layers} × {m.q_dim} × ({s:,} + 1)/2",
        {"layers": m.layers, "q_dim": m.q_dim, "prompt_tokens": s},
        note="causal mask: the mean token attends to (S+1)/2 keys",
    )


def prefill_throughput(
    n_params: float, peak_flops_per_s: float, efficiency: float = 1.0, attn_flops_per_token: float = 0.0
) -> Result:
    """Tokens/s of compute-bound prefill: peak·efficiency / (2N + attention FLOPs per token)."""
    n = _positive("n_params", n_params)
    p = _positive("peak_flops_per_s", peak_flops_per_s)
    e = _fraction("efficiency", efficiency)
    per_tok = 2 * n + attn_flops_per_token
    formula = "peak · efficiency / (2N" + (" + attention FLOPs/token)" if attn_flops_per_token else ")")
    return derive(
        "prefill throughput",
        p * e / per_tok,
        "tok/s",
        formula,
        f"{_fmt(p)} × {_fmt(e)} / {_fmt(per_tok)}",
        {"n_params": n, "peak_flops_per_s": p, "efficiency": e, "attn_flops_per_token": attn_flops_per_token},
    )


def prefill_time(
    prompt_tokens: int,
    n_params: float,
    peak_flops_per_s: float,
    efficiency: float = 1.0,
    attn_flops_per_token: float = 0.0,
) -> Result:
    """Seconds to prefill a prompt alone on the GPU: 2N·tokens / (peak·efficiency)."""
    t = _positive("prompt_tokens", prompt_tokens)
    n = _positive("n_params", n_params)
    p = _positive("peak_flops_per_s", peak_flops_per_s)
    e = _fraction("efficiency", efficiency)
    flops = (2 * n + attn_flops_per_token) * t
    fl = derive(
        "prefill FLOPs",
        flops,
        "FLOP",
        "(2N + attention FLOPs/token) · tokens" if attn_flops_per_token else "2N · tokens",
        f"(2 × {_fmt(n)} + {_fmt(attn_flops_per_token)}) × {int(t):,}"
        if attn_flops_per_token
        else f"2 × {_fmt(n)} × {int(t):,}",
        {"n_params": n, "tokens": int(t)},
    )
    return derive(
        "prefill time",
        flops / (p * e),
        "s",
        "prefill FLOPs / (peak · efficiency)",
        f"{_fmt(flops)} / ({_fmt(p)} × {_fmt(e)})",
        {"prompt_tokens": int(t), "peak_flops_per_s": p, "efficiency": e},
        [fl],
    )


def ttft(prompt_tokens: int, prefill_tok_per_s: float, queue_s: float = 0.0) -> Result:
    """Time to first token: queueing plus prompt / prefill throughput."""
    t = _positive("prompt_tokens", prompt_tokens)
    r = _positive("prefill_tok_per_s", prefill_tok_per_s)
    if queue_s < 0:
        raise InvalidRequestError("queue_s must be >= 0", "queue_s")
    return derive(
        "TTFT",
        queue_s + t / r,
        "s",
        "queue + prompt_tokens / prefill_tok_per_s",
        f"{_fmt(queue_s)} + {int(t):,} / {_fmt(r)}",
        {"prompt_tokens": int(t), "prefill_tok_per_s": r, "queue_s": queue_s},
    )


def decode_step_time(
    weight_bytes: float,
    bandwidth_bytes_per_s: float,
    batch: int = 1,
    kv_bytes_per_seq: float = 0.0,
    flops_per_token: float = 0.0,
    peak_flops_per_s: float | None = None,
    efficiency: float = 1.0,
    comm_s: float = 0.0,
    comm: Result | None = None,
) -> Result:
    """One decode step for `batch` sequences: max(memory, compute) / efficiency + communication.

    memory = (weights + batch · KV bytes each sequence reads) / bandwidth; compute = batch · FLOPs per
    token / peak (left out when no peak is given). Under tensor parallelism pass the per-GPU bytes and
    FLOPs and the step's all-reduce time as `comm_s` (or a `comm` Result): decode's all-reduces sit
    between dependent matmuls, so they add to the step rather than hide behind it.
    """
    w = _positive("weight_bytes", weight_bytes)
    bw = _positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    b = _positive_int("batch", batch)
    e = _fraction("efficiency", efficiency)
    if kv_bytes_per_seq < 0:
        raise InvalidRequestError("kv_bytes_per_seq must be >= 0", "kv_bytes_per_seq")
    c = comm.value if comm is not None else comm_s
    if not c >= 0:
        raise InvalidRequestError(f"comm_s must be >= 0 (got {c!r})", "comm_s")
    moved = w + b * kv_bytes_per_seq
    t_mem = moved / bw
    t_cmp = b * flops_per_token / peak_flops_per_s if peak_flops_per_s and flops_per_token else 0.0
    bound = "compute" if t_cmp > t_mem else "memory"
    formula = "max((weights + batch·KV) / bandwidth, batch·FLOPs/token / peak) / efficiency"
    sub = (
        f"max(({_fmt(w)} + {b} × {_fmt(kv_bytes_per_seq)}) / {_fmt(bw)}, "
        f"{b} × {_fmt(flops_per_token)} / {_fmt(peak_flops_per_s or 0)}) / {_fmt(e)}"
    )
    if c:
        formula += " + all-reduce time"
        sub += f" + {_fmt(c)}"
    return derive(
        "decode step time",
        max(t_mem, t_cmp) / e + c,
        "s",
        formula,
        sub,
        {
            "weight_bytes": w,
            "batch": b,
            "kv_bytes_per_seq": kv_bytes_per_seq,
            "memory_s": t_mem,
            "compute_s": t_cmp,
            "comm_s": c,
            "bound": bound,
            "efficiency": e,
        },
        [comm] if comm is not None else [],
        note=f"{bound}-bound" + (f", all-reduces {_fmt(c * 1e3)} ms" if c else ""),
    )


def decode_throughput(
    weight_bytes: float,
    bandwidth_bytes_per_s: float,
    batch: int = 1,
    kv_bytes_per_seq: float = 0.0,
    flops_per_token: float = 0.0,
    peak_flops_per_s: float | None = None,
    efficiency: float = 1.0,
    comm_s: float = 0.0,
    comm: Result | None = None,
) -> Result:
    """Aggregate decode tokens/s: batch / step time. At batch 1 with no KV, bandwidth / weight bytes."""
    step = decode_step_time(
        weight_bytes,
        bandwidth_bytes_per_s,
        batch,
        kv_bytes_per_seq,
        flops_per_token,
        peak_flops_per_s,
        efficiency,
        comm_s,
        comm,
    )
    b = step.inputs["batch"]
    return derive(
        "decode throughput",
        b / step.value,
        "tok/s",
        "batch / step time",
        f"{b} / {_fmt(step.value)} s",
        {"batch": b, "bound": step.inputs["bound"]},
        [step],
        note=f"{_fmt(1 / step.value)} tok/s per sequence (TPOT {_fmt(step.value * 1e3)} ms)",
    )


def decode_crossover_batch(
    peak_flops_per_s: float,
    bandwidth_bytes_per_s: float,
    bytes_per_param: float = 2.0,
    flops_per_param: float = 2.0,
) -> Result:
    """Batch at which decode turns compute-bound: ridge · bytes_per_param / flops_per_param.

    Per token each weight costs 2 FLOPs and is read once per step for the whole batch, so the step's
    intensity is batch · 2 / bytes_per_param (bf16: ≈ batch; int8: 2·batch; int4: 4·batch).
    """
    p = _positive("peak_flops_per_s", peak_flops_per_s)
    bw = _positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    bpp = _positive("bytes_per_param", bytes_per_param)
    fpp = _positive("flops_per_param", flops_per_param)
    ridge = derive("ridge point", p / bw, "FLOP/B", "peak / bandwidth", f"{_fmt(p)} / {_fmt(bw)}")
    return derive(
        "crossover batch",
        ridge.value * bpp / fpp,
        "sequences",
        "ridge · bytes_per_param / flops_per_param",
        f"{_fmt(ridge.value)} × {_fmt(bpp)} / {_fmt(fpp)}",
        {"bytes_per_param": bpp, "flops_per_param": fpp},
        [ridge],
        note="KV-cache reads push the real crossover higher: they add bytes, not weight reuse",
    )


def static_batching_utilization(mean_output_tokens: float, max_output_tokens: float) -> Result:
    """Useful fraction of a static batch's slot-steps: every slot runs until the longest finishes."""
    m = _positive("mean_output_tokens", mean_output_tokens)
    x = _positive("max_output_tokens", max_output_tokens)
    if m > x:
        raise InvalidRequestError("mean_output_tokens cannot exceed max_output_tokens", "mean_output_tokens")
    return derive(
        "static batching utilisation",
        m / x,
        "fraction",
        "mean_len / max_len",
        f"{_fmt(m)} / {_fmt(x)}",
        {"mean_output_tokens": m, "max_output_tokens": x},
        note=f"{_fmt(100 * (1 - m / x))}% of slot-steps wasted; continuous batching ≈ "
        f"{_fmt(x / m)}× the throughput at full slots",
    )


def continuous_batching_gain(
    mean_output_tokens: float, max_output_tokens: float, continuous_utilization: float = 1.0
) -> Result:
    """Throughput ratio continuous / static batching = continuous utilisation / (mean / max)."""
    s = static_batching_utilization(mean_output_tokens, max_output_tokens)
    c = _fraction("continuous_utilization", continuous_utilization)
    return derive(
        "continuous batching gain",
        c / s.value,
        "×",
        "continuous utilisation / static utilisation",
        f"{_fmt(c)} / {_fmt(s.value)}",
        {"continuous_utilization": c},
        [s],
    )


def littles_law(
    arrival_rate_per_s: float | None = None, latency_s: float | None = None, concurrency: float | None = None
) -> Result:
    """L = λ·W: give any two of arrival rate λ (req/s), time in system W (s), concurrency L."""
    given = {
        k: v
        for k, v in (
            ("arrival_rate_per_s", arrival_rate_per_s),
            ("latency_s", latency_s),
            ("concurrency", concurrency),
        )
        if v is not None
    }
    if len(given) != 2:
        raise InvalidRequestError(
            "Little's law needs exactly two of arrival_rate_per_s, latency_s, concurrency", "littles_law"
        )
    for k, v in given.items():
        _positive(k, v)
    if concurrency is None:
        return derive(
            "concurrency",
            arrival_rate_per_s * latency_s,
            "requests",
            "L = λ · W",
            f"{_fmt(arrival_rate_per_s)} × {_fmt(latency_s)}",
            given,
        )
    if latency_s is None:
        return derive(
            "latency",
            concurrency / arrival_rate_per_s,
            "s",
            "W = L / λ",
            f"{_fmt(concurrency)} / {_fmt(arrival_rate_per_s)}",
            given,
        )
    return derive(
        "arrival rate",
        concurrency / latency_s,
        "req/s",
        "λ = L / W",
        f"{_fmt(concurrency)} / {_fmt(latency_s)}",
        given,
    )


def response_time(ttft_s: float, output_tokens: int, tpot_s: float) -> Result:
    """End-to-end latency of one streamed response: TTFT + (output tokens − 1) · TPOT."""
    n = _positive_int("output_tokens", output_tokens)
    if ttft_s < 0 or tpot_s < 0:
        raise InvalidRequestError("ttft_s and tpot_s must be >= 0", "tpot_s")
    return derive(
        "response time",
        ttft_s + (n - 1) * tpot_s,
        "s",
        "TTFT + (N_out − 1) · TPOT",
        f"{_fmt(ttft_s)} + ({n} − 1) × {_fmt(tpot_s)}",
        {"ttft_s": ttft_s, "output_tokens": n, "tpot_s": tpot_s},
        note=f"streams at {_fmt(1 / tpot_s)} tok/s" if tpot_s else "",
    )


def aggregate_throughput(users: float, active_fraction: float, tok_per_s_per_user: float) -> Result:
    """Output tokens/s the fleet must sustain: users · active fraction · tokens/s each."""
    u = _positive("users", users)
    a = _fraction("active_fraction", active_fraction)
    r = _positive("tok_per_s_per_user", tok_per_s_per_user)
    active = derive("active users", u * a, "users", "users · active_fraction", f"{_fmt(u)} × {_fmt(a)}")
    return derive(
        "required throughput",
        u * a * r,
        "tok/s",
        "active users · tok/s per user",
        f"{_fmt(u * a)} × {_fmt(r)}",
        {"users": u, "active_fraction": a, "tok_per_s_per_user": r},
        [active],
    )


def replicas_needed(demand_tok_per_s: float, tok_per_s_per_replica: float, headroom: float = 0.0) -> Result:
    """ceil(ceil(demand / per-replica) · (1 + headroom)): round to whole replicas, then add spare."""
    d = _positive("demand_tok_per_s", demand_tok_per_s)
    r = _positive("tok_per_s_per_replica", tok_per_s_per_replica)
    if headroom < 0:
        raise InvalidRequestError("headroom must be >= 0", "headroom")
    base = math.ceil(d / r - 1e-9)
    total = math.ceil(base * (1 + headroom) - 1e-9)
    return derive(
        "replicas",
        total,
        "replicas",
        "ceil(ceil(demand / per_replica) · (1 + headroom))",
        f"ceil(ceil({_fmt(d)} / {_fmt(r)} = {_fmt(d / r)}) × {_fmt(1 + headroom)})",
        {"demand_tok_per_s": d, "tok_per_s_per_replica": r, "headroom": headroom, "base": base},
    )
