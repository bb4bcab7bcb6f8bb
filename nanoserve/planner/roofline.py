"""Rooflines: is an op waiting on memory or on math, and how long must it take?

An op that does F FLOPs while moving Q bytes has arithmetic intensity I = F / Q (FLOP/byte). A chip
with peak P FLOP/s and bandwidth B byte/s sustains min(P, I·B): below the ridge point P / B the op is
memory-bound, above it compute-bound. Its time is the larger of F / P and Q / B.

Peaks are never reached: every function takes an `efficiency` (0 < e ≤ 1) that scales both ceilings,
so a result can report achievable beside peak (LLM-Viewer's pure roofline overestimates decode
throughput 1.4–1.9×). Also here: the other kernel-level sums the workbooks ask for (systolic-array
throughput, SM occupancy, Amdahl speedup of a fusion, overlap of communication with compute).
"""

from __future__ import annotations

from dataclasses import dataclass

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.checks import fraction as _fraction
from nanoserve.planner.checks import positive as _positive
from nanoserve.planner.checks import positive_int as _positive_int
from nanoserve.planner.derivation import Result, _fmt, derive


def matmul_flops(m: int, k: int, n: int) -> Result:
    """FLOPs of [m, k] × [k, n]: one multiply and one add per inner-product term."""
    for name, v in (("m", m), ("k", k), ("n", n)):
        _positive(name, v)
    return derive(
        "matmul FLOPs",
        2 * m * k * n,
        "FLOP",
        "2·m·k·n",
        f"2 × {m:,} × {k:,} × {n:,}",
        {"m": m, "k": k, "n": n},
    )


def matmul_bytes(
    m: int, k: int, n: int, bytes_per_element: float = 2.0, weight_bytes_per_element: float | None = None
) -> Result:
    """HBM bytes of a matmul that reads A [m, k] and B [k, n] once and writes C [m, n] once.

    `weight_bytes_per_element` lets B (the weight) have another dtype than the activations (int8/int4).
    """
    b = _positive("bytes_per_element", bytes_per_element)
    w = (
        b
        if weight_bytes_per_element is None
        else _positive("weight_bytes_per_element", weight_bytes_per_element)
    )
    total = m * k * b + k * n * w + m * n * b
    return derive(
        "matmul bytes",
        total,
        "bytes",
        "(m·k + m·n)·bytes_act + k·n·bytes_weight",
        f"({m:,}×{k:,} + {m:,}×{n:,}) × {_fmt(b)} + {k:,}×{n:,} × {_fmt(w)}",
        {"m": m, "k": k, "n": n, "bytes_act": b, "bytes_weight": w},
    )


def matmul_intensity(
    m: int, k: int, n: int, bytes_per_element: float = 2.0, weight_bytes_per_element: float | None = None
) -> Result:
    """Arithmetic intensity of [m, k] × [k, n] (FLOP per HBM byte). Square N×N in bf16 → N / 3."""
    f = matmul_flops(m, k, n)
    q = matmul_bytes(m, k, n, bytes_per_element, weight_bytes_per_element)
    return derive(
        "arithmetic intensity",
        f.value / q.value,
        "FLOP/B",
        "FLOPs / bytes",
        f"{_fmt(f.value)} / {_fmt(q.value)}",
        {"m": m, "k": k, "n": n},
        [f, q],
    )


def elementwise_intensity(
    flops_per_element: float, bytes_per_element: float, reads: int = 1, writes: int = 1
) -> Result:
    """Intensity of an elementwise op (ReLU: 1 FLOP per element, reads x once and writes y once)."""
    f = _positive("flops_per_element", flops_per_element)
    b = _positive("bytes_per_element", bytes_per_element)
    moved = (reads + writes) * b
    return derive(
        "arithmetic intensity",
        f / moved,
        "FLOP/B",
        "flops_per_element / ((reads + writes)·bytes)",
        f"{_fmt(f)} / (({reads} + {writes}) × {_fmt(b)})",
        {"flops_per_element": f, "bytes_per_element": b, "reads": reads, "writes": writes},
        note="the write of the output counts: an op that only reads has twice this intensity",
    )


