"""AWQ checkpoints written in AutoAWQ's exact GEMM layout, read back into QuantizedWeight."""

from __future__ import annotations

import pytest
import torch
from quant_checkpoints import random_weight, read_checkpoint, write_checkpoint

from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.awq import AWQConfig, read_awq_linear
from nanoserve.model.quantization.checkpoint_formats import parse_quantization_config, read_quantized_linears

ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ's WQLinear_GEMM.from_linear


def awq_quantize(w: torch.Tensor, group_size: int):
    """AutoAWQ's pseudo_quantize_tensor (zero_point=True, 4 bits) -> codes [K, N], scales fp16 [G, N],
    zeros [G, N]; the codes are made against the fp16 scales the checkpoint keeps, as from_linear does."""
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"AutoAWQ groups need K % group_size == 0 (K={k}, group_size={group_size})")
    groups = w.reshape(-1, group_size)  # [N * G, group_size]
    max_val, min_val = groups.amax(1), groups.amin(1)
    scales = ((max_val - min_val).clamp(min=1e-5) / 15).half().float()
    zeros = (-torch.round(min_val / scales)).clamp(0, 15)
    codes = torch.clamp(torch.round(groups / scales[:, None]) + zeros[:, None], 0, 15)
    codes = codes.reshape(n, k).t().to(torch.int32)  # [K, N]
    return codes, scales.reshape(n, -1).t().half(), zeros.reshape(n, -1).t()


def awq_pack(codes: torch.Tensor, zeros: torch.Tensor):
    """WQLinear_GEMM.from_linear's packing, loop for loop: [K, N] codes -> qweight [K, N/8] and
    [G, N] zeros -> qzeros [G, N/8], column ORDER_MAP[i] of each eight in nibble i."""
    k, n = codes.shape
    if n % 32:
        raise ValueError(f"AutoAWQ packs N that is a multiple of 32 (got N={n})")
    qweight = torch.zeros(k, n // 32 * 4, dtype=torch.int32)
    for col in range(n // 8):
        for i in range(8):
            qweight[:, col] |= codes[:, col * 8 + ORDER_MAP[i]] << (i * 4)
    zeros = zeros.to(torch.int32)
    qzeros = torch.zeros(zeros.shape[0], n // 32 * 4, dtype=torch.int32)
    for col in range(n // 8):
        for i in range(8):
            qzeros[:, col] |= zeros[:, col * 8 + ORDER_MAP[i]] << (i * 4)
    return qweight, qzeros


def awq_config(**extra) -> dict:
    """The quantization_config an AutoAWQ checkpoint carries."""
    return {"quant_method": "awq", "zero_point": True, "group_size": 128, "bits": 4, "version": "gemm",
            "modules_to_not_convert": None, **extra}


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
