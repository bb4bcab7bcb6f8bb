"""`nanoserve plan <topic> [options]`: every planner calculator from the command line.

Each topic gathers Results (value, unit, derivation) and prints them as a rich table followed by
the derivations; `--json` prints them for machines, `--plot FILE.png` draws the roofline with the
workload's points and/or the per-GPU memory bar. Models are presets or a config.json path; GPUs are
presets or a JSON/YAML hardware file. Bad input exits with code 2 and a one-line error.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.derivation import Result

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}
_SIZES = {
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def number(text: str) -> float:
    """ "70e9", "70B", "1.5k", "3.35T" → float (K, M, B/G, T, P suffixes)."""
    s = str(text).strip().replace(",", "").replace("_", "")
    m = re.fullmatch(r"([-+]?[0-9.]+(?:e[-+]?\d+)?)\s*([kmbgtp]?)", s, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    try:
        v = float(m.group(1)) * _SUFFIX.get(m.group(2).lower(), 1.0)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from e
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return v


def size_bytes(text: str) -> float:
    """ "80GB" (1e9), "80GiB" (2^30), "5e9" (bytes) → bytes."""
    s = str(text).strip().replace(",", "")
    m = re.fullmatch(r"([0-9.]+(?:e[-+]?\d+)?)\s*([kmgt]i?b|b)?", s, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 80GB, 80GiB, 5e9)")
    return float(m.group(1)) * _SIZES[(m.group(2) or "b").lower()]


def positive_int(text: str) -> int:
    v = number(text)
    if v != int(v) or v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(v)


# ---------------------------------------------------------------- output


@dataclass
class Output:
    """What a topic produced: results, optional extra rows, and what to plot."""

    title: str
    results: list[Result]
    notes: list[str] = field(default_factory=list)
    roofline: Any = None  # plots.RooflineSpec
    memory: Any = None  # plots.MemorySpec
    extra: dict[str, Any] = field(default_factory=dict)


def human(value: float, unit: str) -> str:
    """A value in a readable unit: bytes → GB, s → ms, FLOP → TFLOP, fraction → %."""
    v = float(value)
    if unit in ("B", "bytes"):
        return f"{v / 2**30:,.3f} GiB ({v / 1e9:,.3f} GB)" if v >= 1e6 else f"{v:,.0f} B"
    if unit == "s":
        return f"{v * 1e3:,.3f} ms" if v < 1 else (f"{v:,.3f} s" if v < 86400 else f"{v / 86400:,.2f} days")
    if unit in ("FLOP", "FLOP/s"):
        if abs(v) >= 1e21:
            return f"{v:.4g} {unit}"
        for name, f in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9)):
            if abs(v) >= f:
                return f"{v / f:,.4g} {name}{unit}"
        return f"{v:,.4g} {unit}"
    if unit == "fraction":
        return f"{v:.4g} ({100 * v:.2f}%)"
    if unit in ("$/month", "$"):
        return f"${v:,.2f}" + ("/month" if unit == "$/month" else "")
    if unit.startswith("$"):
        return f"${v:,.4g}{unit[1:]}"
    if v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,} {unit}".strip()
    if v != 0 and (abs(v) >= 1e7 or abs(v) < 1e-3):
        return f"{v:.4g} {unit}".strip()
    return f"{v:,.4f}".rstrip("0").rstrip(".") + f" {unit}".rstrip()


def _print_rich(out: Output, explain: bool) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    console = Console(width=max(110, Console().width))
    table = Table(title=out.title, show_lines=False, title_justify="left")
    table.add_column("quantity", style="bold")
    table.add_column("value", justify="right", style="cyan")
    table.add_column("formula", style="dim")
    for r in out.results:
        table.add_row(r.name, human(r.value, r.unit), r.formula)
    console.print(table)
    for note in out.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if explain:
        for r in out.results:
            console.print(Panel(r.explain(), title=r.name, title_align="left", expand=False), highlight=False)


# ---------------------------------------------------------------- inputs


def _model(args: argparse.Namespace) -> Any:
    from nanoserve.planner.models import get_model

    return get_model(args.model)


def _hardware(args: argparse.Namespace) -> Any:
    from nanoserve.planner.hardware import get_hardware, hardware_from_file

    g = args.gpu
    hw = hardware_from_file(g) if Path(g).suffix.lower() in (".json", ".yaml", ".yml") else get_hardware(g)
    if args.price is not None:
        hw = hw.with_price(args.price)
    return hw


def _n_params(args: argparse.Namespace, active: bool = True) -> float:
    if args.params:
        return args.params
    from nanoserve.planner.params import param_breakdown

    b = param_breakdown(_model(args))
    return float(b.active if active else b.total)


def _peak(hw: Any, dtype: str) -> float:
    return hw.flops_per_s(dtype if dtype in ("fp8", "int8") else "bf16")


def _label(r: Result, label: str) -> Result:
    return replace(r, name=f"{r.name} ({label})")


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [n for n in names if getattr(args, n.replace("-", "_")) is None]
    if missing:
        raise InvalidRequestError(f"topic {args.topic!r} needs --{', --'.join(missing)}", missing[0])


# ---------------------------------------------------------------- topics (planner-1's calculators)


def t_params(args: argparse.Namespace) -> Output:
    from nanoserve.planner.params import flops_per_token, param_count

    m = _model(args)
    res = [param_count(m)]
    if m.is_moe:
        res.append(param_count(m, active=True))
    res.append(flops_per_token(m, args.context or 0))
    res.append(flops_per_token(m, args.context or 0, training=True, causal_average=bool(args.context)))
    return Output(f"parameters and FLOPs of {m.name}", res)


def t_memory(args: argparse.Namespace) -> Output:
    from nanoserve.planner.memory import memory_estimate, weight_memory
    from nanoserve.planner.plots import MemorySpec

    m, hw = _model(args), _hardware(args)
    src: Any = args.params or m
    res = [weight_memory(src, d, args.group_size) for d in ("fp32", "bf16", "fp8", "int8", "int4")]
    est = memory_estimate(
        m,
        hw,
        weight_dtype=args.dtype,
        group_size=args.group_size,
        kv_dtype=args.kv_dtype,
        seq_len=args.context or 0,
        batch=args.batch or 1,
        n_gpu=args.tp or 1,
        overhead_bytes=args.overhead if args.overhead is not None else 4e9,
    )
    res.append(est.per_gpu)
    mem = MemorySpec(
        f"{m.name} on {hw.name} ({args.dtype}, TP={args.tp or 1})",
        dict(est.breakdown),
        args.gpu_mem or est.capacity_bytes,
    )
    return Output(f"memory of {m.name}", res, [est.per_gpu.note], memory=mem)


def t_kv(args: argparse.Namespace) -> Output:
    from nanoserve.planner.memory import (
        internal_fragmentation,
        kv_cache_bytes,
        kv_cache_per_token,
        kv_pages,
        paged_savings,
    )

    m = _model(args)
    ctx, batch = args.context or 4096, args.batch or 1
    per = kv_cache_per_token(m, kv_dtype=args.kv_dtype)
    res = [
        per,
        kv_cache_bytes(m, seq_len=ctx, batch=batch, kv_dtype=args.kv_dtype),
        kv_pages([ctx] * batch, args.block_size),
        internal_fragmentation(ctx, args.block_size, per.value),
    ]
    if args.mean_len:
        res.append(paged_savings(ctx, int(args.mean_len), args.block_size))
    return Output(f"KV cache of {m.name}", res)


def t_tp(args: argparse.Namespace) -> Output:
    from nanoserve.planner.memory import dtype_bytes
    from nanoserve.planner.parallel import (
        tp_allreduce_bytes_per_layer,
        tp_comm_time,
        tp_weight_memory_per_gpu,
    )

    m, hw = _model(args), _hardware(args)
    tp = args.tp or 8
    w = tp_weight_memory_per_gpu(args.params or m, tp, dtype_bytes(args.dtype))
    per_layer = tp_allreduce_bytes_per_layer(args.batch or 1, args.context or 4096, m.hidden, tp)
    t = tp_comm_time(per_layer, m.layers, hw.intra_node_unidir_bytes_per_s)
    return Output(f"tensor parallelism TP={tp} of {m.name} on {hw.name}", [w, per_layer, t])


def t_pp(args: argparse.Namespace) -> Output:
    from nanoserve.planner.parallel import layers_per_stage, microbatches_for_bubble, pipeline_bubble_fraction

    pp = args.pp or 4
    res = [pipeline_bubble_fraction(pp, args.microbatches or 8), microbatches_for_bubble(pp, args.bubble)]
    if args.model:
        res.append(layers_per_stage(_model(args).layers, pp))
    return Output(f"pipeline parallelism PP={pp}", res)


def t_zero(args: argparse.Namespace) -> Output:
    from nanoserve.planner.parallel import dp_comm_per_step, zero_memory_per_gpu

    src: Any = args.params or _model(args)
    dp = args.dp or 8
    res = [zero_memory_per_gpu(src, dp, s) for s in (0, 1, 2, 3)]
    res += [dp_comm_per_step(src, dp, "ddp"), dp_comm_per_step(src, dp, "fsdp")]
    return Output(f"data parallelism / ZeRO over DP={dp}", res)


def t_3d(args: argparse.Namespace) -> Output:
    from nanoserve.planner.parallel import (
        dp_degree,
        memory_per_gpu_3d,
        pipeline_bubble_fraction,
        weight_memory_3d,
    )

    _need(args, "gpus")
    src: Any = args.params or _model(args)
    tp, pp = args.tp or 8, args.pp or 1
    dp = dp_degree(int(args.gpus), tp, pp)
    res = [dp, weight_memory_3d(src, tp, pp), memory_per_gpu_3d(src, tp, pp, int(dp.value), args.zero_stage)]
    if pp > 1:
        res.append(pipeline_bubble_fraction(pp, args.microbatches or 8))
    return Output(f"3D parallelism on {int(args.gpus)} GPUs (TP={tp}, PP={pp})", res)


def t_activations(args: argparse.Namespace) -> Output:
    from nanoserve.planner.memory import activation_memory

    m = _model(args)
    seq, mb = args.context or 4096, args.batch or 1
    res = [
        _label(activation_memory(m, seq, mb, recompute=r, flash_attention=fa, tp=args.tp or 1), label)
        for r, fa, label in (
            ("none", False, "no recomputation"),
            ("none", True, "FlashAttention"),
            ("selective", False, "selective recomputation"),
            ("full", False, "full recomputation"),
        )
    ]
    return Output(f"activation memory of {m.name} (seq {seq}, micro-batch {mb})", res)


# ---------------------------------------------------------------- topics (this module's calculators)


def _model_points(args: argparse.Namespace, hw: Any) -> tuple[list[Result], list[tuple[str, float]]]:
    """Decode (at --batch) and prefill (at --prompt) of the whole model as two roofline points."""
    from nanoserve.planner.memory import dtype_bytes, kv_cache_per_token
    from nanoserve.planner.roofline import analyze

    m = _model(args)
    n = _n_params(args)
    w_bytes = n * dtype_bytes(args.dtype)
    kv_tok = kv_cache_per_token(m, kv_dtype=args.kv_dtype).value
    ctx, batch, prompt = args.context or 4096, args.batch or 1, args.prompt or args.context or 4096
    peak = _peak(hw, args.dtype)
    dec = analyze(
        2 * n * batch,
        w_bytes + batch * ctx * kv_tok,
        peak,
        hw.hbm_bytes_per_s,
        args.efficiency,
        f"decode, batch {batch}",
    )
    pre = analyze(
        2 * n * prompt,
        w_bytes + prompt * kv_tok,
        peak,
        hw.hbm_bytes_per_s,
        args.efficiency,
        f"prefill, {prompt} tokens",
    )
    res = []
    for p in (dec, pre):
        res += [
            Result(
                f"{p.name}: {r.name}", r.value, r.unit, r.formula, r.substituted, r.inputs, r.steps, r.note
            )
            for r in (p.intensity, p.time)
        ]
    res.append(dec.ridge)
    return res, [(dec.name, dec.intensity.value), (pre.name, pre.intensity.value)]


def t_roofline(args: argparse.Namespace) -> Output:
    from nanoserve.planner.memory import dtype_bytes
    from nanoserve.planner.plots import RooflineSpec
    from nanoserve.planner.roofline import analyze, analyze_matmul

    hw = _hardware(args)
    peak = _peak(hw, args.dtype)
    if args.m or args.k or args.n:
        _need(args, "m", "k", "n")
        p = analyze_matmul(
            int(args.m),
            int(args.k),
            int(args.n),
            peak,
            hw.hbm_bytes_per_s,
            dtype_bytes(args.act_dtype),
            dtype_bytes(args.dtype),
            args.efficiency,
        )
        res, points, title = p.results(), [(p.name, p.intensity.value)], f"matmul {p.name} on {hw.name}"
    elif args.flops or args.bytes:
        _need(args, "flops", "bytes")
        p = analyze(args.flops, args.bytes, peak, hw.hbm_bytes_per_s, args.efficiency)
        res, points, title = p.results(), [("op", p.intensity.value)], f"op on {hw.name}"
    else:
        _need(args, "model")
        res, points = _model_points(args, hw)
        title = f"{_model(args).name} on {hw.name}"
    spec = RooflineSpec(f"roofline: {title}", peak, hw.hbm_bytes_per_s, tuple(points), args.efficiency)
    return Output(f"roofline: {title}", res, roofline=spec)


def t_decode(args: argparse.Namespace) -> Output:
    from nanoserve.planner.memory import dtype_bytes, kv_cache_per_token
    from nanoserve.planner.plots import RooflineSpec
    from nanoserve.planner.serving import decode_crossover_batch, decode_throughput

    m, hw = _model(args), _hardware(args)
    n = _n_params(args)
    b = dtype_bytes(args.dtype)
    kv_seq = kv_cache_per_token(m, kv_dtype=args.kv_dtype).value * (args.context or 0)
    peak = _peak(hw, args.dtype)
    batch = args.batch or 1
    d = decode_throughput(n * b, hw.hbm_bytes_per_s, batch, kv_seq, 2 * n, peak, args.efficiency)
    x = decode_crossover_batch(peak, hw.hbm_bytes_per_s, b)
    spec = RooflineSpec(
        f"decode of {m.name} on {hw.name}",
        peak,
        hw.hbm_bytes_per_s,
        ((f"batch {batch}", 2 * n * batch / (n * b + batch * kv_seq)),),
        args.efficiency,
    )
    return Output(f"decode of {m.name} ({args.dtype}) on {hw.name}", [d, x], [d.note], roofline=spec)


def t_prefill(args: argparse.Namespace) -> Output:
    from nanoserve.planner.serving import prefill_throughput, prefill_time, ttft

    m, hw = _model(args), _hardware(args)
    n = _n_params(args)
    peak = _peak(hw, args.dtype) * (args.tp or 1)
    prompt = args.prompt or args.context or 4096
    thr = prefill_throughput(n, peak, args.efficiency)
    return Output(
        f"prefill of {m.name} on {hw.name} (TP={args.tp or 1})",
        [thr, prefill_time(prompt, n, peak, args.efficiency), ttft(prompt, thr.value, args.queue)],
    )


def t_batching(args: argparse.Namespace) -> Output:
    from nanoserve.planner.serving import continuous_batching_gain, static_batching_utilization

    _need(args, "mean-len", "max-len")
    return Output(
        "static vs continuous batching",
        [
            static_batching_utilization(args.mean_len, args.max_len),
            continuous_batching_gain(args.mean_len, args.max_len),
        ],
    )


def t_littles_law(args: argparse.Namespace) -> Output:
    from nanoserve.planner.serving import littles_law

    return Output("Little's law", [littles_law(args.rate, args.latency, args.concurrency)])


def t_spec(args: argparse.Namespace) -> Output:
    from nanoserve.planner import speculative as s

    a, k, tt, td = args.alpha, args.spec_k, args.target_ms / 1e3, args.draft_ms / 1e3
    par = args.draft_parallel
    res = []
    for method, label in (("exact", "exact"), ("approx", "kα+1")):
        res += [
            _label(s.expected_tokens(a, k, method), label),
            _label(s.speedup(a, k, tt, td, method, draft_parallel=par), label),
            _label(s.break_even_acceptance(k, tt, td, method, draft_parallel=par), label),
        ]
    res.append(s.optimal_k(a, tt, td, draft_parallel=par))
    return Output(
        f"speculative decoding (α={a}, k={k}, target {args.target_ms} ms, draft {args.draft_ms} ms)", res
    )


def t_quant(args: argparse.Namespace) -> Output:
    from nanoserve.planner.memory import dtype_bytes
    from nanoserve.planner.plots import RooflineSpec
    from nanoserve.planner.quantization import gpus_for_weights, quantized_decode_speed
    from nanoserve.planner.serving import decode_crossover_batch

    hw = _hardware(args)
    n = _n_params(args, active=False)
    res, points = [], []
    batch = args.batch or 1
    for d in args.dtypes.split(","):
        sp = quantized_decode_speed(n, d, hw.hbm_bytes_per_s, batch, args.group_size, args.efficiency)
        w = sp.steps[0].steps[0]
        res += [
            _label(sp, d),
            _label(gpus_for_weights(w.value, args.gpu_mem or hw.hbm_bytes), d),
            _label(decode_crossover_batch(hw.bf16_flops_per_s, hw.hbm_bytes_per_s, dtype_bytes(d)), d),
        ]
        points.append((f"{d}, batch {batch}", 2 * batch / dtype_bytes(d)))
    title = f"quantized decode of {n / 1e9:.4g}B params on {hw.name}"
    return Output(
        title,
        res,
        ["crossover batch: where decode turns compute-bound (weight-only formats compute in bf16)"],
        roofline=RooflineSpec(title, hw.bf16_flops_per_s, hw.hbm_bytes_per_s, tuple(points)),
    )


def _fleet(specs: list[str]) -> list[Any]:
    from nanoserve.planner.cost import FleetModel

    out = []
    for s in specs:
        parts = s.split(":")
        if len(parts) not in (3, 4):
            raise InvalidRequestError(f"--fleet wants NAME:SHARE:TOK_PER_S[:GPUS], got {s!r}", "fleet")
        try:
            out.append(
                FleetModel(
                    parts[0],
                    number(parts[1]),
                    number(parts[2]),
                    int(number(parts[3])) if len(parts) == 4 else 1,
                )
            )
        except argparse.ArgumentTypeError as e:
            raise InvalidRequestError(f"--fleet {s!r}: {e}", "fleet") from e
    return out


def t_cost(args: argparse.Namespace) -> Output:
    from nanoserve.planner import cost

    price = args.price if args.price is not None else _hardware(args).usd_per_hour
    n_gpus = int(args.gpus or 1)
    res: list[Result] = []
    if args.tok_s:
        res.append(cost.cost_per_million_tokens(price, args.tok_s, n_gpus, args.utilization))
    if args.prefill_tok_s and args.tok_s:
        res += list(cost.input_output_cost(price, args.prefill_tok_s, args.tok_s, n_gpus, args.utilization))[
            ::2
        ]
    if args.target_price:
        res.append(cost.throughput_for_price(args.target_price, price, n_gpus, args.utilization))
    if args.spot:
        res.append(cost.effective_spot_price(args.spot, args.availability, price))
    if args.reserved:
        res.append(cost.reserved_break_even_utilization(args.reserved, price))
    if args.fleet:
        _need(args, "requests-per-s", "output-tokens")
        total, per_model = cost.fleet_size(
            _fleet(args.fleet), args.requests_per_s, args.output_tokens, args.headroom or 0.0
        )
        res += per_model + [total]
        n_gpus = int(total.value)
    res.append(cost.monthly_bill(n_gpus, price, args.hours))
    res.append(cost.effective_hourly_cost(price, args.utilization))
    return Output(f"cost at ${price:g}/GPU-hour", res)


def t_training(args: argparse.Namespace) -> Output:
    from nanoserve.planner import training

    hw = _hardware(args)
    n = _n_params(args)
    _need(args, "tokens")
    gpus = int(args.gpus or 1)
    t = training.training_time(n, args.tokens, gpus, hw.bf16_flops_per_s, args.mfu)
    res = [t.steps[0], t, training.training_cost(t.value, gpus, hw.usd_per_hour)]
    if args.tok_s_per_gpu:
        res.append(training.mfu_from_throughput(args.tok_s_per_gpu, n, hw.bf16_flops_per_s))
    return Output(
        f"training {n / 1e9:.4g}B params on {int(args.tokens):,} tokens, {gpus} × {hw.name}",
        res,
        [t.note] + ([res[-1].note] if res[-1].note and args.tok_s_per_gpu else []),
    )


def t_chinchilla(args: argparse.Namespace) -> Output:
    from nanoserve.planner import training

    res: list[Result] = []
    if args.compute:
        res += list(training.chinchilla_optimal(args.compute, args.tokens_per_param))
    if args.params or args.model:
        n = _n_params(args)
        res.append(training.chinchilla_tokens(n, args.tokens_per_param))
        if args.compute:
            res.append(training.tokens_for_compute(args.compute, n))
    if not res:
        raise InvalidRequestError("topic 'chinchilla' needs --compute and/or --model/--params", "compute")
    return Output("Chinchilla", res)


def t_plan(args: argparse.Namespace) -> Output:
    from nanoserve.planner.capacity import plan_serving
    from nanoserve.planner.plots import MemorySpec, RooflineSpec

    _need(args, "model")
    hw = _hardware(args)
    p = plan_serving(
        args.model,
        hw,
        weight_dtype=args.dtype,
        kv_dtype=args.kv_dtype,
        users=args.users,
        active_fraction=args.active,
        tok_per_s_per_user=args.tok_per_user,
        context_tokens=args.context or 4096,
        prompt_tokens=args.prompt,
        ttft_target_s=args.ttft,
        headroom=0.2 if args.headroom is None else args.headroom,
        overhead_bytes=args.overhead if args.overhead is not None else 5e9,
        max_batch=args.max_batch,
        tp=args.tp,
        n_params=args.params,
        gpu_memory_bytes=args.gpu_mem,
        prefill_efficiency=args.efficiency,
        decode_efficiency=args.efficiency,
        kv_read_fraction=args.kv_read_fraction,
        hours_per_month=args.hours,
    )
    s = p.steps
    kv_used = p.batch_per_replica * s["KV per request"].value / min(p.tp, _model(args).kv_heads)
    mem_total = args.gpu_mem or hw.hbm_bytes
    breakdown = {
        "weights": s["weights"].value / p.tp,
        "KV in use": kv_used,
        "KV free": max(0.0, s["KV budget per GPU"].value - kv_used),
        "overhead": args.overhead if args.overhead is not None else 5e9,
    }
    n = args.params or _n_params(args)
    w_gpu = s["weights"].value / p.tp
    peak = _peak(hw, p.weight_dtype)
    points = (
        (
            f"decode, batch {p.batch_per_replica}",
            2 * n / p.tp * p.batch_per_replica / (w_gpu + args.kv_read_fraction * kv_used),
        ),
        (
            f"prefill, {args.prompt or args.context or 4096} tokens",
            2 * n * (args.prompt or args.context or 4096) / s["weights"].value,
        ),
    )
    return Output(
        f"serving plan: {p.model} ({p.weight_dtype}) on {p.hardware}",
        list(s.values()),
        [f"binding constraint on the batch: {p.binding}"] + list(p.warnings),
        roofline=RooflineSpec(
            f"{p.model} {p.weight_dtype} on {p.hardware}", peak, hw.hbm_bytes_per_s, points, args.efficiency
        ),
        memory=MemorySpec(f"per GPU (TP={p.tp})", breakdown, mem_total),
        extra={"plan": p.summary()},
    )


TOPICS: dict[str, tuple[Callable[[argparse.Namespace], Output], str]] = {
    "params": (t_params, "exact parameter count by component, FLOPs per token"),
    "memory": (t_memory, "weight memory per dtype and per-GPU inference memory"),
    "weights": (t_memory, "alias of memory"),
    "kv": (t_kv, "KV cache per token / request / batch, pages, fragmentation"),
    "tp": (t_tp, "tensor parallelism: weights per GPU, all-reduce bytes and time"),
    "pp": (t_pp, "pipeline bubble and microbatches for a target bubble"),
    "zero": (t_zero, "DDP / ZeRO-1/2/3 model state per GPU, communication per step"),
    "fsdp": (t_zero, "alias of zero"),
    "3d": (t_3d, "3D parallelism: DP degree and per-GPU memory"),
    "activations": (t_activations, "activation memory with and without recomputation"),
    "roofline": (t_roofline, "arithmetic intensity, ridge point, bound and time of a matmul, op or model"),
    "decode": (t_decode, "decode throughput bound and the compute-bound crossover batch"),
    "prefill": (t_prefill, "prefill throughput, time and TTFT"),
    "batching": (t_batching, "static vs continuous batching utilisation"),
    "littles-law": (t_littles_law, "L = λ·W, given any two"),
    "spec": (t_spec, "speculative decoding: tokens per step, speedup, break-even acceptance"),
    "quant": (t_quant, "quantized decode speed per dtype"),
    "cost": (t_cost, "$ per 1M tokens, spot / reserved break-even, fleet sizing, monthly bill"),
    "training": (t_training, "training time and cost (6ND, MFU), MFU from throughput"),
    "chinchilla": (t_chinchilla, "Chinchilla-optimal size and tokens"),
    "plan": (t_plan, "the serving-plan solver: GPUs, nodes, KV budget, latency, cost"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "topics:\n"
        + "\n".join(f"  {k:<12} {v[1]}" for k, v in TOPICS.items())
        + (
            "\n\nexample (the workbook's capstone):\n"
            "  nanoserve plan plan --model llama-3.1-70b --params 70e9 --gpu h100 --gpu-mem 80GiB "
            "--price 2.20 --max-batch 32"
        )
    )
    parser.add_argument("topic", help="what to calculate (see the list below)")
    g = parser.add_argument_group("model and hardware")
    g.add_argument("--model", help="preset (llama-3.1-70b, qwen2.5-7b, gpt2, …) or a config.json path")
    g.add_argument("--params", type=number, help="override the parameter count (e.g. 70e9, 70B)")
    g.add_argument(
        "--gpu", default="h100", help="hardware preset (h100, a100, tpu-v5e, …) or a JSON/YAML file"
    )
    g.add_argument("--price", type=number, help="$ per GPU-hour (default: the preset's on-demand price)")
    g.add_argument("--gpu-mem", type=size_bytes, help="override GPU memory, e.g. 80GiB or 80GB")
    g.add_argument("--dtype", help="weight dtype: bf16, fp8, int8, int4 (default bf16; plan: int4)")
    g.add_argument("--act-dtype", default="bf16", help="activation dtype of a matmul (roofline)")
    g.add_argument("--kv-dtype", default="bf16", help="KV cache dtype")
    g.add_argument("--group-size", type=positive_int, help="quantization group size (adds scale bytes)")
    g.add_argument("--efficiency", type=number, default=1.0, help="fraction of peak achieved (0-1]")
    w = parser.add_argument_group("workload")
    w.add_argument("--batch", type=positive_int, help="sequences per batch / micro-batch")
    w.add_argument("--context", type=positive_int, help="context (sequence) length in tokens")
    w.add_argument("--prompt", type=positive_int, help="prompt tokens for prefill / TTFT")
    w.add_argument("--block-size", type=positive_int, default=16, help="KV page size in tokens")
    w.add_argument("--mean-len", type=number, help="mean output / used length")
    w.add_argument("--max-len", type=number, help="max output length in a static batch")
    w.add_argument("--m", type=positive_int, help="matmul rows of A")
    w.add_argument("--k", type=positive_int, help="matmul inner dimension")
    w.add_argument("--n", type=positive_int, help="matmul columns of B")
    w.add_argument("--flops", type=number, help="FLOPs of an op (roofline)")
    w.add_argument("--bytes", type=number, help="bytes an op moves (roofline)")
    w.add_argument("--queue", type=number, default=0.0, help="queueing seconds before prefill (TTFT)")
    p = parser.add_argument_group("parallelism and training")
    p.add_argument("--tp", type=positive_int, help="tensor-parallel degree")
    p.add_argument("--pp", type=positive_int, help="pipeline-parallel degree")
    p.add_argument("--dp", type=positive_int, help="data-parallel degree")
    p.add_argument("--gpus", type=number, help="GPU count (3d, training, cost)")
    p.add_argument("--zero-stage", type=int, default=1, choices=(0, 1, 2, 3), help="ZeRO stage for 3d")
    p.add_argument("--microbatches", type=positive_int, help="pipeline microbatches")
    p.add_argument("--bubble", type=number, default=0.05, help="target bubble fraction")
    p.add_argument("--tokens", type=number, help="training tokens")
    p.add_argument("--mfu", type=number, default=0.4, help="model FLOPs utilisation")
    p.add_argument("--tok-s-per-gpu", type=number, help="measured training tokens/s per GPU (MFU)")
    p.add_argument("--compute", type=number, help="training compute budget in FLOPs (chinchilla)")
    p.add_argument("--tokens-per-param", type=number, default=20.0, help="Chinchilla ratio")
    s = parser.add_argument_group("serving, speculative decoding and cost")
    s.add_argument("--users", type=number, default=10_000, help="concurrent users (plan)")
    s.add_argument("--active", type=number, default=0.3, help="fraction of users generating (plan)")
    s.add_argument("--tok-per-user", type=number, default=30.0, help="tokens/s each active user receives")
    s.add_argument("--ttft", type=number, default=2.0, help="TTFT target in seconds")
    s.add_argument("--headroom", type=number, help="spare capacity fraction (plan: 0.2, fleet: 0)")
    s.add_argument("--overhead", type=size_bytes, help="per-GPU runtime overhead (plan: 5GB, memory: 4GB)")
    s.add_argument("--max-batch", type=positive_int, help="cap on the decode batch per replica (plan)")
    s.add_argument(
        "--kv-read-fraction",
        type=number,
        default=0.0,
        help="mean context / context read per decode step (plan; 0 = weights only, like the workbook)",
    )
    s.add_argument("--rate", type=number, help="arrival rate λ in requests/s (littles-law)")
    s.add_argument("--latency", type=number, help="time in system W in seconds (littles-law)")
    s.add_argument("--concurrency", type=number, help="requests in system L (littles-law)")
    s.add_argument("--alpha", type=number, default=0.7, help="draft acceptance rate")
    s.add_argument("--spec-k", type=positive_int, default=5, help="draft tokens per step")
    s.add_argument("--target-ms", type=number, default=50.0, help="target forward pass in ms")
    s.add_argument("--draft-ms", type=number, default=5.0, help="draft forward pass in ms")
    s.add_argument("--draft-parallel", action="store_true", help="draft runs on its own device")
    s.add_argument("--dtypes", default="bf16,int8,int4", help="comma-separated dtypes (quant)")
    s.add_argument("--tok-s", type=number, help="sustained output tokens/s (cost)")
    s.add_argument("--prefill-tok-s", type=number, help="prefill tokens/s for input pricing (cost)")
    s.add_argument("--utilization", type=number, default=1.0, help="busy fraction of paid hours")
    s.add_argument("--target-price", type=number, help="target $ per 1M tokens (cost)")
    s.add_argument("--spot", type=number, help="spot $/hour (cost)")
    s.add_argument("--availability", type=number, default=0.85, help="spot availability")
    s.add_argument("--reserved", type=number, help="reserved $/hour (cost)")
    s.add_argument("--fleet", action="append", help="NAME:SHARE:TOK_PER_S[:GPUS] per model (repeat)")
    s.add_argument("--requests-per-s", type=number, help="fleet request rate")
    s.add_argument("--output-tokens", type=number, help="output tokens per request (fleet)")
    s.add_argument("--hours", type=number, default=720.0, help="hours in a month")
    o = parser.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print JSON instead of tables")
    o.add_argument("--plot", help="write a PNG: roofline with the workload's points and/or memory bars")
    o.add_argument("--brief", action="store_true", help="tables only, without the derivations")


def compute(args: argparse.Namespace) -> Output:
    """Run one topic (raises InvalidRequestError on bad input)."""
    topic = args.topic.lower()
    if topic not in TOPICS:
        raise InvalidRequestError(f"unknown topic {args.topic!r}; choose from {', '.join(TOPICS)}", "topic")
    args.topic = topic
    if args.dtype is None:
        args.dtype = "int4" if topic == "plan" else "bf16"
    no_model = ("batching", "littles-law", "spec", "pp", "cost", "chinchilla", "roofline")
    params_ok = ("quant", "zero", "fsdp", "3d", "training")
    if topic in params_ok and not (args.model or args.params):
        raise InvalidRequestError(f"topic {topic!r} needs --model or --params", "model")
    if topic not in no_model + params_ok and not args.model:
        raise InvalidRequestError(f"topic {topic!r} needs --model (a preset or a config.json path)", "model")
    if not 0 < args.efficiency <= 1:
        raise InvalidRequestError("--efficiency must be in (0, 1]", "efficiency")
    return TOPICS[topic][0](args)


def run(args: argparse.Namespace) -> int:
    try:
        out = compute(args)
        if args.plot:
            if out.roofline is None and out.memory is None:
                raise InvalidRequestError(f"topic {args.topic!r} has nothing to plot", "plot")
            from nanoserve.planner.plots import save_figure

            save_figure(args.plot, out.roofline, out.memory)
    except (ValueError, OSError) as e:  # InvalidRequestError is a ValueError
        print(f"nanoserve plan: error: {getattr(e, 'message', None) or e}", file=sys.stderr)
        return 2
    if args.json:
        doc = {
            "topic": args.topic,
            "title": out.title,
            "results": [r.to_dict() for r in out.results],
            "notes": out.notes,
            **out.extra,
        }
        if args.plot:
            doc["plot"] = str(args.plot)
        print(json.dumps(doc, indent=2))
    else:
        _print_rich(out, explain=not args.brief)
        if args.plot:
            print(f"wrote {args.plot}")
    return 0
