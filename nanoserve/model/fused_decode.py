"""The decode step of the whole decoder in one native call, bf16 or fp32, on CPU (csrc/fused_decode.cpp).

At batch 1 a deep, thin model spends about as long in Python and per-op dispatch as in reading its
weights: SmolLM2-135M has 30 layers of ~10 small ops each, and every op costs its fixed overhead
whatever its size. `FusedDecoder` runs DecoderModel.forward's layer loop in C++ for decode steps:
embedding, rotary tables, then per layer add+norm → qkv → rotary + cache write → decode attention →
o proj → add+norm → gate/up → SiLU·mul → down, then the final norm. It calls the very kernels the
per-op path calls (native_kernels, cpu_linear and quant_linear publish their entry points as tables,
csrc/kernel_table.h), so both paths give bit-identical hidden states. Each linear may be a packed
FastLinear (bf16 or fp32 tiles, as the model) or, in a bf16 model, a QuantLinear on its native kernel
(int8 / int4 weight-only, symmetric or with zero points, any group size the kernel takes, and w8a8),
mixed freely (a GGUF dequantizes some projections).

It is an implementation of the same forward, chosen once at start-up like the kernels: the runner asks
`make_fused_decoder` and binds the result (or None) to the model, whose forward hands it the steps it
`applies` to (every query a decode, on the CPU native attention backend) and runs every other step
(prefill chunks, verification of speculative drafts) op by op. `fused_decode_unavailable_reason` says
why a model keeps the per-op path: not a bf16 or fp32 CPU model, native kernels or the avx512 linear
kernel not loaded, a linear that is neither a packed FastLinear nor a native QuantLinear (oneDNN, hybrid, the
torch reference path, GPTQ act-order's input permutation), a KV cache that is not
the model's dtype (quantized), Qwen3's q/k norms, any layer class other than the reference ones (e.g.
a tensor-parallel variant), a torch.distributed run with several ranks, or
NANOSERVE_DISABLE_FUSED_DECODE=1.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import ModuleType

import torch

from nanoserve.model.attention import AttentionMetadata, CpuNativeAttentionBackend, CpuNativeAttentionMetadata
from nanoserve.model.cpu_linear import FastLinear, load_avx512_kernel
from nanoserve.model.kernels import Kernels, NativeCpuKernels
from nanoserve.model.layers import MLP_CHUNK_BYTES, GatedMLP, RMSNorm
from nanoserve.model.native_build import LazyExtension
from nanoserve.model.quantization.quant_linear import QuantLinear
from nanoserve.model.tied_embedding import embedding_table

log = logging.getLogger(__name__)

_EXTENSION = LazyExtension("nanoserve_fused_decode", ["fused_decode.cpp"], label="fused decode")


def load_fused_decode() -> ModuleType | None:
    """Build (first call only; cached on disk) and return the extension, or None (reason logged)."""
    return _EXTENSION.load()


@dataclass
class GreedySeq:
    """One sequence of FusedDecoder.greedy_steps."""

    token_ids: list[int]  # the tokens the model has not run yet (at least one)
    start: int  # the position of the first
    block_table: list[int]  # holding every position the loop writes
    stop_ids: tuple[int, ...] = ()  # tokens that finish the sequence ...
    stop_from: int = 0  # ... when chosen at this step (0-based) or later


class FusedDecoder:
    """DecoderModel.forward for decode-only steps, in one native call; see the module docstring."""

    def __init__(self, native: object, lm_head: object | None = None) -> None:
        self.native = native  # the extension's FusedDecoder, holding every weight and cache it reads
        # The extension's description of the lm_head (packed or native-quantized), for greedy_steps;
        # None where the lm_head is of another kind (tensor-parallel, reference path).
        self.lm_head = lm_head

    def applies(self, meta: AttentionMetadata) -> bool:
        """True for a step of decodes only (one query per sequence) on the CPU native backend."""
        return (
            type(meta) is CpuNativeAttentionMetadata
            and not meta.batch.prefill_spans
            and meta.decode_ctx_lens is not None
        )

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions [B] -> hidden states [B, hidden] after the final norm."""
        tables, ctx_lens = meta.batch.decode_tables, meta.decode_ctx_lens
        return self.native.forward(input_ids, positions, meta.slot_mapping, tables, ctx_lens)

    def decode_lists(
        self, token_ids: list[int], positions: list[int], block_tables: list[list[int]], block_size: int
    ) -> torch.Tensor:
        """One decode per sequence from plain lists, without a scheduler step's metadata (the draft
        model's loop: a handful of single-token steps per engine step, where building the metadata
        cost more than the forward). Same kernels, same result as __call__ on the same step."""
        return self.native.forward(*_decode_rows(token_ids, positions, block_tables, block_size))

    def greedy_steps(self, seqs: list[GreedySeq], block_size: int, steps: int) -> list[list[int]]:
        """Up to `steps` greedy tokens for each of `seqs`, in one native call: a forward over every
        token not yet run as a decode row, then per step the lm_head, an argmax and a one-row forward
        of the token chosen (the draft model's proposal loop), ending early once every sequence has
        chosen one of its stop ids. The tables must hold every position written; lm_head must be set."""
        ids: list[int] = []
        for seq in seqs:
            ids += seq.token_ids
        return self.native.greedy_steps(
            ids, [len(s.token_ids) for s in seqs], [s.start for s in seqs], [s.block_table for s in seqs],
            [s.stop_ids for s in seqs], [s.stop_from for s in seqs], block_size, steps, self.lm_head,
        )


