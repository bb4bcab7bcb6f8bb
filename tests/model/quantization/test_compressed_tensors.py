"""compressed-tensors checkpoints written by the compressed-tensors package itself, read back."""

from __future__ import annotations

import pytest
import torch
from quant_checkpoints import random_weight, read_checkpoint

from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.checkpoint_formats import (
    parse_quantization_config,
    quantized_layer_tensors,
    read_quantized_linears,
)
from nanoserve.model.quantization.compressed_tensors import CompressedTensorsConfig

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors.naive_quantized.base import IntQuantizationCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor  # noqa: E402
from compressed_tensors.quantization import preset_name_to_scheme  # noqa: E402
from ct_format import compress, scheme, write_ct  # noqa: E402


@pytest.mark.parametrize("bits,group_size,symmetric,n,k", [
    (4, 128, True, 64, 256),
    (4, 128, False, 48, 384),  # N not a multiple of 32 // 4 words of zero points: padded rows
    (4, 32, False, 40, 96),
    (4, None, True, 64, 100),  # per channel; K = 100 is not a whole number of int32 words
    (8, 64, False, 32, 128),
])
def test_pack_quantized_w4a16_dequantizes_exactly(tmp_path, bits, group_size, symmetric, n, k):
    w = random_weight(n, k, seed=n + k)
    weight_args = {"num_bits": bits, "symmetric": symmetric, "group_size": group_size,
                   "strategy": "group" if group_size else "channel"}
    s = scheme("W4A16", **weight_args)
    saved, library_weight = compress(w, s, PackedQuantizationCompressor)
    assert set(saved) >= {"weight_packed", "weight_scale", "weight_shape"}
    assert ("weight_zero_point" in saved) == (not symmetric)
    prefix = "model.layers.1.mlp.gate_proj"
    write_ct(tmp_path, {prefix: (saved, s)}, "pack-quantized")
    qc, tensors = read_checkpoint(tmp_path)
    assert isinstance(qc, CompressedTensorsConfig)
    assert quantized_layer_tensors(qc, tensors)[prefix] == tuple(
        f"{prefix}.{name}" for name in ("weight_packed", "weight_shape", "weight_scale", "weight_zero_point")
        if name in saved)
    linear = read_quantized_linears(qc, tensors)[prefix]
    q = linear.weight
    assert q.shape == (n, k) and q.bits == bits and not q.act_quant and linear.input_perm is None
    assert q.group_size == (group_size or k)
    assert (q.zeros is None) == symmetric
    assert torch.equal(linear.dequantize().to(library_weight.dtype), library_weight)
    torch.testing.assert_close(linear.dequantize(), w, atol=float(q.scales.max()) * 0.51, rtol=0)


def test_int_quantized_w8a8(tmp_path):
    n, k = 96, 160
    w = random_weight(n, k, seed=5)
    s = preset_name_to_scheme("W8A8", ["Linear"])
    saved, library_weight = compress(w, s, IntQuantizationCompressor, scale_dtype=torch.float32)
    assert saved["weight"].dtype == torch.int8 and saved["weight_scale"].shape == (n, 1)
    prefix = "model.layers.0.self_attn.q_proj"
    write_ct(tmp_path, {prefix: (saved, s)}, "int-quantized")
    qc, tensors = read_checkpoint(tmp_path)
    linear = read_quantized_linears(qc, tensors)[prefix]
    q = linear.weight
    assert q.bits == 8 and q.act_quant and q.zeros is None and q.group_size == k
    assert torch.equal(q.qweight, saved["weight"])
    assert torch.equal(linear.dequantize(), library_weight)
    torch.testing.assert_close(linear.dequantize(), w, atol=float(q.scales.max()) * 0.51, rtol=0)


