"""The reference attention backend: paged attention in a few large PyTorch ops, on any device.

Cache layout per layer: [KVH, num_blocks, block_size, D], so gathering a batch's blocks with one
index op gives [KVH, B, L, D]: (kv head, sequence) fold into one batch dimension of a plain batched
matmul with no copy. All decodes (one query each) run as one padded, masked batch: gather, two
matmuls and a softmax per layer, whatever the batch size; `build_metadata` builds the padded block
table and the additive mask once per step. Prefill chunks run one masked batched-matmul attention
each (`scaled_dot_product_attention` for long ones). A quantized cache (kv_cache.py) is dequantized
to q's dtype block by block as it is gathered, never as a whole.

A short chunk (at most DECODE_ROWS_MAX_QUERY_LEN queries: a speculative verify of 1 + k tokens, the
tail of a chunked prefill; or any chunk of a context of at most DECODE_ROWS_MAX_CONTEXT tokens: a
short prompt) runs as that many decode rows instead: row i of an n-query chunk over a
ctx-token context attends to its first ctx - n + 1 + i tokens through the sequence's block table,
which is causal attention within the chunk and exactly what a one-token decode at that position
computes (so greedy output with speculation matches speculation off bit for bit, bf16 included), in
the batched decode path rather than one gather + attention per chunk and layer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nanoserve.model.attention.backend import AttentionBackend, AttentionMetadata, GraphMetadata, StepLayout
from nanoserve.model.attention.kv_cache import KVStore, gather_kv, write_kv

# Prefill attention runs as two batched matmuls over row groups of at most PREFILL_QUERY_ROWS queries,
# each group against only the keys its last query can see: causal, so a 512-token prompt computes
# 5/8 of the full score matrix, not all of it (Qwen2.5-0.5B shape, 2 threads: TTFT 487 -> 478 ms at
# 512 tokens, 1179 -> 979 ms at 1024, where SDPA took the whole chunk before). A group's scores
# (rows x heads per kv head x context) stay under PREFILL_MATMUL_MAX_SCORES; where even
# PREFILL_MIN_QUERY_ROWS rows would not, SDPA takes the chunk (it never materialises the scores).
PREFILL_MATMUL_MAX_SCORES = 1 << 22
PREFILL_QUERY_ROWS = 128
PREFILL_MIN_QUERY_ROWS = 16
# A chunk of at most this many queries runs as decode rows (see above); 1: only one-token decodes do.
# 16, not 8: a 9-16-query forward was 1.3-1.5x faster as decode rows on the CPU (demo fp32 model 0.95 vs
# 1.41 ms at 9 queries; SmolLM2 bf16 26 vs 38 ms), so a short prompt, or a prefill chunk carrying
# speculative drafts, does not fall off the decode path; at 24 queries the two paths were even.
DECODE_ROWS_MAX_QUERY_LEN = 16
# A longer chunk also runs as decode rows while its whole context (cached tokens and the chunk) is at
# most this long: each row's attention then reads at most 64 keys, and the step stays on the decode
# path, which the fused native decode step takes. Measured on the demo fp32 model, batch 1 (prompts of
# 17-34 tokens): a prompt step through the fused step 0.2-0.3 ms instead of 0.8-1.2 ms op by op.
DECODE_ROWS_MAX_CONTEXT = 64


@functools.lru_cache(maxsize=16)
def _diagonal_bias(m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[m, m]: 0 on and below the diagonal, -inf above (m queries against their own m positions)."""
    return torch.full((m, m), float("-inf"), dtype=dtype, device=device).triu_(1)


@dataclass
class PagedBatch:
    """A step split the way this backend (and the CPU native one) runs it, built once per step."""

    block_size: int
    # The decode rows (one-token decodes and every query of a short chunk) as one padded batch; all
    # None when the step has none.
    decode_rows: torch.Tensor | None  # [Bd] int64 rows of q; None also when every row is a decode row
    decode_tables: torch.Tensor | None  # [Bd, nb] int64 blocks of each row's sequence, padded with block 0
    # The longer prefill chunks, one attention each.
    prefill_spans: list[tuple[int, int, int]]  # (first row, end row, context_len) of each chunk, host ints
    prefill_tables: torch.Tensor | None  # [P, max_blocks] int64 blocks, padded with block 0


def runs_as_decode_rows(query_len: int, context_len: int) -> bool:
    """Whether a chunk of query_len tokens ending a context of context_len runs as decode rows."""
    return query_len <= DECODE_ROWS_MAX_QUERY_LEN or context_len <= DECODE_ROWS_MAX_CONTEXT