def _decode_rows(
    token_ids: list[int], positions: list[int], block_tables: list[list[int]], block_size: int
) -> tuple[torch.Tensor, ...]:
    """The native forward's arguments for one decode row per token: ids, positions, slots [T] int64,
    tables [T, nb] int64 (each row's sequence's blocks, padded with block 0), ctx_lens [T] int64."""
    width = max(map(len, block_tables))
    slots = [
        t[p // block_size] * block_size + p % block_size for t, p in zip(block_tables, positions, strict=True)
    ]
    # One tensor for the four per-row fields (each tensor built from a list costs a few us, a draft
    # forward of the demo's draft model ~40): rows are contiguous views.
    ctx_lens = [p + 1 for p in positions]  # each token attends to itself and everything before it
    ids, pos, slot, ctx = torch.tensor([token_ids, positions, slots, ctx_lens])  # [4, T]
    tables = torch.tensor([t + [0] * (width - len(t)) for t in block_tables])  # [T, nb]
    return ids, pos, slot, tables, ctx


def _linear_ok(linear: object) -> bool:
    """A linear the native step can call exactly as its forward does."""
    if type(linear) is FastLinear:
        return linear.backend == "avx512" and linear._packed is not None
    if type(linear) is QuantLinear:
        # act-order's gather of the input columns is one more op the native step does not make
        return linear.backend == "native" and linear._packed is not None and linear.input_perm is None
    return False


def _native_linear(ext: ModuleType, linear: FastLinear | QuantLinear) -> object:
    """The extension's description of `linear`: its kernel and the arguments its forward passes."""
    from nanoserve.model import quant_kernels  # imported by QuantLinear.prepare already when used

    if type(linear) is FastLinear:
        return ext.packed_linear(linear._packed, linear.out_features, linear._bias_f32)
    p = linear._packed  # a quant_kernels.PackedWeight
    bias = None if linear.bias is None else linear.bias.float()  # what quant_kernels._run passes
    if p.method == "w8a8":
        return ext.w8a8_linear(p.qweight, p.n, p.wsum, p.scales, p.offsets, bias,
                               quant_kernels.W8A8_HYBRID_MIN_ROWS)
    return ext.a16_linear(p.qweight, p.bits, p.n, p.group_size, p.scales, p.offsets, bias,
                          quant_kernels.SCRATCH_MIN_ROWS)


def fused_decode_unavailable_reason(model: torch.nn.Module, kernels: Kernels) -> str | None:
    """Why `model` (a LlamaForCausalLM, caches and backend bound) must decode op by op; None: it can."""
    from nanoserve.model.llama import Attention, DecoderLayer  # llama imports this module's users

    if os.environ.get("NANOSERVE_DISABLE_FUSED_DECODE") == "1":
        return "disabled by NANOSERVE_DISABLE_FUSED_DECODE=1"
    if type(kernels) is not NativeCpuKernels:
        return "the native CPU kernels are not in use"
    if load_avx512_kernel() is None:
        return "the avx512 linear kernel is not loaded"
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            return "tensor parallel (several ranks)"
    decoder = model.model
    embed = embedding_table(decoder.embed_tokens)
    if embed.device.type != "cpu" or embed.dtype not in (torch.bfloat16, torch.float32):
        return "not a bf16 or fp32 model on CPU"
    if type(decoder.norm) is not RMSNorm:
        return "a final norm other than RMSNorm"
    for layer in decoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if type(layer) is not DecoderLayer or type(attn) is not Attention or type(mlp) is not GatedMLP:
            return f"a layer class other than the reference ones ({type(layer).__name__})"
        if attn.qk_norm:
            return "q/k norms (Qwen3)"
        if not all(map(_linear_ok, (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj))):
            return ("a linear that is neither a packed FastLinear nor a native QuantLinear "
                    "(oneDNN, hybrid, reference path or act-order)")
        if type(attn.backend) is not CpuNativeAttentionBackend:
            return f"attention backend {type(attn.backend).__name__}"
        caches = (attn.k_cache, attn.v_cache)
        # A quantized cache (attention/kv_cache.QuantizedKV: codes + scales) is not a tensor.
        if any(not isinstance(c, torch.Tensor) or c.dtype != embed.dtype for c in caches):
            return "a KV cache not of the model's dtype"
        if attn.head_dim != attn.k_cache.shape[-1] or attn.num_heads % attn.num_kv_heads:
            return "attention shapes the decode kernel does not take"
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if any(type(n) is not RMSNorm or n.eps != decoder.norm.eps for n in norms):
            return "norms of another kind or epsilon"
    return None


def make_fused_decoder(model: torch.nn.Module, kernels: Kernels) -> FusedDecoder | None:
    """The fused decode path for `model` (weights packed, kernels, caches and backend bound), or None."""
    reason = fused_decode_unavailable_reason(model, kernels)
    ext = None if reason else load_fused_decode()
    if ext is None:
        log.info("fused decode off (%s); decoding op by op", reason or _EXTENSION.reason)
        return None
    decoder = model.model
    first = decoder.layers[0].self_attn
    rotary = decoder.rotary_emb
    linears = [lin for layer in decoder.layers
               for lin in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
                           layer.mlp.down_proj)]
    lm_head = model.lm_head if _linear_ok(model.lm_head) else None  # for greedy_steps
    kinds = {type(lin) for lin in (*linears, lm_head) if lin is not None}
    linear_table = load_avx512_kernel().kernel_table if FastLinear in kinds else None
    quant_table = None
    if QuantLinear in kinds:
        from nanoserve.model.quant_kernels import load_quant_kernels  # loaded: the QuantLinears use it

        quant_table = load_quant_kernels().kernel_table
    native = ext.FusedDecoder(
        kernels.ext.kernel_table, linear_table, quant_table,
        embedding_table(decoder.embed_tokens), decoder.embed_tokens.num_embeddings,
        rotary.cos, rotary.sin_signed, decoder.norm.weight.detach(),
        first.num_heads, first.num_kv_heads, first.head_dim, decoder.norm.eps, first.backend.scale,
        MLP_CHUNK_BYTES,
    )
    for layer in decoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        native.add_layer(
            layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach(),
            *(_native_linear(ext, x) for x in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)),
            attn.k_cache, attn.v_cache,
        )
    return FusedDecoder(native, None if lm_head is None else _native_linear(ext, lm_head))
