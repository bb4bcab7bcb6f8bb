"""Topics about splitting a model over GPUs: tp, pp, zero (alias fsdp), 3d."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from nanoserve.planner.cli.flags import GPU, MODEL, Topic
from nanoserve.planner.cli.inputs import hardware_of, model_of, need
from nanoserve.planner.cli.output import Output
from nanoserve.planner.memory import dtype_bytes
from nanoserve.planner.parallel import (
    dp_comm_per_step,
    dp_degree,
    layers_per_stage,
    memory_per_gpu_3d,
    microbatches_for_bubble,
    pipeline_bubble_fraction,
    tp_allreduce_bytes_per_layer,
    tp_comm_time,
    tp_weight_memory_per_gpu,
    weight_memory_3d,
    zero_memory_per_gpu,
)
from nanoserve.planner.training_memory import training_memory_per_gpu


def t_tp(args: argparse.Namespace) -> Output:
    m, hw = model_of(args), hardware_of(args)
    tp = args.tp or 8
    w = tp_weight_memory_per_gpu(args.params or m, tp, dtype_bytes(args.dtype))
    per_layer = tp_allreduce_bytes_per_layer(args.batch or 1, args.context or 4096, m.hidden, tp)
    t = tp_comm_time(per_layer, m.layers, hw.intra_node_unidir_bytes_per_s)
    return Output(f"tensor parallelism TP={tp} of {m.name} on {hw.name}", [w, per_layer, t])


def t_pp(args: argparse.Namespace) -> Output:
    pp = args.pp or 4
    res = [pipeline_bubble_fraction(pp, args.microbatches or 8), microbatches_for_bubble(pp, args.bubble)]
    if args.model:
        res.append(layers_per_stage(model_of(args).layers, pp))
    return Output(f"pipeline parallelism PP={pp}", res)


def t_zero(args: argparse.Namespace) -> Output:
    src: Any = args.params or model_of(args)
    dp = args.dp or 8
    res = [zero_memory_per_gpu(src, dp, s) for s in (0, 1, 2, 3)]
    res += [dp_comm_per_step(src, dp, "ddp"), dp_comm_per_step(src, dp, "fsdp")]
    return Output(f"data parallelism / ZeRO over DP={dp}", res)


def t_3d(args: argparse.Namespace) -> Output:
    need(args, "gpus")
    src: Any = args.params or model_of(args)
    tp, pp = args.tp or 8, args.pp or 1
    dp = dp_degree(int(args.gpus), tp, pp)
    res = [dp, weight_memory_3d(src, tp, pp), memory_per_gpu_3d(src, tp, pp, int(dp.value), args.zero_stage)]
    notes = []
    if args.params:
        notes.append("activations need the model's shape: give --model for the total per GPU")
    else:  # model state alone understates what a GPU holds: add the activations in flight
        res.append(training_memory_per_gpu(
            src, tp, pp, int(dp.value), args.zero_stage, args.context or 4096, args.batch or 1,
            args.microbatches or 8,
        ))
    if pp > 1:
        res.append(pipeline_bubble_fraction(pp, args.microbatches or 8))
    return Output(f"3D parallelism on {int(args.gpus)} GPUs (TP={tp}, PP={pp})", res, notes)


_ZERO = Topic(
    t_zero,
    "DDP / ZeRO-1/2/3 model state per GPU, communication per step",
    MODEL + ("dp",),
    needs="model or params",
)
TOPICS = {
    "tp": Topic(
        t_tp,
        "tensor parallelism: weights per GPU, all-reduce bytes and time",
        MODEL + GPU + ("dtype", "tp", "batch", "context"),
        needs="model",
    ),
    "pp": Topic(
        t_pp,
        "pipeline bubble and microbatches for a target bubble",
        ("model", "pp", "microbatches", "bubble"),
    ),
    "zero": _ZERO,
    "fsdp": replace(_ZERO, help="alias of zero"),
    "3d": Topic(
        t_3d,
        "3D parallelism: DP degree and per-GPU memory",
        MODEL + ("gpus", "tp", "pp", "zero-stage", "microbatches", "context", "batch"),
        needs="model or params",
    ),
}
