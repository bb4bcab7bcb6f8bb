"""Quantize-at-load methods: a float [N, K] weight -> a QuantizedWeight, and the registry that names them.

- ``int8``  (W8A16): symmetric per output channel, codes -127..127 (-128 unused, so the range is
  symmetric and -q never overflows), scale = max|w_row| / 127, zeros None, one group of K columns.
- ``int4``  (W4A16): per group of `group_size` input columns (the last group may be short when K is
  not a multiple), codes 0..15. Symmetric: zeros None (code 8 is 0.0), scale = max|w| / 7, codes 1..15.
  Asymmetric (`zero_point`): scale = (max - min) / 15 over a range that always includes 0.0, and a
  per-group zero code round(-min / scale), so exact zeros stay exact.
- ``w8a8``: the int8 weight with act_quant=True: activations are quantized per token at run time
  (QuantLinear). SmoothQuant's per-channel migration scales are not applied (they need calibration data).

Every method computes in float32 whatever the weight's dtype, and rounds half to even (torch.round), so
quantizing the same weight twice gives the same codes: the engine tests rely on that to build their
reference checkpoints. `QUANT_METHODS` maps a method name to how it builds QuantizedWeights; checkpoint
formats (GPTQ, AWQ, compressed-tensors) register with `quantize=None`: their readers produce
QuantizedWeights from stored tensors instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nanoserve.config import QuantizationConfig
from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.quantized_weight import QuantizedWeight

INT8_MAX = 127
INT4_LEVELS = 15  # codes 0..15
INT4_SYMMETRIC_ZERO = 8


def _groups(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] -> [N, G, group_size] float32, the last group zero-padded when K % group_size != 0."""
    n, k = weight.shape
    g = -(-k // group_size)
    w = weight.detach().float()
    if g * group_size != k:
        w = torch.nn.functional.pad(w, (0, g * group_size - k))
    return w.reshape(n, g, group_size)


def quantize_int8(weight: torch.Tensor) -> QuantizedWeight:
    """Symmetric int8 per output channel: q = round(w / s), s = max|w_row| / 127."""
    w = weight.detach().float()  # [N, K]
    amax = w.abs().amax(dim=1, keepdim=True)  # [N, 1]
    scales = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))  # an all-zero row: any scale
    q = torch.round(w / scales).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)  # [N, K]
    return QuantizedWeight(q, scales, None, bits=8, group_size=w.shape[1])


def quantize_int4(weight: torch.Tensor, group_size: int = 128, zero_point: bool = False) -> QuantizedWeight:
    """int4 per group of `group_size` input columns, symmetric (zeros None) or with a zero code per group."""
    if group_size < 1:
        raise ValueError(f"group_size must be positive (got {group_size})")
    n, k = weight.shape
    w = _groups(weight, group_size)  # [N, G, gs]
    if zero_point:
        # The range always contains 0.0 so its code is an integer and zero weights dequantize exactly.
        lo = w.amin(dim=2).clamp(max=0.0)  # [N, G]
        hi = w.amax(dim=2).clamp(min=0.0)
        span = hi - lo
        scales = torch.where(span > 0, span / INT4_LEVELS, torch.ones_like(span))
        zeros = torch.round(-lo / scales).clamp_(0, INT4_LEVELS)  # [N, G]
        q = torch.round(w / scales[..., None]) + zeros[..., None]
    else:
        amax = w.abs().amax(dim=2)  # [N, G]
        levels = INT4_LEVELS - INT4_SYMMETRIC_ZERO  # 7: codes 1..15 around 8
        scales = torch.where(amax > 0, amax / levels, torch.ones_like(amax))
        zeros = None
        q = torch.round(w / scales[..., None]) + INT4_SYMMETRIC_ZERO
    q = q.clamp_(0, INT4_LEVELS).to(torch.uint8).reshape(n, -1)[:, :k].contiguous()  # [N, K]
    return QuantizedWeight(q, scales, zeros, bits=4, group_size=group_size)


def quantize_w8a8(weight: torch.Tensor) -> QuantizedWeight:
    """int8 per channel weights, activations quantized per token at run time."""
    qw = quantize_int8(weight)
    qw.act_quant = True
    return qw


def concat_quantized(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """Stack projections of one input (q/k/v, gate/up) along the output rows into one QuantizedWeight.

    The parts must agree on bits, group_size and act_quant; zeros stay None only if every part's are."""
    first = parts[0]
    for p in parts[1:]:
        if (p.bits, p.group_size, p.act_quant, p.shape[1]) != (
            first.bits, first.group_size, first.act_quant, first.shape[1]
        ):
            raise ValueError("projections stacked together must share bits, group_size, act_quant and K")
    zeros = None
    if any(p.zeros is not None for p in parts):
        zeros = torch.cat([p.zero_points() for p in parts])
    return QuantizedWeight(
        torch.cat([p.qweight for p in parts]), torch.cat([p.scales.float() for p in parts]), zeros,
        first.bits, first.group_size, first.act_quant,
    )


@dataclass(frozen=True)
class QuantMethod:
    """A quantization method by name. `quantize`: float [N, K] weight -> QuantizedWeight at load, or None
    for a checkpoint format whose reader builds QuantizedWeights from the stored tensors."""

    name: str
    description: str  # what it quantizes, for errors and docs
    quantize: Callable[[torch.Tensor, QuantizationConfig], QuantizedWeight] | None


QUANT_METHODS: dict[str, QuantMethod] = {}


def register_method(method: QuantMethod) -> None:
    QUANT_METHODS[method.name] = method


def get_method(name: str) -> QuantMethod:
    method = QUANT_METHODS.get(name)
    if method is None:
        raise ModelLoadError(f"unknown quantization method {name!r}; supported: {', '.join(QUANT_METHODS)}")
    return method


register_method(QuantMethod(
    "int8", "decoder linears: int8 weights per output channel, activations in the model dtype",
    lambda w, cfg: quantize_int8(w),
))
register_method(QuantMethod(
    "int4", "decoder linears: int4 weights per group (group size, zero point configurable), activations "
    "in the model dtype",
    lambda w, cfg: quantize_int4(w, cfg.group_size, cfg.zero_point),
))
register_method(QuantMethod(
    "w8a8", "decoder linears: int8 weights per output channel, activations int8 per token (dynamic)",
    lambda w, cfg: quantize_w8a8(w),
))
# Checkpoint formats: read from the stored tensors (checkpoint_formats.py), never applied to a float model.
register_method(QuantMethod(
    "gptq", "GPTQ checkpoints (AutoGPTQ, GPTQModel): 4/8-bit weights per group, act-order, activations in "
    "the model dtype", None,
))
register_method(QuantMethod(
    "awq", "AWQ checkpoints (AutoAWQ GEMM): 4-bit weights per group with zero points, activations in the "
    "model dtype", None,
))
register_method(QuantMethod(
    "gguf", "GGUF files (llama.cpp): Q8_0, Q4_0/1, Q5_0/1 and Q2_K..Q6_K decoder linears as 8/4-bit weights "
    "per group of 16 or 32, activations in the model dtype", None,
))
register_method(QuantMethod(
    "compressed-tensors", "compressed-tensors checkpoints (llm-compressor): pack-quantized W4A16/W8A16 and "
    "int-quantized W8A8 (activations int8 per token)", None,
))
