"""Topics about what a model weighs: params, memory (alias weights), kv, activations."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from nanoserve.planner.cli.flags import GPU, MODEL, Topic
from nanoserve.planner.cli.inputs import hardware_of, labelled, model_of
from nanoserve.planner.cli.output import Output
from nanoserve.planner.memory import (
    activation_memory,
    internal_fragmentation,
    kv_cache_bytes,
    kv_cache_per_token,
    kv_pages,
    memory_estimate,
    paged_savings,
    weight_memory,
)
from nanoserve.planner.params import flops_per_token, param_count
from nanoserve.planner.plots import MemorySpec


def t_params(args: argparse.Namespace) -> Output:
    m = model_of(args)
    res = [param_count(m)]
    if m.is_moe:
        res.append(param_count(m, active=True))
    res.append(flops_per_token(m, args.context or 0))
    res.append(flops_per_token(m, args.context or 0, training=True, causal_average=bool(args.context)))
    return Output(f"parameters and FLOPs of {m.name}", res)


def t_memory(args: argparse.Namespace) -> Output:
    m, hw = model_of(args), hardware_of(args)
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
        overhead_bytes=args.overhead,
    )
    res.append(est.per_gpu)
    mem = MemorySpec(
        f"{m.name} on {hw.name} ({args.dtype}, TP={args.tp or 1})",
        dict(est.breakdown),
        args.gpu_mem or est.capacity_bytes,
    )
    return Output(f"memory of {m.name}", res, [est.per_gpu.note], memory=mem)


def t_kv(args: argparse.Namespace) -> Output:
    m = model_of(args)
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


def t_activations(args: argparse.Namespace) -> Output:
    m = model_of(args)
    seq, mb = args.context or 4096, args.batch or 1
    res = [
        labelled(activation_memory(m, seq, mb, recompute=r, flash_attention=fa, tp=args.tp or 1), label)
        for r, fa, label in (
            ("none", False, "no recomputation"),
            ("none", True, "FlashAttention"),
            ("selective", False, "selective recomputation"),
            ("full", False, "full recomputation"),
        )
    ]
    return Output(f"activation memory of {m.name} (seq {seq}, micro-batch {mb})", res)


_MEMORY = Topic(
    t_memory,
    "weight memory per dtype and per-GPU inference memory",
    MODEL + GPU + ("gpu-mem", "dtype", "kv-dtype", "group-size", "context", "batch", "tp", "overhead"),
    needs="model",
    defaults={"overhead": "4GB"},
)
TOPICS = {
    "params": Topic(
        t_params, "exact parameter count by component, FLOPs per token", ("model", "context"), "model"
    ),
    "memory": _MEMORY,
    "weights": replace(_MEMORY, help="alias of memory"),
    "kv": Topic(
        t_kv,
        "KV cache per token / request / batch, pages, fragmentation",
        ("model", "kv-dtype", "context", "batch", "block-size", "mean-len"),
        "model",
    ),
    "activations": Topic(
        t_activations,
        "activation memory with and without recomputation",
        ("model", "context", "batch", "tp"),
        "model",
    ),
}
