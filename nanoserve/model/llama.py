"""The Llama-family decoder: Llama, Mistral, Qwen2 (q/k/v bias), Qwen3 (q/k RMSNorm, explicit head_dim).

Parameter names match the Hugging Face checkpoints, so weights load by name, except that q/k/v and
gate/up are stacked in one projection each (`packed_modules_mapping` tells the loader which checkpoint
tensors fill which rows). The model knows
nothing of requests: it takes a flat step of tokens with their positions and attention metadata,
and reads/writes the paged KV cache tensors bound to each attention layer by the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nanoserve.model.attention import AttentionMetadata, TorchAttentionBackend
from nanoserve.model.attention.kv_cache import KVStore
from nanoserve.model.cpu_linear import FastLinear
from nanoserve.model.fused_decode import FusedDecoder
from nanoserve.model.kernels import Kernels, apply_rotary
from nanoserve.model.layers import REFERENCE_KERNELS, GatedMLP, RMSNorm, RotaryEmbedding
from nanoserve.model.parallel_layers import (
    ParallelLMHead,
    VocabParallelEmbedding,
    parallel_attention_projections,
    parallel_mlp,
)


@dataclass
class DecoderSpec:
    """The architecture knobs, read from config.json by the loader."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: dict[str, Any]
    max_positions: int
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    mlp_bias: bool = False
    o_bias: bool = False
    tp_rank: int = 0  # tensor parallelism: this process's rank among tp_size (parallel_layers.py)
    tp_size: int = 1


class Attention(nn.Module):
    def __init__(self, spec: DecoderSpec, rotary: RotaryEmbedding) -> None:
        super().__init__()
        h, kvh, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
        if spec.tp_size > 1:  # this rank's heads only (h, kvh: the local counts)
            self.qkv_proj, self.o_proj, h, kvh = parallel_attention_projections(spec)
        else:
            self.qkv_proj = FastLinear(spec.hidden_size, [h * d, kvh * d, kvh * d], spec.qkv_bias)
            self.o_proj = FastLinear(h * d, spec.hidden_size, spec.o_bias)
        self.num_heads, self.num_kv_heads, self.head_dim = h, kvh, d
        if spec.qk_norm:
            self.q_norm = RMSNorm(d, spec.rms_norm_eps)
            self.k_norm = RMSNorm(d, spec.rms_norm_eps)
        self.qk_norm = spec.qk_norm
        self.backend = TorchAttentionBackend(h, kvh, d, d**-0.5)
        # [KVH, num_blocks, block_size, D] (a QuantizedKV for kv_cache_dtype int8/fp8), bound by the runner
        self.k_cache: KVStore | None = None
        self.v_cache: KVStore | None = None
        self.kernels: Kernels = REFERENCE_KERNELS

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata
    ) -> torch.Tensor:
        t, h, kvh, d = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv_proj(x)  # [T, (H + 2 KVH) D]
        if self.qk_norm:  # Qwen3: q and k are normed per head before rotary
            q = apply_rotary(self.q_norm(qkv[:, : h * d].view(t, h, d)), *rope)
            k = apply_rotary(self.k_norm(qkv[:, h * d : (h + kvh) * d].view(t, kvh, d)), *rope)
            v = qkv[:, (h + kvh) * d :].view(t, kvh, d)
        else:  # k, v None: the kernel wrote them to the caches already
            q, k, v = self.kernels.rope_cache(
                qkv, *rope, meta.slot_mapping, self.k_cache, self.v_cache, h, kvh
            )
        o = self.backend.forward(q, k, v, self.k_cache, self.v_cache, meta)  # [T, H, D]
        return self.o_proj(o.view(t, h * d))


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = Attention(spec, rotary)
        if spec.tp_size > 1:
            self.mlp = parallel_mlp(spec)
        else:
            self.mlp = GatedMLP(spec.hidden_size, spec.intermediate_size, spec.mlp_bias)
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the previous layer's output, not yet added to the residual stream (None before layer 0).

        Returns (this layer's MLP output, the residual stream): each add is fused into the next norm.
        """
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h = self.input_layernorm(residual, x)  # residual += x; h = norm(residual)
        h = self.self_attn(h, rope, meta)
        h = self.post_attention_layernorm(residual, h)
        return self.mlp(h), residual


class DecoderModel(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        # Given its weight, nn.Embedding skips its random init, whose meta-device version imports
        # torch._dynamo (2-6 s of start-up); the loader fills every weight anyway.
        if spec.tp_size > 1:
            self.embed_tokens = VocabParallelEmbedding(spec.vocab_size, spec.hidden_size, spec.tp_size,
                                                       spec.tp_rank)
        else:
            weight = torch.empty(spec.vocab_size, spec.hidden_size)  # [vocab, hidden]
            self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size, _weight=weight)
        self.rotary_emb = RotaryEmbedding(spec.head_dim, spec.max_positions, spec.rope)
        self.layers = nn.ModuleList(DecoderLayer(spec, self.rotary_emb) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        # The whole-step native decode path (fused_decode.py), bound once by the runner; None: op by op.
        self.fused_decode: FusedDecoder | None = None

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        if self.fused_decode is not None and self.fused_decode.applies(meta):
            return self.fused_decode(input_ids, positions, meta)  # same result, one native call
        x = self.embed_tokens(input_ids)  # [T, hidden]
        rope = self.rotary_emb.gather(positions, x.dtype)  # shared by every layer
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, rope, meta)
        return self.norm(residual, x)


class LlamaForCausalLM(nn.Module):
    """Also serves Mistral, Qwen2 and Qwen3: they differ only in the DecoderSpec flags."""

    # stacked projection -> the checkpoint's projections in its rows, in order
    packed_modules_mapping = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj"),
        "gate_up_proj": ("gate_proj", "up_proj"),
    }

    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.model = DecoderModel(spec)
        if spec.tp_size > 1:  # its forward gathers the logits on rank 0 (None on the other ranks)
            self.lm_head = ParallelLMHead(spec.hidden_size, spec.vocab_size, spec.tp_size, spec.tp_rank)
        else:
            self.lm_head = FastLinear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def bind_kernels(self, kernels: Kernels) -> None:
        """Run every layer's non-matmul ops through `kernels` (chosen once, by the runner). A fused
        decode step bound before calls the previous kernels' native tables: it is dropped (the runner
        binds the kernels first, then asks for the fused step)."""
        for module in self.modules():
            if hasattr(module, "kernels"):
                module.kernels = kernels
        self.model.fused_decode = None

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn for layer in self.model.layers]

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions [T] -> hidden states [T, hidden]."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> logits [N, vocab] in the model's dtype (the sampler upcasts when it must).

        Tensor-parallel: every rank must call it (the logits are gathered); ranks > 0 get None."""
        return self.lm_head(hidden)
