"""Topic quant: decode speed, GPUs for the weights and crossover batch per weight dtype."""

from __future__ import annotations

import argparse

from nanoserve.planner.cli.flags import GPU, MODEL, Topic
from nanoserve.planner.cli.inputs import decode_weights_read, hardware_of, labelled, n_params
from nanoserve.planner.cli.output import Output
from nanoserve.planner.memory import dtype_bytes
from nanoserve.planner.plots import RooflineSpec
from nanoserve.planner.quantization import gpus_for_weights, quantized_decode_speed, quantized_weight_bytes
from nanoserve.planner.serving import decode_crossover_batch


def t_quant(args: argparse.Namespace) -> Output:
    hw = hardware_of(args)
    n = n_params(args, active=False)
    res, points = [], []
    batch = args.batch or 1
    # the same weights-read rule as `plan decode` (an MoE reads the experts its batch touches), so
    # both topics give one batch-1 speed; the GPUs must still hold every expert
    n_read = decode_weights_read(args, batch).value
    for d in args.dtypes.split(","):
        sp = quantized_decode_speed(n_read, d, hw.hbm_bytes_per_s, batch, args.group_size, args.efficiency)
        w = quantized_weight_bytes(n, d, args.group_size)
        res += [
            labelled(sp, d),
            labelled(gpus_for_weights(w.value, args.gpu_mem or hw.hbm_bytes), d),
            labelled(decode_crossover_batch(hw.bf16_flops_per_s, hw.hbm_bytes_per_s, dtype_bytes(d)), d),
        ]
        points.append((f"{d}, batch {batch}", 2 * batch / dtype_bytes(d)))
    title = f"quantized decode of {n / 1e9:.4g}B params on {hw.name}"
    return Output(
        title,
        res,
        ["crossover batch: where decode turns compute-bound (weight-only formats compute in bf16)"],
        roofline=RooflineSpec(title, hw.bf16_flops_per_s, hw.hbm_bytes_per_s, tuple(points)),
    )


TOPICS = {
    "quant": Topic(
        t_quant,
        "quantized decode speed per dtype",
        MODEL + GPU + ("gpu-mem", "dtypes", "group-size", "efficiency", "batch"),
        needs="model or params",
    ),
}
