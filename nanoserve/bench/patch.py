"""Swap a loaded model's linear layers for `cpu_linear.FastLinear`, from outside the engine.

An experiment, not the engine's code path: it lets the benchmarks show what the faster CPU linear
path buys end to end before the engine adopts it (then this patch becomes a no-op). Every bf16
`nn.Linear` on the CPU gets `forward = FastLinear(weight, bias, backend)`; the module keeps its
parameters, so weight loading, tying and state dicts are untouched.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def patch_linears(model: Any, backend: str = "auto") -> Counter:
    """Returns how many linears took each path (e.g. Counter({"avx512": 169}))."""
    import torch

    from nanoserve.model.cpu_linear import FastLinear

    used: Counter = Counter()
    for module in model.modules():
        if type(module) is not torch.nn.Linear or "forward" in vars(module):
            continue
        w = module.weight
        if w.device.type != "cpu" or w.dtype != torch.bfloat16:
            continue
        fast = FastLinear(w.detach(), None if module.bias is None else module.bias.detach(), backend)
        module.forward = fast
        used[fast.backend] += 1
    return used


def patch_engine(engine: Any, backend: str) -> Counter:
    """`patch_linears` on the engine's model; backend "off" leaves it alone."""
    if backend == "off":
        return Counter()
    return patch_linears(engine.runner.model, backend)


def add_cpu_linear_argument(p) -> None:
    p.add_argument(
        "--cpu-linear",
        default="off",
        choices=["off", "auto", "torch", "mkldnn", "avx512"],
        help="experiment: swap the engine's bf16 linears for cpu_linear.FastLinear from outside",
    )
