"""AWQ checkpoints written in AutoAWQ's exact GEMM layout, read back into QuantizedWeight."""

from __future__ import annotations

import pytest
import torch
from awq_format import ORDER_MAP, awq_config, awq_pack, awq_quantize
from quant_checkpoints import random_weight, read_checkpoint, write_checkpoint

from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.awq import AWQConfig, read_awq_linear
from nanoserve.model.quantization.checkpoint_formats import parse_quantization_config, read_quantized_linears


@pytest.mark.parametrize("n,k,group_size", [(64, 256, 128), (96, 384, 128), (32, 192, 64), (128, 96, 32)])
def test_awq_checkpoint_dequantizes_exactly(tmp_path, n, k, group_size):
    w = random_weight(n, k, seed=n * k)
    codes, scales, zeros = awq_quantize(w, group_size)
    qweight, qzeros = awq_pack(codes, zeros)
    prefix = "model.layers.3.self_attn.o_proj"
    write_checkpoint(tmp_path, {f"{prefix}.qweight": qweight, f"{prefix}.qzeros": qzeros,
                                f"{prefix}.scales": scales}, awq_config(group_size=group_size))
    qc, tensors = read_checkpoint(tmp_path)
    assert isinstance(qc, AWQConfig)
    linear = read_quantized_linears(qc, tensors)[prefix]
    assert linear.input_perm is None and linear.weight.zeros is not None
    assert linear.weight.shape == (n, k) and linear.weight.group_size == group_size
    g = torch.arange(k) // group_size
    source = (scales.float()[g] * (codes.float() - zeros[g])).t()  # AWQ's W = s * (q - z), [N, K]
    assert torch.equal(linear.dequantize(), source)
    step = scales.float()[g].t()
    assert ((linear.dequantize() - w).abs() <= step * 0.5 + 1e-6).float().mean() > 0.99
    assert torch.equal(linear.weight.qweight.long(), codes.t().long())  # the interleave is undone


def test_awq_nibble_order_is_the_interleaved_one():
    """One word holding codes 0..7 for columns 0..7 reads back in column order, not nibble order."""
    codes = torch.arange(8, dtype=torch.int32).repeat(4, 4)  # [K=4, N=32]: column c has code c % 8
    qweight, qzeros = awq_pack(codes, torch.zeros(1, 32))
    assert qweight[0, 0].item() == sum(c << (4 * i) for i, c in enumerate(ORDER_MAP))
    linear = read_awq_linear(AWQConfig.from_config(awq_config(group_size=4)), "l",
                             {"l.qweight": qweight, "l.qzeros": qzeros, "l.scales": torch.ones(1, 32).half()})
    assert linear.weight.qweight[:, 0].tolist() == list(range(8)) * 4


@pytest.mark.parametrize("setting,message", [
    ({"version": "gemv"}, "version='gemv'"),
    ({"version": "GEMV_FAST"}, "version='gemv_fast'"),
    ({"bits": 3}, "bits=3"),
    ({"zero_point": False}, "zero_point=false"),
])
def test_unsupported_awq_settings_are_named(setting, message):
    with pytest.raises(ModelLoadError, match=message):
        parse_quantization_config({"quantization_config": awq_config(**setting)})


def test_awq_shapes_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        awq_pack(torch.zeros(64, 40, dtype=torch.int32), torch.zeros(1, 40))
    codes, scales, zeros = awq_quantize(random_weight(64, 256, 3), 128)
    qweight, qzeros = awq_pack(codes, zeros)
    cfg = AWQConfig.from_config(awq_config())
    with pytest.raises(ModelLoadError, match="do not fit together"):
        read_awq_linear(cfg, "l", {"l.qweight": qweight, "l.qzeros": qzeros, "l.scales": scales[:, :60]})
    with pytest.raises(ModelLoadError, match="3 AWQ groups for K=256"):
        read_awq_linear(cfg, "l", {"l.qweight": qweight, "l.qzeros": torch.cat([qzeros, qzeros[:1]]),
                                   "l.scales": torch.cat([scales, scales[:1]])})
