"""Attention over the paged KV cache: the reference PyTorch backend (any device).

A step's tokens are packed flat: sequence i owns rows query_start_loc[i]:query_start_loc[i+1] of
q/k/v. Its new K/V go to the cache slots in slot_mapping; then each query attends over everything
cached for its sequence up to its own position (cached context + the causal part of its chunk).
On CPU, decodes go through one native kernel call per layer (native_kernels.py) when it builds.

Cache layout per layer: [KVH, num_blocks, block_size, D], so gathering a batch's blocks with one
index op gives [KVH, B, L, D]: (kv head, sequence) fold into one batch dimension of a plain batched
matmul with no copy. All decodes (one query each) run as one padded, masked batch: gather, two
matmuls and a softmax per layer, whatever the batch size; the runner builds the padded block table
and the additive mask once per step. Prefill chunks run one masked batched-matmul attention each
(`scaled_dot_product_attention` for long ones).

A faster backend (e.g. CUDA kernels) implements the same `forward` over the same metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# A prefill chunk whose attention scores (queries x heads per kv head x context) exceed this goes
# through SDPA (which never materialises them); shorter ones through two batched matmuls.
PREFILL_MATMUL_MAX_SCORES = 1 << 22


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
        n_q, kvh, d = q.shape[0], self.num_kv_heads, self.head_dim
        g = self.num_heads // kvh
        blocks = block_table[: -(-ctx // block_size)]
        k = k_cache[:, blocks].flatten(1, 2)[:, :ctx]  # [KVH, ctx, D]
        v = v_cache[:, blocks].flatten(1, 2)[:, :ctx]
        if n_q * g * ctx > PREFILL_MATMUL_MAX_SCORES:  # long chunks: SDPA never holds all scores
            qh = q.transpose(0, 1)  # [H, n_q, D]
            mask = None if n_q == ctx else self._causal_bias(n_q, ctx, q.device, torch.bool)
            # 4-D inputs: with 3-D ones CPU SDPA takes its unfused math path (~6x slower at 512 tokens).
            o = F.scaled_dot_product_attention(
                qh[None], k[None], v[None], attn_mask=mask, is_causal=mask is None, scale=self.scale,
                enable_gqa=True,
            )[0]
            return o.transpose(0, 1)
        # Short chunks: two batched matmuls over (kv head) with its G query heads stacked as rows are ~3x
        # faster than CPU SDPA here. Rows are ordered (position, g): q's own layout, no copy for the view.
        qg = (q * self.scale).view(n_q, kvh, g, d).transpose(0, 1).reshape(kvh, n_q * g, d)
        scores = torch.bmm(qg, k.transpose(1, 2)).view(kvh, n_q, g, ctx)
        scores.add_(self._causal_bias(n_q, ctx, q.device, q.dtype)[None, :, None, :])
        probs = torch.softmax(scores, dim=-1).view(kvh, n_q * g, ctx)
        return torch.bmm(probs, v).view(kvh, n_q, g, d).transpose(0, 1).reshape(n_q, kvh * g, d)

    @staticmethod
    def _causal_bias(n_q: int, ctx: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[n_q, ctx]: query i sits at position ctx - n_q + i and sees keys 0..that position.

        bool dtype: True where allowed (SDPA's mask); float: 0 where allowed, -inf elsewhere."""
        q_pos = torch.arange(ctx - n_q, ctx, device=device)
        allowed = torch.arange(ctx, device=device)[None, :] <= q_pos[:, None]
        if dtype == torch.bool:
            return allowed
        return torch.zeros((n_q, ctx), dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))

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
