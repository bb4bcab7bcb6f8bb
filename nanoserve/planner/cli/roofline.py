"""Topics about speed limits: roofline (a matmul, an op or a whole model), decode, prefill."""

from __future__ import annotations

import argparse
from dataclasses import replace

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.cli.flags import GPU, MODEL, Topic
from nanoserve.planner.cli.inputs import (
    decode_weights_read,
    hardware_of,
    labelled,
    model_of,
    n_params,
    need,
    peak_flops,
)
from nanoserve.planner.cli.output import Output
from nanoserve.planner.derivation import Result, derive
from nanoserve.planner.hardware import Hardware
from nanoserve.planner.memory import dtype_bytes, kv_cache_per_token
from nanoserve.planner.parallel import collective_latency_s, tp_forward_allreduce_time
from nanoserve.planner.plots import RooflineSpec
from nanoserve.planner.roofline import analyze, analyze_matmul
from nanoserve.planner.serving import (
    decode_crossover_batch,
    decode_throughput,
    prefill_attention_flops_per_token,
    prefill_throughput,
    prefill_time,
    ttft,
)


def _model_points(args: argparse.Namespace, hw: Hardware) -> tuple[list[Result], list[tuple[str, float]]]:
    """Decode (at --batch) and prefill (at --prompt) of the whole model as two roofline points."""
    m = model_of(args)
    n = n_params(args)
    w_bytes = n * dtype_bytes(args.dtype)
    kv_tok = kv_cache_per_token(m, kv_dtype=args.kv_dtype).value
    ctx, batch, prompt = args.context or 4096, args.batch or 1, args.prompt or args.context or 4096
    peak = peak_flops(hw, args.dtype)
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
    hw = hardware_of(args)
    peak = peak_flops(hw, args.dtype)
    if args.m or args.k or args.n:
        need(args, "m", "k", "n")
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
        need(args, "flops", "bytes")
        p = analyze(args.flops, args.bytes, peak, hw.hbm_bytes_per_s, args.efficiency)
        res, points, title = p.results(), [("op", p.intensity.value)], f"op on {hw.name}"
    else:
        need(args, "model")
        res, points = _model_points(args, hw)
        title = f"{model_of(args).name} on {hw.name}"
    spec = RooflineSpec(f"roofline: {title}", peak, hw.hbm_bytes_per_s, tuple(points), args.efficiency)
    return Output(f"roofline: {title}", res, roofline=spec)


def t_decode(args: argparse.Namespace) -> Output:
    m, hw = model_of(args), hardware_of(args)
    b = dtype_bytes(args.dtype)
    tp = args.tp or 1
    batch = args.batch or 1
    if tp > hw.devices_per_node:
        raise InvalidRequestError(
            f"--tp {tp} spans more than one {hw.name} node ({hw.devices_per_node} GPUs): not modelled", "tp"
        )
    read = decode_weights_read(args, batch)  # MoE: the experts a batch touches, not only the active ones
    n_read, n_active = read.value, n_params(args)
    kv_seq = kv_cache_per_token(m, kv_dtype=args.kv_dtype).value * (args.context or 0)
    kv_seq_gpu = kv_seq / min(tp, m.kv_heads)  # beyond kv_heads, TP replicates KV heads
    peak = peak_flops(hw, args.dtype)
    comm = None
    if tp > 1:
        alpha = args.allreduce_latency_us * 1e-6 if args.allreduce_latency_us is not None else None
        comm = tp_forward_allreduce_time(
            m.layers,
            batch,
            m.hidden,
            tp,
            hw.intra_node_unidir_bytes_per_s,
            collective_latency_s(hw) if alpha is None else alpha,
            dtype_bytes(args.act_dtype),
        )
    d = decode_throughput(
        n_read * b / tp, hw.hbm_bytes_per_s, batch, kv_seq_gpu, 2 * n_active / tp, peak, args.efficiency,
        comm=comm,
    )
    x = decode_crossover_batch(peak, hw.hbm_bytes_per_s, b)
    spec = RooflineSpec(
        f"decode of {m.name} on {hw.name}",
        peak,
        hw.hbm_bytes_per_s,
        ((f"batch {batch}", 2 * n_active * batch / (n_read * b + batch * kv_seq)),),
        args.efficiency,
    )
    notes = [d.note]
    if read.steps:
        notes.append(f"MoE: a batch of {batch} touches {read.steps[0].value:.3g} experts per layer")
    title = f"decode of {m.name} ({args.dtype}) on {hw.name} (TP={tp})"
    return Output(title, [d, read, x], notes, roofline=spec)


def t_prefill(args: argparse.Namespace) -> Output:
    m, hw = model_of(args), hardware_of(args)
    n = n_params(args)
    tp = args.tp or 1
    peak = peak_flops(hw, args.dtype) * tp
    prompt = args.prompt or args.context or 4096
    attn = prefill_attention_flops_per_token(m, prompt)
    thr = prefill_throughput(n, peak, args.efficiency, attn.value)
    t = prefill_time(prompt, n, peak, args.efficiency, attn.value)
    t = replace(t, steps=(*t.steps, attn))
    res = [thr, t]
    notes = []
    if tp > 1:
        alpha = args.allreduce_latency_us * 1e-6 if args.allreduce_latency_us is not None else None
        comm = tp_forward_allreduce_time(
            m.layers, prompt, m.hidden, tp, hw.intra_node_unidir_bytes_per_s,
            collective_latency_s(hw) if alpha is None else alpha, dtype_bytes(args.act_dtype),
        )
        t = derive("prefill time with all-reduces", t.value + comm.value, "s",
                   "prefill time + TP all-reduce time", f"{t.value:.4g} + {comm.value:.4g}",
                   {"tp": tp}, [t, comm])
        res.append(t)
        notes.append("all-reduces counted as exposed (not overlapped with the matmuls)")
    res.append(ttft(prompt, prompt / t.value, args.queue))
    # the seeds' rule, 2N FLOPs per token, beside the realistic figure
    res.append(labelled(prefill_time(prompt, n, peak, args.efficiency), "2N only"))
    return Output(f"prefill of {m.name} on {hw.name} (TP={tp})", res, notes)


TOPICS = {
    "roofline": Topic(
        t_roofline,
        "arithmetic intensity, ridge point, bound and time of a matmul, op or model",
        MODEL
        + GPU
        + ("dtype", "act-dtype", "kv-dtype", "efficiency")
        + ("m", "k", "n", "flops", "bytes", "batch", "context", "prompt"),
    ),
    "decode": Topic(
        t_decode,
        "decode throughput bound and the compute-bound crossover batch",
        MODEL + GPU + ("dtype", "act-dtype", "kv-dtype", "efficiency", "batch", "context", "tp")
        + ("allreduce-latency-us",),
        needs="model",
    ),
    "prefill": Topic(
        t_prefill,
        "prefill throughput, time and TTFT",
        MODEL + GPU + ("dtype", "act-dtype", "efficiency", "tp", "prompt", "context", "queue")
        + ("allreduce-latency-us",),
        needs="model",
    ),
}
