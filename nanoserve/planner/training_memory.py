"""Total training memory per GPU: ZeRO / 3D-parallel model state plus the activations in flight.

Model state (weights, gradients, optimizer) comes from `parallel.memory_per_gpu_3d`; activations from
`memory.activation_memory` for the layers of one pipeline stage (ceil(layers / PP)) at this GPU's TP
degree. Under 1F1B the first stage holds the activations of min(PP, microbatches) microbatches at
once (Narayanan et al. 2021), so that stage, the fullest, is the one reported. Defaults match
`memory.memory_estimate`: full recomputation with FlashAttention (the smallest activation footprint);
pass recompute="none" or "selective" for the others.
"""

from __future__ import annotations

import math

from nanoserve.planner.checks import positive_int
from nanoserve.planner.derivation import Result, derive
from nanoserve.planner.memory import activation_memory
from nanoserve.planner.models import ModelSpec, get_model
from nanoserve.planner.parallel import ZERO_STAGE_DEFAULT, memory_per_gpu_3d


def training_memory_per_gpu(
    model: ModelSpec | str,
    tp: int,
    pp: int,
    dp: int,
    zero_stage: int = ZERO_STAGE_DEFAULT,
    seq_len: int = 4096,
    micro_batch: int = 1,
    microbatches: int | None = None,
    recompute: str = "full",
    flash_attention: bool = True,
    sequence_parallel: bool = False,
) -> Result:
    """Model state + activations per GPU (bytes) of the first pipeline stage."""
    m = get_model(model)
    tp, pp, dp = positive_int("tp", tp), positive_int("pp", pp), positive_int("dp", dp)
    mb = positive_int("microbatches", microbatches) if microbatches is not None else pp
    state = memory_per_gpu_3d(m, tp, pp, dp, zero_stage)
    stage_layers = math.ceil(m.layers / pp)
    act = activation_memory(m, seq_len, micro_batch, recompute, flash_attention, tp, sequence_parallel,
                            layers=stage_layers)
    in_flight = min(pp, mb)
    total = state.value + in_flight * act.value
    return derive(
        f"training memory per GPU of {m.name} (tp={tp}, pp={pp}, dp={dp}, ZeRO-{zero_stage})",
        total,
        "bytes",
        "model state + microbatches_in_flight · activations per microbatch",
        f"{state.value:,.0f} + {in_flight} · {act.value:,.0f}",
        {"tp": tp, "pp": pp, "dp": dp, "zero_stage": zero_stage, "seq_len": seq_len,
         "micro_batch": micro_batch, "stage_layers": stage_layers, "microbatches_in_flight": in_flight,
         "recompute": recompute},
        [state, act],
        note="first pipeline stage under 1F1B (it holds min(PP, microbatches) microbatches); "
        "add runtime overhead (CUDA context, allocator slack) on top",
    )
