"""GGUF loading: tensor names, the Llama q/k un-permutation, errors; on SmolLM2's Q4_1 file, our
dequantized weights against transformers' conversion of the same file."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from nanoserve.config import EngineArgs
from nanoserve.errors import ModelLoadError
from nanoserve.model.gguf_loader import (
    architecture_of,
    gguf_tensors,
    hf_name,
    read_gguf_config,
    unpermute_qk,
)
from nanoserve.model.loader import load_model_config
from nanoserve.models_cache import gguf_path, named_model


def llama_cpp_permute(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """What llama.cpp's convert_hf_to_gguf does to Llama's q/k rows (HF halves → interleaved pairs)."""
    half = w.shape[0] // num_heads // 2
    return w.reshape(num_heads, 2, half, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


@pytest.mark.parametrize("heads,head_dim", [(9, 64), (3, 64), (2, 8)])
def test_unpermute_inverts_llama_cpp_permutation(heads, head_dim):
    w = torch.randn(heads * head_dim, 5)
    permuted = llama_cpp_permute(w, heads)
    assert not torch.equal(permuted, w)
    assert torch.equal(unpermute_qk(permuted, heads), w)
    bias = torch.randn(heads * head_dim)
    assert torch.equal(unpermute_qk(llama_cpp_permute(bias, heads), heads), bias)


def test_tensor_names():
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    assert hf_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_name("blk.0.attn_k.bias") == "model.layers.0.self_attn.k_proj.bias"
    assert hf_name("blk.3.ffn_down.weight") == "model.layers.3.mlp.down_proj.weight"
    assert hf_name("blk.3.attn_k_norm.weight") == "model.layers.3.self_attn.k_norm.weight"
    assert hf_name("rope_freqs.weight") is None
    assert hf_name("blk.0.ssm_conv1d.weight") is None


def test_unsupported_architecture_and_missing_file(tmp_path):
    assert architecture_of("llama") == "LlamaForCausalLM"
    with pytest.raises(ModelLoadError, match="unsupported GGUF architecture 'gpt2'"):
        architecture_of("gpt2")
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model_config(EngineArgs(model=str(tmp_path / "nothing.gguf")))


def test_gguf_weights_equal_transformers_conversion(smollm2):
    """Every tensor we dequantize (q/k un-permuted) equals transformers' conversion of the same file,
    as stored in the folder (bfloat16): a missed or wrong permutation fails here, tensor by tensor."""
    gguf_file = gguf_path(named_model("smollm2"))
    cfg = read_gguf_config(gguf_file)
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"]
    seen = set()
    with safe_open(str(smollm2 / "model.safetensors"), framework="pt") as ref:
        names = set(ref.keys())
        for name, tensor in gguf_tensors(gguf_file, cfg):
            assert tensor.dtype == torch.float32
            assert torch.equal(tensor.to(torch.bfloat16), ref.get_tensor(name)), name
            seen.add(name)
    assert seen == names and "model.layers.29.self_attn.k_proj.weight" in seen
    assert "lm_head.weight" not in seen  # tied: the head is the Q8_0 embedding


@pytest.mark.parametrize("kind", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K"])
def test_each_type_reads_as_the_gguf_package_dequantizes_it(tmp_path, kind):
    """A synthetic [rows, cols] tensor written as `kind`: read back in HF's [out, in] order with the
    gguf package's own dequantized values (and q rows un-permuted for Llama)."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType[kind]
    rows, cols = 8, 256  # one K-quant super-block per row
    values = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    if kind in ("F32", "F16"):
        stored = values.astype(np.float16 if kind == "F16" else np.float32)
    elif kind.endswith("_K"):  # the gguf package cannot quantize K-quants: random blocks (scales too)
        block_items, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        size = (rows, cols // block_items * block_bytes)
        stored = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8)
    else:
        stored = gguf.quants.quantize(values, qtype)
    path = tmp_path / f"{kind}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for name in ("blk.0.attn_v.weight", "blk.0.attn_q.weight"):
        if kind in ("F32", "F16"):
            writer.add_tensor(name, stored)
        else:
            writer.add_tensor(name, stored, raw_dtype=qtype)  # the shape comes from the bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    expected = torch.from_numpy(np.asarray(gguf.quants.dequantize(stored, qtype), dtype=np.float32))
    cfg = {"model_type": "llama", "num_attention_heads": 2, "num_key_value_heads": 2}
    got = dict(gguf_tensors(path, cfg))
    same = {"rtol": 0, "atol": 0, "equal_nan": True}  # random K-quant scales may make inf/nan
    assert got["model.layers.0.self_attn.v_proj.weight"].shape == (rows, cols)
    torch.testing.assert_close(got["model.layers.0.self_attn.v_proj.weight"], expected, **same)
    torch.testing.assert_close(llama_cpp_permute(got["model.layers.0.self_attn.q_proj.weight"], 2), expected,
                               **same)


def test_unsupported_quant_type_is_a_load_error(tmp_path):
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType.IQ4_NL
    path = tmp_path / "iq.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.attn_v.weight", np.zeros((2, 18), dtype=np.uint8), raw_dtype=qtype)  # [2, 32]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="blk.0.attn_v.weight.*IQ4_NL"):
        list(gguf_tensors(path, {"model_type": "llama", "num_attention_heads": 1}))
