"""How many bytes a loaded model's weights take, as held: what the engine reports and the planner predicts.

Counted per module as stored: a FastLinear's plain weight or its packed layouts (padding included), a
QuantLinear's codes, scales, zeros and bias (QuantizedWeight.nbytes' formula, int4 two codes per byte),
every other parameter as is. A tensor shared by two modules (a tied lm_head) counts once. Buffers that
are not weights (the rotary tables) do not count.
"""

from __future__ import annotations

import torch
from torch import nn

from nanoserve.model.cpu_linear import FastLinear
from nanoserve.model.quantization.quant_linear import QuantLinear, tensor_bytes


def model_weight_bytes(model: nn.Module) -> int:
    seen: set[int] = set()

    def once(t: torch.Tensor | None) -> int:
        if t is None:
            return 0
        if t.is_mkldnn:  # oneDNN's opaque layout: no data pointer, and never shared
            return tensor_bytes(t)
        if t.data_ptr() in seen:
            return 0
        seen.add(t.data_ptr())
        return tensor_bytes(t)

    total = 0  # bytes
    for module in model.modules():
        if isinstance(module, QuantLinear):
            total += module.weight_bytes()
            continue
        if isinstance(module, FastLinear):
            total += once(module._packed) + once(module._mkldnn)
        total += sum(once(p) for p in module.parameters(recurse=False))
    return total