def attention_intensity(
    seq_len: int, head_dim: int, bytes_per_element: float = 2.0, materialize_scores: bool = True
) -> Result:
    """Intensity of one head's attention, softmax(Q·Kᵀ)·V over `seq_len` tokens.

    FLOPs = 4·s²·d (Q·Kᵀ and P·V). Unfused, the s×s scores go to HBM and back: S written, read by the
    softmax, P written, read by P·V → 4·s² elements besides Q, K, V, O (4·s·d). FlashAttention keeps S
    and P on chip, so only the 4·s·d remain.
    """
    s, d = _positive_int("seq_len", seq_len), _positive_int("head_dim", head_dim)
    b = _positive("bytes_per_element", bytes_per_element)
    flops = 4 * s * s * d
    elems = 4 * s * d + (4 * s * s if materialize_scores else 0)
    formula = "4·s²·d / ((4·s·d + 4·s²)·bytes)" if materialize_scores else "4·s²·d / (4·s·d·bytes)"
    sub = (
        f"4 × {s:,}² × {d} / ((4 × {s:,} × {d} + 4 × {s:,}²) × {_fmt(b)})"
        if materialize_scores
        else f"4 × {s:,}² × {d} / (4 × {s:,} × {d} × {_fmt(b)})"
    )
    return derive(
        "attention intensity",
        flops / (elems * b),
        "FLOP/B",
        formula,
        sub,
        {"seq_len": s, "head_dim": d, "bytes_per_element": b, "materialize_scores": materialize_scores},
    )


def ridge_point(peak_flops_per_s: float, bandwidth_bytes_per_s: float) -> Result:
    """Intensity at which the compute roof meets the memory wall: P / B (FLOP/byte)."""
    p = _positive("peak_flops_per_s", peak_flops_per_s)
    bw = _positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    return derive(
        "ridge point",
        p / bw,
        "FLOP/B",
        "peak FLOP/s / bandwidth",
        f"{_fmt(p)} / {_fmt(bw)}",
        {"peak_flops_per_s": p, "bandwidth_bytes_per_s": bw},
    )


def achievable_flops(
    intensity: float, peak_flops_per_s: float, bandwidth_bytes_per_s: float, efficiency: float = 1.0
) -> Result:
    """min(P, I·B), both ceilings scaled by `efficiency`; the note says which one binds."""
    i = _positive("intensity", intensity)
    p = _positive("peak_flops_per_s", peak_flops_per_s)
    bw = _positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    e = _fraction("efficiency", efficiency)
    bound = "memory" if i * bw < p else "compute"
    value = e * min(p, i * bw)
    return derive(
        "achievable FLOP/s",
        value,
        "FLOP/s",
        "efficiency · min(peak, intensity · bandwidth)",
        f"{_fmt(e)} × min({_fmt(p)}, {_fmt(i)} × {_fmt(bw)})",
        {"intensity": i, "peak_flops_per_s": p, "bandwidth_bytes_per_s": bw, "efficiency": e, "bound": bound},
        note=f"{bound}-bound (ridge {_fmt(p / bw)} FLOP/B)",
    )


@dataclass(frozen=True)
class RooflinePoint:
    """One op placed on a chip's roofline; every field carries its derivation."""

    name: str
    flops: float
    bytes_moved: float
    intensity: Result
    ridge: Result
    achievable: Result
    time: Result
    bound: str  # "memory" or "compute"

    def results(self) -> list[Result]:
        return [self.intensity, self.ridge, self.achievable, self.time]


