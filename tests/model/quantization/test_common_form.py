"""Differently quantized parts brought to one form (common_form.py): every dequantized value unchanged,
so a stacked q/k/v of Q4_0, Q8_0 and Q6_K computes exactly what its parts do."""

from __future__ import annotations

import pytest
import torch

from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.checkpoint_linear import CheckpointLinear, stack_linears
from nanoserve.model.quantization.common_form import common_form, split_groups, widen_to_8bit
from nanoserve.model.quantization.quant_linear import QuantLinear
from nanoserve.model.quantization.quantized_weight import QuantizedWeight


def random_weight(n: int, k: int, bits: int, group: int, zeros: bool, seed: int) -> QuantizedWeight:
    g = torch.Generator().manual_seed(seed)
    groups = -(-k // group)
    if bits == 4:
        codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    else:
        codes = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    scales = torch.rand(n, groups, generator=g) * 0.01 + 1e-4
    z = torch.rand(n, groups, generator=g) * 15 if zeros else None
    return QuantizedWeight(codes, scales, z, bits, group)


@pytest.mark.parametrize("zeros", [False, True])
def test_widen_to_8bit_keeps_every_value(zeros):
    qw = random_weight(6, 96, 4, 32, zeros, 0)
    wide = widen_to_8bit(qw)
    assert (wide.bits, wide.group_size, wide.qweight.dtype) == (8, 32, torch.int8)
    assert (wide.zeros is None) == (not zeros)  # symmetric stays symmetric (the kernels' fast case)
    assert torch.equal(wide.dequantize(), qw.dequantize())
    assert widen_to_8bit(wide) is wide


@pytest.mark.parametrize("k", [128, 100])  # 100: a short last group
def test_split_groups_keeps_every_value(k):
    qw = random_weight(5, k, 8, 32, True, 1)
    split = split_groups(qw, 16)
    assert split.group_size == 16 and split.scales.shape == (5, -(-k // 16))
    assert torch.equal(split.dequantize(), qw.dequantize())
    per_channel = random_weight(5, k, 4, 1 << 20, False, 2)  # one scale per output channel
    assert torch.equal(split_groups(per_channel, 4).dequantize(), per_channel.dequantize())
    with pytest.raises(ValueError, match="does not divide"):
        split_groups(qw, 24)


def test_mixed_parts_stack_into_one_exact_linear():
    """q Q4_0-like (4-bit, group 32), k Q8_0-like (8-bit, 32), v Q6_K-like (8-bit, group 16), with and
    without zero points: one 8-bit group-16 QuantLinear, equal to the parts one by one."""
    parts = [random_weight(64, 256, 4, 32, False, 3), random_weight(32, 256, 8, 32, True, 4),
             random_weight(32, 256, 8, 16, False, 5)]
    stacked = stack_linears([CheckpointLinear(p, None) for p in parts], "layers.0.qkv_proj")
    assert (stacked.weight.bits, stacked.weight.group_size) == (8, 16)
    assert torch.equal(stacked.dequantize(), torch.cat([p.dequantize() for p in parts]))
    layer = QuantLinear.from_quantized(stacked.weight, None, [64, 32, 32])
    x = torch.randn(3, 256)
    torch.testing.assert_close(layer(x), torch.cat([x @ p.dequantize().t() for p in parts], -1))
    assert common_form(parts[:1]) == parts[:1]


def test_w8a8_parts_are_not_regrouped():
    w8a8 = random_weight(8, 64, 8, 64, False, 6)
    w8a8.act_quant = True
    other = random_weight(8, 64, 8, 32, False, 7)
    other.act_quant = True
    with pytest.raises(ModelLoadError, match="quantized differently"):
        stack_linears([CheckpointLinear(w8a8, None), CheckpointLinear(other, None)], "p.qkv_proj")
