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