def op_time(
    flops: float,
    bytes_moved: float,
    peak_flops_per_s: float,
    bandwidth_bytes_per_s: float,
    efficiency: float = 1.0,
) -> Result:
    """Lower bound on an op's time: max(F / P, Q / B) / efficiency (compute and memory overlap)."""
    f = _positive("flops", flops) if flops else 0.0
    q = _positive("bytes_moved", bytes_moved) if bytes_moved else 0.0
    p = _positive("peak_flops_per_s", peak_flops_per_s)
    bw = _positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    e = _fraction("efficiency", efficiency)
    t_compute, t_memory = f / p, q / bw
    bound = "compute" if t_compute >= t_memory else "memory"
    return derive(
        "op time",
        max(t_compute, t_memory) / e,
        "s",
        "max(FLOPs / peak, bytes / bandwidth) / efficiency",
        f"max({_fmt(f)} / {_fmt(p)}, {_fmt(q)} / {_fmt(bw)}) / {_fmt(e)}",
        {
            "flops": f,
            "bytes_moved": q,
            "compute_s": t_compute,
            "memory_s": t_memory,
            "efficiency": e,
            "bound": bound,
        },
        note=f"{bound}-bound",
    )


def analyze(
    flops: float,
    bytes_moved: float,
    peak_flops_per_s: float,
    bandwidth_bytes_per_s: float,
    efficiency: float = 1.0,
    name: str = "op",
) -> RooflinePoint:
    """Place an op (F FLOPs, Q bytes) on the roofline: intensity, ridge, achievable FLOP/s, time, bound."""
    f = _positive("flops", flops)
    q = _positive("bytes_moved", bytes_moved)
    intensity = derive(
        "arithmetic intensity",
        f / q,
        "FLOP/B",
        "FLOPs / bytes",
        f"{_fmt(f)} / {_fmt(q)}",
        {"flops": f, "bytes_moved": q},
    )
    ridge = ridge_point(peak_flops_per_s, bandwidth_bytes_per_s)
    ach = achievable_flops(intensity.value, peak_flops_per_s, bandwidth_bytes_per_s, efficiency)
    t = op_time(f, q, peak_flops_per_s, bandwidth_bytes_per_s, efficiency)
    return RooflinePoint(name, f, q, intensity, ridge, ach, t, t.inputs["bound"])


def analyze_matmul(
    m: int,
    k: int,
    n: int,
    peak_flops_per_s: float,
    bandwidth_bytes_per_s: float,
    bytes_per_element: float = 2.0,
    weight_bytes_per_element: float | None = None,
    efficiency: float = 1.0,
) -> RooflinePoint:
    """`analyze` for [m, k] × [k, n]."""
    f = matmul_flops(m, k, n).value
    q = matmul_bytes(m, k, n, bytes_per_element, weight_bytes_per_element).value
    return analyze(f, q, peak_flops_per_s, bandwidth_bytes_per_s, efficiency, f"[{m}×{k}]·[{k}×{n}]")


def memory_time(bytes_moved: float, bandwidth_bytes_per_s: float, efficiency: float = 1.0) -> Result:
    """Time to stream `bytes_moved` through HBM (a memory-bound op such as LayerNorm)."""
    q = _positive("bytes_moved", bytes_moved)
    bw = _positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    e = _fraction("efficiency", efficiency)
    return derive(
        "memory time",
        q / (bw * e),
        "s",
        "bytes / (bandwidth · efficiency)",
        f"{_fmt(q)} / ({_fmt(bw)} × {_fmt(e)})",
        {"bytes_moved": q, "bandwidth_bytes_per_s": bw},
    )


def compute_time(flops: float, peak_flops_per_s: float, efficiency: float = 1.0) -> Result:
    """Time of a compute-bound op: FLOPs / (peak · efficiency)."""
    f = _positive("flops", flops)
    p = _positive("peak_flops_per_s", peak_flops_per_s)
    e = _fraction("efficiency", efficiency)
    return derive(
        "compute time",
        f / (p * e),
        "s",
        "FLOPs / (peak · efficiency)",
        f"{_fmt(f)} / ({_fmt(p)} × {_fmt(e)})",
        {"flops": f, "peak_flops_per_s": p, "efficiency": e},
    )


