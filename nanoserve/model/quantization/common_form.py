"""Weights quantized differently, brought to one form without changing a single dequantized value.

Projections stacked into one linear (q/k/v, gate/up) share one QuantizedWeight, so they must agree on
bits and group size. A GGUF file may mix them (llama.cpp's Q4_K_M keeps v_proj in Q6_K beside a Q4_K
q/k; a GPTQ checkpoint may set bits per module), so before stacking:

- bits: 4-bit codes are widened to int8 codes (`widen_to_8bit`). A 4-bit code q with the default zero
  point 8 becomes q - 8 with int8's default 0; with explicit zero points z, q and z stay as they are.
  Either way (q - z) is the same float, so the same products bit for bit. The widened part takes 1 byte
  per weight instead of half of one.
- group size: every part is split to the greatest common divisor of the group sizes (`split_groups`),
  each scale (and zero) repeated over the smaller groups it covers: the same scale per column.

The result runs on the w8a16 path (native kernel or reference) and equals the parts' own dequantization.
"""

from __future__ import annotations

import math

import torch

from nanoserve.model.quantization.quantized_weight import QuantizedWeight


def widen_to_8bit(qw: QuantizedWeight) -> QuantizedWeight:
    """A 4-bit weight as 8-bit codes with the same dequantized values (an 8-bit one is returned as is)."""
    if qw.bits == 8:
        return qw
    if qw.zeros is None:  # default zero point 8: codes q - 8 with int8's default 0, still symmetric
        codes = qw.qweight.to(torch.int16) - 8  # [N, K] -8..7
        return QuantizedWeight(codes.to(torch.int8), qw.scales, None, 8, qw.group_size, qw.act_quant)
    # explicit (fractional) zero points: keep codes and zeros as they are (z - 8 could round)
    return QuantizedWeight(qw.qweight.to(torch.int8), qw.scales, qw.zeros, 8, qw.group_size, qw.act_quant)


def effective_group_size(qw: QuantizedWeight) -> int:
    """The group size in columns, with one scale per output channel counted as a group of K."""
    return min(qw.group_size, qw.shape[1])


def split_groups(qw: QuantizedWeight, group_size: int) -> QuantizedWeight:
    """qw with groups of `group_size` columns, which must divide its own: each scale (and zero point)
    repeated over the smaller groups inside its group."""
    own = effective_group_size(qw)
    if own == group_size:
        return qw
    if own % group_size:
        raise ValueError(f"group size {group_size} does not divide {own}")
    repeat = own // group_size
    groups = -(-qw.shape[1] // group_size)  # a short last group stays one (shorter) group
    scales = qw.scales.repeat_interleave(repeat, dim=1)[:, :groups].contiguous()  # [N, groups]
    zeros = None
    if qw.zeros is not None:
        zeros = qw.zeros.repeat_interleave(repeat, dim=1)[:, :groups].contiguous()  # [N, groups]
    return QuantizedWeight(qw.qweight, scales, zeros, qw.bits, group_size, qw.act_quant)


def common_form(weights: list[QuantizedWeight]) -> list[QuantizedWeight]:
    """The weights with equal bits and group size (8-bit if any is, the gcd of the group sizes), each
    dequantizing exactly as before. All must have the same number of input columns."""
    if len({(w.bits, effective_group_size(w)) for w in weights}) == 1:
        return weights
    if any(w.act_quant for w in weights):
        raise ValueError("w8a8 weights cannot be regrouped (one scale per output channel is required)")
    group = math.gcd(*(effective_group_size(w) for w in weights))
    if any(w.bits == 8 for w in weights):
        weights = [widen_to_8bit(w) for w in weights]
    return [split_groups(w, group) for w in weights]