def split_decode_rows(layout: StepLayout) -> tuple[list[int], list[int], list[int], list[int]]:
    """How every backend splits a step: chunks of at most DECODE_ROWS_MAX_QUERY_LEN queries, or whose
    context is at most DECODE_ROWS_MAX_CONTEXT tokens, become decode rows, the others prefill chunks.
    Returns (rows [Bd]: the q row of each decode row, row_seqs [Bd]: its sequence, row_ctx [Bd]: the
    tokens it attends to, up to and including its own position, chunks: the sequences run as prefill)."""
    starts, ctx = layout.query_start, layout.context_lens
    rows: list[int] = []
    row_seqs: list[int] = []
    row_ctx: list[int] = []
    chunks: list[int] = []
    for i in range(layout.num_seqs):
        n = layout.query_len(i)
        if runs_as_decode_rows(n, ctx[i]):
            rows += range(starts[i], starts[i + 1])
            row_seqs += [i] * n
            row_ctx += range(ctx[i] - n + 1, ctx[i] + 1)
        else:
            chunks.append(i)
    return rows, row_seqs, row_ctx, chunks


def paged_batch(layout: StepLayout, device: torch.device) -> tuple[PagedBatch, np.ndarray | None]:
    """The step's PagedBatch, and the decode rows' context lengths ([Bd] int64, host; None: no rows)."""
    bs, starts, ctx = layout.block_size, layout.query_start, layout.context_lens
    rows, row_seqs, row_ctx, prefills = split_decode_rows(layout)
    decode_rows = decode_tables = decode_ctx = None
    if row_seqs:
        decode_ctx = np.asarray(row_ctx, dtype=np.int64)  # [Bd]
        nb = -(-int(decode_ctx.max()) // bs)
        decode_tables = _padded([layout.block_tables[i] for i in row_seqs], nb, device)
        if prefills:
            decode_rows = torch.tensor(rows, dtype=torch.int64, device=device)
    prefill_tables = None
    if prefills:
        nb = max(-(-ctx[i] // bs) for i in prefills)
        prefill_tables = _padded([layout.block_tables[i] for i in prefills], nb, device)
    spans = [(starts[i], starts[i + 1], ctx[i]) for i in prefills]
    return PagedBatch(bs, decode_rows, decode_tables, spans, prefill_tables), decode_ctx


def _padded(tables: list[list[int]], width: int, device: torch.device) -> torch.Tensor:
    """[len(tables), width] int64: each table's first `width` blocks, padded with block 0."""
    arr = np.zeros((len(tables), width), dtype=np.int64)
    for i, t in enumerate(tables):
        t = t[:width]
        arr[i, : len(t)] = t
    return torch.from_numpy(arr).to(device)


@dataclass
class TorchAttentionMetadata(AttentionMetadata):
    batch: PagedBatch
    decode_bias: torch.Tensor | None  # [Bd, 1, nb * block_size] additive mask (0 or -inf), q's dtype


class TorchAttentionBackend(AttentionBackend):
    """Correct, device-agnostic paged attention in a few large tensor ops."""

    name = "torch"

    def build_metadata(self, layout: StepLayout) -> TorchAttentionMetadata:
        batch, decode_ctx = paged_batch(layout, self.device)
        bias = None
        if decode_ctx is not None:
            width = batch.decode_tables.shape[1] * layout.block_size
            masked = np.arange(width)[None, :] >= decode_ctx[:, None]  # [Bd, L]: padding past each context
            bias = torch.zeros(masked.shape, dtype=self.dtype)
            bias.masked_fill_(torch.from_numpy(masked), float("-inf"))
            bias = bias.unsqueeze(1).to(self.device)
        return TorchAttentionMetadata(self._slots(layout), batch, bias)

    def graph_metadata(self, max_batch: int, max_blocks: int, block_size: int) -> GraphMetadata:
        from nanoserve.model.attention.torch_graph import TorchGraphMetadata

        return TorchGraphMetadata(max_batch, max_blocks, block_size, self.dtype, self.device)

    def _slots(self, layout: StepLayout) -> torch.Tensor:
        return torch.tensor(layout.slot_mapping, dtype=torch.int64, device=self.device)  # [T]

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None,
        v: torch.Tensor | None,
        k_cache: KVStore,
        v_cache: KVStore,
        meta: TorchAttentionMetadata,
    ) -> torch.Tensor:
        if k is not None:
            write_kv(k_cache, k, meta.slot_mapping)
            write_kv(v_cache, v, meta.slot_mapping)
        batch = meta.batch
        if not batch.prefill_spans:
            return self._decode(q, k_cache, v_cache, meta)
        out = torch.empty_like(q)  # [T, H, D]
        if batch.decode_tables is not None:
            out[batch.decode_rows] = self._decode(q[batch.decode_rows], k_cache, v_cache, meta)
        for j, (s, e, ctx) in enumerate(batch.prefill_spans):
            out[s:e] = self._prefill(q[s:e], k_cache, v_cache, batch.prefill_tables[j], ctx, batch.block_size)
        return out

    def _prefill(
        self,
        q: torch.Tensor,
        k_cache: KVStore,
        v_cache: KVStore,
        block_table: torch.Tensor,
        ctx: int,
        block_size: int,
    ) -> torch.Tensor:
        """q [n_q, H, D]: the last n_q positions of a ctx-token context -> [n_q, H, D], causal."""
        n_q, kvh, d = q.shape[0], self.num_kv_heads, self.head_dim
        g = self.num_heads // kvh
        blocks = block_table[: -(-ctx // block_size)]
        k = gather_kv(k_cache, blocks, q.dtype).flatten(1, 2)[:, :ctx]  # [KVH, ctx, D]
        v = gather_kv(v_cache, blocks, q.dtype).flatten(1, 2)[:, :ctx]
        rows = min(PREFILL_QUERY_ROWS, PREFILL_MATMUL_MAX_SCORES // (g * ctx))
        if rows < PREFILL_MIN_QUERY_ROWS:  # very long contexts: SDPA never holds all scores
            qh = q.transpose(0, 1)  # [H, n_q, D]
            mask = None if n_q == ctx else self._causal_mask(n_q, ctx, q.device)
            # 4-D inputs: with 3-D ones CPU SDPA takes its unfused math path (much slower).
            o = F.scaled_dot_product_attention(
                qh[None], k[None], v[None], attn_mask=mask, is_causal=mask is None, scale=self.scale,
                enable_gqa=True,
            )[0]
            return o.transpose(0, 1)
        # Two batched matmuls over (kv head) with its G query heads stacked as rows measured faster than
        # CPU SDPA. Rows are ordered (position, g): q's own layout, no copy for the view.
        qs = q * self.scale
        out = torch.empty_like(q) if n_q > rows else None  # [n_q, H, D]
        for s in range(0, n_q, rows):
            e = min(s + rows, n_q)
            m, c = e - s, ctx - n_q + e  # these m queries are the last m positions of a c-token context
            qg = qs[s:e].view(m, kvh, g, d).transpose(0, 1).reshape(kvh, m * g, d)
            scores = torch.bmm(qg, k[:, :c].transpose(1, 2)).view(kvh, m, g, c)
            probs = self._causal_softmax(scores, m).view(kvh, m * g, c)
            o = torch.bmm(probs, v[:, :c]).view(kvh, m, g, d).transpose(0, 1).reshape(m, kvh * g, d)
            if out is None:
                return o
            out[s:e] = o
        return out

    @staticmethod
    def _causal_softmax(scores: torch.Tensor, m: int) -> torch.Tensor:
        """scores [KVH, m, G, c] of m queries, the last m positions of a c-token context -> causal softmax."""
        c = scores.shape[-1]
        # keys 0..c-m-1 are before every query of the group: only the last m columns need the mask
        scores[..., c - m :].add_(_diagonal_bias(m, scores.dtype, scores.device)[None, :, None, :])
        return torch.softmax(scores, dim=-1)

    @staticmethod
    def _causal_mask(n_q: int, ctx: int, device: torch.device) -> torch.Tensor:
        """[n_q, ctx] bool, True where allowed (SDPA's mask): query i sits at position ctx - n_q + i and
        sees keys 0..that position."""
        q_pos = torch.arange(ctx - n_q, ctx, device=device)
        return torch.arange(ctx, device=device)[None, :] <= q_pos[:, None]

    def _decode(
        self, q: torch.Tensor, k_cache: KVStore, v_cache: KVStore, meta: TorchAttentionMetadata
    ) -> torch.Tensor:
        """q [Bd, H, D] (one query per decode row) -> [Bd, H, D] over each row's cached tokens."""
        kvh, d = self.num_kv_heads, self.head_dim
        bd, h = q.shape[0], self.num_heads
        tables = meta.batch.decode_tables  # [Bd, nb]
        k = gather_kv(k_cache, tables, q.dtype).view(kvh, bd, -1, d)  # [KVH, Bd, L, D]
        v = gather_kv(v_cache, tables, q.dtype).view(kvh, bd, -1, d)
        # Query heads of one kv head are adjacent (head = kv_head * G + g), as in transformers' repeat_kv.
        qg = (q * self.scale).view(bd, kvh, h // kvh, d).transpose(0, 1)  # [KVH, Bd, G, D]
        scores = torch.matmul(qg, k.transpose(2, 3))  # [KVH, Bd, G, L]
        probs = torch.softmax(scores.add_(meta.decode_bias), dim=-1)
        o = torch.matmul(probs, v)  # [KVH, Bd, G, D]
        return o.transpose(0, 1).reshape(bd, h, d)