def systolic_array_flops(rows: int, cols: int, clock_hz: float, units: int = 1) -> Result:
    """Peak of `units` rows×cols MAC arrays (a TPU MXU): rows·cols MACs per cycle, 2 FLOPs per MAC."""
    r, c = _positive("rows", rows), _positive("cols", cols)
    hz = _positive("clock_hz", clock_hz)
    return derive(
        "systolic array FLOP/s",
        2 * r * c * hz * units,
        "FLOP/s",
        "2 · rows · cols · clock · units",
        f"2 × {int(r)} × {int(c)} × {_fmt(hz)} × {units}",
        {"rows": int(r), "cols": int(c), "clock_hz": hz, "units": units},
    )


def sm_occupancy(
    threads_per_block: int,
    smem_per_block_bytes: float,
    max_threads_per_sm: int = 2048,
    smem_per_sm_bytes: float = 228 * 1024,
    max_blocks_per_sm: int = 32,
    regs_per_thread: int = 0,
    regs_per_sm: int = 65536,
) -> Result:
    """Fraction of an SM's thread slots a kernel fills, from the tightest per-SM limit.

    Defaults are H100's: 2048 threads, 228 KB shared memory, 32 blocks, 64 K registers per SM.
    """
    tpb = _positive_int("threads_per_block", threads_per_block)
    limits = {"threads": max_threads_per_sm // tpb, "blocks": max_blocks_per_sm}
    if smem_per_block_bytes:
        limits["shared memory"] = int(
            smem_per_sm_bytes // _positive("smem_per_block_bytes", smem_per_block_bytes)
        )
    if regs_per_thread:
        limits["registers"] = regs_per_sm // (regs_per_thread * tpb)
    binding = min(limits, key=lambda k: limits[k])
    blocks = limits[binding]
    occ = blocks * tpb / max_threads_per_sm
    lim = ", ".join(f"{k} {v}" for k, v in limits.items())
    return derive(
        "occupancy",
        occ,
        "fraction",
        "blocks_per_SM · threads_per_block / max_threads_per_SM",
        f"{blocks} × {tpb} / {max_threads_per_sm}",
        {
            "threads_per_block": tpb,
            "smem_per_block_bytes": smem_per_block_bytes,
            "blocks_per_sm": blocks,
            "limits": limits,
            "binding": binding,
        },
        note=f"blocks per SM by limit: {lim}; {binding} binds",
    )


def amdahl_speedup(total_time: float, removed_time: float) -> Result:
    """Speedup when `removed_time` of `total_time` disappears (fusing memory-bound ops away)."""
    t = _positive("total_time", total_time)
    if not 0 <= removed_time < t:
        raise InvalidRequestError("removed_time must be in [0, total_time)", "removed_time")
    return derive(
        "speedup",
        t / (t - removed_time),
        "×",
        "total / (total − removed)",
        f"{_fmt(t)} / ({_fmt(t)} − {_fmt(removed_time)})",
        {"total_time": t, "removed_time": removed_time, "removed_fraction": removed_time / t},
    )


def overlap_hidden_fraction(comm_time: float, compute_time_: float) -> Result:
    """Fraction of a communication hidden behind concurrent compute: min(1, compute / comm)."""
    c = _positive("comm_time", comm_time)
    k = _positive("compute_time", compute_time_)
    return derive(
        "hidden fraction",
        min(1.0, k / c),
        "fraction",
        "min(1, compute / comm)",
        f"min(1, {_fmt(k)} / {_fmt(c)})",
        {"comm_time": c, "compute_time": k},
        note="fully hidden" if k >= c else f"{_fmt(c - k)} left exposed",
    )
