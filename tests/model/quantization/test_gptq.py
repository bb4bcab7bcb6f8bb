"""GPTQ checkpoints written in AutoGPTQ's exact on-disk layout, read back into QuantizedWeight."""

from __future__ import annotations

import pytest
import torch
from gptq_format import gptq_config, gptq_dequantize, gptq_pack, gptq_quantize
from quant_checkpoints import random_weight, read_checkpoint, write_checkpoint

from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.checkpoint_formats import parse_quantization_config, read_quantized_linears
from nanoserve.model.quantization.checkpoint_linear import stack_linears
from nanoserve.model.quantization.gptq import GPTQConfig, read_gptq_linear


def write_gptq_layer(tmp_path, prefix, w, bits, group_size, sym, desc_act, fmt="gptq", seed=0):
    codes, scales, zeros, g_idx = gptq_quantize(w, bits, group_size, sym, desc_act, seed)
    qweight, qzeros = gptq_pack(codes, zeros, bits, v1=fmt == "gptq")
    tensors = {f"{prefix}.qweight": qweight, f"{prefix}.qzeros": qzeros, f"{prefix}.scales": scales,
               f"{prefix}.g_idx": g_idx, f"{prefix}.bias": torch.zeros(w.shape[0], dtype=torch.float16)}
    write_checkpoint(tmp_path, tensors, gptq_config(bits, group_size, desc_act, sym, checkpoint_format=fmt))
    return gptq_dequantize(codes, scales, zeros, g_idx), scales


CASES = [  # bits, group_size, desc_act, sym, checkpoint_format, N, K
    (4, 128, False, True, "gptq", 64, 256),
    (4, 128, True, True, "gptq", 96, 352),  # K = 2.75 groups: the last one short
    (4, 128, False, False, "gptq", 64, 384),
    (4, 128, True, False, "gptq", 160, 320),
    (4, 32, True, False, "gptq_v2", 32, 96),
    (8, 128, True, False, "gptq", 64, 288),
    (8, 64, False, True, "gptq", 32, 128),
    (4, -1, False, True, "gptq", 64, 160),  # one group per output channel
]


@pytest.mark.parametrize("bits,group_size,desc_act,sym,fmt,n,k", CASES)
def test_gptq_checkpoint_dequantizes_exactly(tmp_path, bits, group_size, desc_act, sym, fmt, n, k):
    w = random_weight(n, k, seed=n + k)
    prefix = "model.layers.0.mlp.down_proj"
    source, scales = write_gptq_layer(tmp_path, prefix, w, bits, group_size, sym, desc_act, fmt, seed=k)
    qc, tensors = read_checkpoint(tmp_path)
    assert isinstance(qc, GPTQConfig) and (qc.bits, qc.desc_act, qc.sym) == (bits, desc_act, sym)
    linears = read_quantized_linears(qc, tensors)
    assert list(linears) == [prefix]  # the bias is not the reader's: it loads as a float tensor
    linear = linears[prefix]
    q = linear.weight
    assert q.shape == (n, k) and q.bits == bits
    assert q.group_size == (k if group_size == -1 else group_size)
    assert q.qweight.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert (q.zeros is None) == sym  # symmetric checkpoints need no zero points
    assert (linear.input_perm is not None) == desc_act
    assert torch.equal(linear.dequantize(), source)  # bit-exact against GPTQ's own dequantization
    # and close to the float weight: at most half a step of the column's group scale away
    step = scales.float()[tensors[f"{prefix}.g_idx"].long()].t()  # [N, K]
    assert ((linear.dequantize() - w).abs() <= step * 0.5 + 1e-6).float().mean() > 0.99
    x = torch.randn(3, k)
    torch.testing.assert_close(linear.apply(x), x @ source.t(), rtol=1e-4, atol=1e-4)


def test_act_order_groups_become_contiguous_columns(tmp_path):
    write_gptq_layer(tmp_path, "l", random_weight(32, 256, 1), 4, 64, False, True)
    _, tensors = read_checkpoint(tmp_path)
    linear = read_gptq_linear(GPTQConfig.from_config(gptq_config(4, 64, True, False)), "l", tensors)
    perm = linear.input_perm
    assert sorted(perm.tolist()) == list(range(256))
    assert torch.equal(tensors["l.g_idx"].long()[perm], torch.arange(256) // 64)


def test_stacked_projections_share_act_order(tmp_path):
    """q/k/v see one input, so GPTQ gives them one column order: they stack into one linear."""
    w = {name: random_weight(32, 128, seed) for seed, name in enumerate("qkv")}
    parts = []
    for name in "qkv":
        path = tmp_path / name
        write_gptq_layer(path, f"p.{name}_proj", w[name], 4, 32, False, True, seed=7)
        qc, tensors = read_checkpoint(path)
        parts.append(read_quantized_linears(qc, tensors)[f"p.{name}_proj"])
    stacked = stack_linears(parts, "p.qkv_proj")
    assert stacked.weight.shape == (96, 128)
    assert torch.equal(stacked.dequantize(), torch.cat([p.dequantize() for p in parts]))
    other = tmp_path / "other"
    write_gptq_layer(other, "p.v_proj", w["v"], 4, 32, False, True, seed=8)
    qc, tensors = read_checkpoint(other)
    with pytest.raises(ModelLoadError, match="act-order"):
        stack_linears(parts[:2] + [read_quantized_linears(qc, tensors)["p.v_proj"]], "p.qkv_proj")


@pytest.mark.parametrize("setting,message", [
    ({"bits": 3}, "bits=3"),
    ({"bits": 2}, "bits=2"),
    ({"checkpoint_format": "marlin"}, "checkpoint_format='marlin'"),
    ({"group_size": 0}, "group_size=0"),
])
def test_unsupported_gptq_settings_are_named(setting, message):
    with pytest.raises(ModelLoadError, match=message):
        parse_quantization_config({"quantization_config": gptq_config(**setting)})


def test_gptq_writer_refuses_what_autogptq_cannot_pack():
    codes = torch.zeros(100, 64, dtype=torch.int32)
    with pytest.raises(ValueError, match="multiples of 32"):
        gptq_pack(codes, torch.ones(1, 64), 4)


def test_gptq_tensors_that_do_not_fit_are_refused(tmp_path):
    write_gptq_layer(tmp_path, "l", random_weight(64, 256, 2), 4, 128, True, False)
    qc, tensors = read_checkpoint(tmp_path)
    with pytest.raises(ModelLoadError, match="g_idx has 200 entries for K=256"):
        read_gptq_linear(qc, "l", {**tensors, "l.g_idx": tensors["l.g_idx"][:200]})
    with pytest.raises(ModelLoadError, match="do not fit together"):  # N = 60: not whole qzeros words
        read_gptq_linear(qc, "l", {**tensors, "l.qweight": tensors["l.qweight"][:, :60],
                                   "l.scales": tensors["l.scales"][:, :60]})
    with pytest.raises(ModelLoadError, match="missing tensor 'l.qzeros'"):
        read_gptq_linear(qc, "l", {k: v for k, v in tensors.items() if k != "l.qzeros"})
    act_order = GPTQConfig.from_config(gptq_config(4, 128, desc_act=True))
    with pytest.raises(ModelLoadError, match="desc_act=true needs"):
        read_gptq_linear(act_order, "l", {k: v for k, v in tensors.items() if k != "l.g_idx"})
    uneven = tensors["l.g_idx"].clone()
    uneven[:130] = 0  # group 0 would have 130 columns
    with pytest.raises(ModelLoadError, match="exactly 128 input columns"):
        read_gptq_linear(qc, "l", {**tensors, "l.g_idx": uneven})
