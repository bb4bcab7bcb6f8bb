"""Quantize-at-load methods: round trips within half a step, odd shapes, zero points, the registry."""

from __future__ import annotations

import pytest
import torch

from nanoserve.config import QUANTIZATION_METHODS, QuantizationConfig
from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.methods import (
    QUANT_METHODS,
    concat_quantized,
    get_method,
    quantize_int4,
    quantize_int8,
    quantize_w8a8,
)


def weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g) * 3  # rows of different ranges


@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (64, 130), (33, 257)])
def test_int8_round_trip_within_half_a_step_per_channel(shape):
    w = weight(*shape)
    qw = quantize_int8(w)
    assert qw.bits == 8 and qw.zeros is None and qw.group_size == shape[1] and not qw.act_quant
    assert qw.qweight.dtype == torch.int8 and qw.scales.shape == (shape[0], 1)
    assert int(qw.qweight.abs().max()) <= 127
    err = (qw.dequantize() - w).abs()
    assert bool((err <= qw.scales / 2 + 1e-6).all())
    # the largest weight of each row lands on ±127 exactly: the scale is max|w| / 127
    assert bool((qw.qweight.abs().amax(dim=1) == 127).all())


def test_int8_all_zero_row_stays_zero():
    w = weight(4, 16)
    w[2] = 0
    qw = quantize_int8(w)
    assert bool((qw.dequantize()[2] == 0).all()) and bool(torch.isfinite(qw.scales).all())


@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("shape,group", [((5, 128), 128), ((7, 300), 128), ((3, 33), 16), ((9, 70), 32),
                                         ((4, 20), 128)])
def test_int4_round_trip_per_group(shape, group, zero_point):
    n, k = shape
    w = weight(n, k, seed=k)
    qw = quantize_int4(w, group, zero_point)
    g = -(-k // group)
    assert qw.bits == 4 and qw.qweight.dtype == torch.uint8 and qw.scales.shape == (n, g)
    assert int(qw.qweight.max()) <= 15
    assert (qw.zeros is not None) == zero_point
    cols = torch.arange(k) // group
    err = (qw.dequantize() - w).abs()
    assert bool((err <= qw.scales[:, cols] / 2 + 1e-6).all())
    # each group's range is resolved by its own scale: a one-scale-per-row int4 would be coarser
    per_row = quantize_int4(w, k, zero_point)
    assert float(err.mean()) <= float((per_row.dequantize() - w).abs().mean()) + 1e-9


def test_int4_zero_point_fits_a_one_sided_group_better_and_keeps_zero_exact():
    w = torch.rand(6, 64) + 0.5  # all positive: symmetric wastes half its codes
    w[:, 5] = 0.0
    sym, asym = quantize_int4(w, 32, False), quantize_int4(w, 32, True)
    err_sym = (sym.dequantize() - w).abs().max()
    err_asym = (asym.dequantize() - w).abs().max()
    assert err_asym < err_sym
    assert bool((asym.dequantize()[:, 5] == 0).all()) and bool((sym.dequantize()[:, 5] == 0).all())
    assert asym.zeros is not None and bool((asym.zeros == asym.zeros.round()).all())


def test_int4_symmetric_zero_code_is_eight():
    qw = quantize_int4(torch.zeros(2, 8), 4)
    assert bool((qw.qweight == 8).all()) and bool((qw.dequantize() == 0).all())


def test_w8a8_is_int8_weights_with_activation_quantization():
    w = weight(5, 40)
    a, b = quantize_w8a8(w), quantize_int8(w)
    assert a.act_quant and not b.act_quant
    assert torch.equal(a.qweight, b.qweight) and torch.equal(a.scales, b.scales)


def test_quantization_is_deterministic_and_dtype_independent_for_exact_inputs():
    w = weight(8, 64).bfloat16()
    assert torch.equal(quantize_int4(w, 32).qweight, quantize_int4(w.float(), 32).qweight)
    assert torch.equal(quantize_int8(w).qweight, quantize_int8(w).qweight)


def test_registry_serves_every_engine_method_and_rejects_unknown_names():
    assert set(QUANTIZATION_METHODS) <= set(QUANT_METHODS)
    w = weight(6, 48)
    cfg = QuantizationConfig("int4", group_size=16, zero_point=True)
    qw = get_method("int4").quantize(w, cfg)
    assert qw.group_size == 16 and qw.zeros is not None
    assert get_method("w8a8").quantize(w, QuantizationConfig("w8a8")).act_quant
    with pytest.raises(ModelLoadError, match="unknown quantization method 'int3'"):
        get_method("int3")


def test_concat_quantized_stacks_rows_and_zero_points():
    a = quantize_int4(weight(3, 40, 1), 16, True)
    b = quantize_int4(weight(5, 40, 2), 16, False)
    c = concat_quantized([a, b])
    assert c.shape == (8, 40)
    assert torch.equal(c.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    with pytest.raises(ValueError):
        concat_quantized([a, quantize_int8(weight(2, 40))])
