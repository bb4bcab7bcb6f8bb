"""Topics about serving traffic: batching, littles-law, and plan (the serving-plan solver)."""

from __future__ import annotations

import argparse

from nanoserve.planner.capacity import plan_serving
from nanoserve.planner.cli.flags import GPU, MODEL, Topic
from nanoserve.planner.cli.inputs import hardware_of, model_of, n_params, need, peak_flops
from nanoserve.planner.cli.output import Output
from nanoserve.planner.plots import MemorySpec, RooflineSpec
from nanoserve.planner.serving import continuous_batching_gain, littles_law, static_batching_utilization


def t_batching(args: argparse.Namespace) -> Output:
    need(args, "mean-len", "max-len")
    return Output(
        "static vs continuous batching",
        [
            static_batching_utilization(args.mean_len, args.max_len),
            continuous_batching_gain(args.mean_len, args.max_len),
        ],
    )


def t_littles_law(args: argparse.Namespace) -> Output:
    return Output("Little's law", [littles_law(args.rate, args.latency, args.concurrency)])


def t_plan(args: argparse.Namespace) -> Output:
    hw = hardware_of(args)
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
        headroom=args.headroom,
        overhead_bytes=args.overhead,
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
    kv_used = p.batch_per_replica * s["KV per request"].value / min(p.tp, model_of(args).kv_heads)
    breakdown = {
        "weights": s["weights"].value / p.tp,
        "KV in use": kv_used,
        "KV free": max(0.0, s["KV budget per GPU"].value - kv_used),
        "overhead": args.overhead,
    }
    n = args.params or n_params(args)
    w_gpu = s["weights"].value / p.tp
    prompt = args.prompt or args.context or 4096
    points = (
        (
            f"decode, batch {p.batch_per_replica}",
            2 * n / p.tp * p.batch_per_replica / (w_gpu + args.kv_read_fraction * kv_used),
        ),
        (f"prefill, {prompt} tokens", 2 * n * prompt / s["weights"].value),
    )
    peak = peak_flops(hw, p.weight_dtype)
    return Output(
        f"serving plan: {p.model} ({p.weight_dtype}) on {p.hardware}",
        list(s.values()),
        [f"binding constraint on the batch: {p.binding}"] + list(p.warnings),
        roofline=RooflineSpec(
            f"{p.model} {p.weight_dtype} on {p.hardware}", peak, hw.hbm_bytes_per_s, points, args.efficiency
        ),
        memory=MemorySpec(f"per GPU (TP={p.tp})", breakdown, args.gpu_mem or hw.hbm_bytes),
        extra={"plan": p.summary()},
    )


TOPICS = {
    "batching": Topic(t_batching, "static vs continuous batching utilisation", ("mean-len", "max-len")),
    "littles-law": Topic(t_littles_law, "L = λ·W, given any two", ("rate", "latency", "concurrency")),
    "plan": Topic(
        t_plan,
        "the serving-plan solver: GPUs, nodes, KV budget, latency, cost",
        MODEL
        + GPU
        + ("gpu-mem", "dtype", "kv-dtype", "efficiency", "context", "prompt", "tp")
        + ("users", "active", "tok-per-user", "ttft", "headroom", "overhead", "max-batch")
        + ("kv-read-fraction", "hours"),
        needs="model",
        defaults={"dtype": "int4", "headroom": 0.2, "overhead": "5GB"},
    ),
}
