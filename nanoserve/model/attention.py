"""Attention over the paged KV cache: the reference PyTorch backend (any device).

A step's tokens are packed flat: sequence i owns rows query_start_loc[i]:query_start_loc[i+1] of
q/k/v. Its new K/V go to the cache slots in slot_mapping; then each query attends over everything
cached for its sequence up to its own position (cached context + the causal part of its chunk).
Decodes (one query each) run as one padded batched call; prefill chunks run one call each.

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
    # Host-side copies the reference backend loops over (a kernel backend would not need them).
    query_lens_list: list[int]
    context_lens_list: list[int]
    decode_indices: torch.Tensor  # [Bd] int64: which sequences are decodes (query_len == 1)
    prefill_indices_list: list[int]
    block_size: int


class TorchAttentionBackend:
    """Correct, device-agnostic paged attention with F.scaled_dot_product_attention."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """q [T, H, D], k/v [T, KVH, D], caches [num_blocks, block_size, KVH, D] -> out [T, H, D]."""
        kvh, d = self.num_kv_heads, self.head_dim
        k_cache.view(-1, kvh, d).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, kvh, d).index_copy_(0, meta.slot_mapping, v)
        out = torch.empty_like(q)
        if meta.decode_indices.numel():
            self._decode(q, out, k_cache, v_cache, meta)
        starts = meta.query_start_loc.tolist() if meta.prefill_indices_list else []
        for i in meta.prefill_indices_list:
            s, e = starts[i], starts[i + 1]
            out[s:e] = self._prefill(
                q[s:e], k_cache, v_cache, meta.block_tables[i], meta.context_lens_list[i], meta.block_size
            )
        return out

    def _gather(
        self, cache: torch.Tensor, block_table: torch.Tensor, n: int, block_size: int
    ) -> torch.Tensor:
        blocks = block_table[: -(-n // block_size)]
        return cache[blocks].reshape(-1, self.num_kv_heads, self.head_dim)[:n]  # [n, KVH, D]

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
        k = self._gather(k_cache, block_table, ctx, block_size).transpose(0, 1)  # [KVH, ctx, D]
        v = self._gather(v_cache, block_table, ctx, block_size).transpose(0, 1)
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
        self,
        q: torch.Tensor,
        out: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> None:
        idx = meta.decode_indices
        rows = meta.query_start_loc[idx].long()  # each decode's single query row
        ctx = meta.context_lens[idx]  # [Bd]
        max_ctx = int(ctx.max())
        nb = -(-max_ctx // meta.block_size)
        tables = meta.block_tables[idx, :nb]  # [Bd, nb]
        bd = tables.shape[0]
        k = k_cache[tables].reshape(bd, nb * meta.block_size, self.num_kv_heads, self.head_dim)
        v = v_cache[tables].reshape(bd, nb * meta.block_size, self.num_kv_heads, self.head_dim)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [Bd, KVH, L, D]
        mask = torch.arange(nb * meta.block_size, device=q.device)[None, :] < ctx[:, None]  # [Bd, L]
        qd = q[rows].unsqueeze(2)  # [Bd, H, 1, D]
        o = F.scaled_dot_product_attention(
            qd, k, v, attn_mask=mask[:, None, None, :], scale=self.scale, enable_gqa=True
        )
        out[rows] = o.squeeze(2)