def test_targets_and_ignore_pick_each_layers_scheme(tmp_path):
    """Two config groups (4-bit attention by regex, 8-bit MLP by name); lm_head ignored stays float."""
    attn, mlp = "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"
    s4 = scheme("W4A16", group_size=32)
    s4.targets = ["re:.*self_attn.*"]
    s8 = scheme("W4A16", num_bits=8, group_size=64)
    s8.targets = [mlp]
    saved4, lib4 = compress(random_weight(32, 64, 1), s4, PackedQuantizationCompressor)
    saved8, lib8 = compress(random_weight(32, 128, 2), s8, PackedQuantizationCompressor)
    path = write_ct(tmp_path, {attn: (saved4, s4), mlp: (saved8, s8)}, "pack-quantized")
    qc, tensors = read_checkpoint(path)
    tensors["lm_head.weight"] = torch.zeros(8, 64)
    linears = read_quantized_linears(qc, tensors)
    assert sorted(linears) == sorted([attn, mlp])
    assert (linears[attn].weight.bits, linears[mlp].weight.bits) == (4, 8)
    assert torch.equal(linears[attn].dequantize().to(lib4.dtype), lib4)
    assert torch.equal(linears[mlp].dequantize().to(lib8.dtype), lib8)
    assert qc.scheme_for("lm_head") is None


def test_group_act_order_g_idx_is_honoured(tmp_path):
    """Older llm-compressor W4A16 with actorder "group" stores weight_g_idx; quantize permuted columns
    with the library and store them in the original order, as GPTQ does."""
    n, k, gs = 32, 128, 32
    w = random_weight(n, k, seed=9)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(3))
    s = scheme("W4A16", group_size=gs, symmetric=False)
    saved, library_permuted = compress(w[:, perm], s, PackedQuantizationCompressor)
    codes = ct.compressors.pack_quantized.helpers.unpack_from_int32(saved["weight_packed"], 4, (n, k))
    original_order = torch.empty_like(codes)
    original_order[:, perm] = codes
    saved["weight_packed"] = ct.compressors.pack_quantized.helpers.pack_to_int32(original_order, 4)
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = (torch.arange(k) // gs).to(torch.int32)
    saved["weight_g_idx"] = g_idx
    write_ct(tmp_path, {"l": (saved, s)}, "pack-quantized")
    qc, tensors = read_checkpoint(tmp_path)
    linear = read_quantized_linears(qc, tensors)["l"]
    assert torch.equal(g_idx.long()[linear.input_perm], torch.arange(k) // gs)  # groups now contiguous
    library_weight = torch.empty_like(library_permuted)
    library_weight[:, perm] = library_permuted  # the library's dequantization, in the original order
    assert torch.equal(linear.dequantize().to(library_weight.dtype), library_weight)
    x = torch.randn(2, k)
    torch.testing.assert_close(linear.apply(x), x @ linear.dequantize().t(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(linear.dequantize(), w, atol=float(linear.weight.scales.max()) * 0.51, rtol=0)


def ct_config(**weights_update) -> dict:
    s = preset_name_to_scheme("W4A16", ["Linear"]).model_dump(mode="json")
    s["weights"].update(weights_update)
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"group_0": s},
            "ignore": ["lm_head"], "quantization_status": "compressed"}


@pytest.mark.parametrize("config,message", [
    (ct_config(type="float", num_bits=8), "float weights"),
    (ct_config(num_bits=2), "2-bit weights"),
    (ct_config(strategy="block"), "strategy 'block'"),
    ({**ct_config(), "format": "nvfp4-pack-quantized"}, "format 'nvfp4-pack-quantized'"),
    ({**ct_config(), "kv_cache_scheme": {"num_bits": 8, "type": "float"}}, "kv_cache_scheme"),
    ({**ct_config(), "sparsity_config": {"format": "sparse-24-bitmask"}}, "sparsity format"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "quant_method='bitsandbytes'"),
])
def test_unsupported_compressed_tensors_settings_are_named(config, message):
    with pytest.raises(ModelLoadError, match=message):
        parse_quantization_config({"quantization_config": config})


def test_static_activation_scales_are_refused():
    s = preset_name_to_scheme("W8A8", ["Linear"]).model_dump(mode="json")
    s["input_activations"].update(dynamic=False, strategy="tensor")
    config = {"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {"g": s}}
    with pytest.raises(ModelLoadError, match="input_activations"):
        parse_quantization_config({"quantization_config": config})


def test_no_quantization_config_is_a_float_checkpoint():
    assert parse_quantization_config({"architectures": ["LlamaForCausalLM"]}) is None
