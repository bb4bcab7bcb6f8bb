"""Attention over the paged KV cache: the reference PyTorch backend (any device).

A step's tokens are packed flat: sequence i owns rows query_start_loc[i]:query_start_loc[i+1] of
q/k/v. Its new K/V go to the cache slots in slot_mapping; then each query attends over everything
cached for its sequence up to its own position (cached context + the causal part of its chunk).
On CPU, decodes go through one native kernel call per layer (native_kernels.py) when it builds.

Cache layout per layer: [KVH, num_blocks, block_size, D], so gathering a batch's blocks with one
index op gives [KVH, B, L, D]: (kv head, sequence) fold into one batch dimension of a plain batched
matmul with no copy. All decodes (one query each) run as one padded, masked batch: gather, two
matmuls and a softmax per layer, whatever the batch size; the runner builds the padded block table
and the additive mask once per step. Prefill chunks run one `scaled_dot_product_attention` each.

A faster backend (e.g. CUDA kernels) implements the same `forward` over the same metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: cache slot (block * block_size + offset) of each new token
    query_start_loc: torch.Tensor  # [B + 1] int32: cu_seqlens of the queries
    context_lens: torch.Tensor  # [B] int32: tokens in the cache for each sequence after this step
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with 0
    # Host-side copies for the prefill loop (a kernel backend would not need them).
    query_lens_list: list[int]
    context_lens_list: list[int]
    decode_indices: torch.Tensor  # [Bd] int64: which sequences are decodes (query_len == 1)
    prefill_indices_list: list[int]
    block_size: int
    # Decodes as one padded batch, built once per step for every layer.
    decode_rows: torch.Tensor | None = None  # [Bd] int64 rows of q; None when every row is a decode
    decode_tables: torch.Tensor | None = None  # [Bd, nb] int64 blocks, padded with block 0
    decode_bias: torch.Tensor | None = None  # [Bd, 1, nb * block_size] additive mask: 0 or -inf
    decode_ctx_lens: torch.Tensor | None = None  # [Bd] int64 context of each decode (native kernel)
    query_start_list: list[int] | None = None  # host copy of query_start_loc (prefill steps only)


class TorchAttentionBackend:
    """Correct, device-agnostic paged attention in a few large tensor ops."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.native = None  # native_kernels' extension, set by the runner on CPU when it built

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None,
        v: torch.Tensor | None,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """q [T, H, D], k/v [T, KVH, D], caches [KVH, num_blocks, block_size, D] -> out [T, H, D].

        k/v None: the caller already wrote this step's K/V to the caches (native rope_cache).
        """
        kvh, d = self.num_kv_heads, self.head_dim
        if k is not None:
            k_cache.view(kvh, -1, d).index_copy_(1, meta.slot_mapping, k.transpose(0, 1))
            v_cache.view(kvh, -1, d).index_copy_(1, meta.slot_mapping, v.transpose(0, 1))
        if not meta.prefill_indices_list:
            return self._decode(q, k_cache, v_cache, meta)
        out = torch.empty_like(q)  # [T, H, D]
        if meta.decode_tables is not None:
            out[meta.decode_rows] = self._decode(q[meta.decode_rows], k_cache, v_cache, meta)
        starts = meta.query_start_list
        for i in meta.prefill_indices_list:
            s, e = starts[i], starts[i + 1]
            out[s:e] = self._prefill(
                q[s:e], k_cache, v_cache, meta.block_tables[i], meta.context_lens_list[i], meta.block_size
            )
        return out

    def _prefill(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_table: torch.Tensor,
        ctx: int,
        block_size: int,
    ) -> torch.Tensor:
        n_q = q.shape[0]
        blocks = block_table[: -(-ctx // block_size)]
        k = k_cache[:, blocks].flatten(1, 2)[:, :ctx]  # [KVH, ctx, D]
        v = v_cache[:, blocks].flatten(1, 2)[:, :ctx]
        qh = q.transpose(0, 1)  # [H, n_q, D]
        if n_q == ctx:
            o = F.scaled_dot_product_attention(qh, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
        else:
            # query i sits at position ctx - n_q + i and sees keys 0..that position
            q_pos = torch.arange(ctx - n_q, ctx, device=q.device)
            mask = torch.arange(ctx, device=q.device)[None, :] <= q_pos[:, None]  # [n_q, ctx]
            o = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask, scale=self.scale, enable_gqa=True)
        return o.transpose(0, 1)

    def _decode(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """q [Bd, H, D] (one query per sequence) -> [Bd, H, D] over each sequence's cached tokens."""
        if self.native is not None:
            return self.native.decode_attention(
                q, k_cache, v_cache, meta.decode_tables, meta.decode_ctx_lens, self.scale
            )
        kvh, d = self.num_kv_heads, self.head_dim
        bd, h = q.shape[0], self.num_heads
        tables = meta.decode_tables  # [Bd, nb]
        k = k_cache[:, tables].view(kvh, bd, -1, d)  # [KVH, Bd, L, D]
        v = v_cache[:, tables].view(kvh, bd, -1, d)
        # Query heads of one kv head are adjacent (head = kv_head * G + g), as in transformers' repeat_kv.
        qg = (q * self.scale).view(bd, kvh, h // kvh, d).transpose(0, 1)  # [KVH, Bd, G, D]
        scores = torch.matmul(qg, k.transpose(2, 3))  # [KVH, Bd, G, L]
        probs = torch.softmax(scores.add_(meta.decode_bias), dim=-1)
        o = torch.matmul(probs, v)  # [KVH, Bd, G, D]
        return o.transpose(0, 1).reshape(bd, h, d)
