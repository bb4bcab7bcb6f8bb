"""Prefill and chunked-prefill attention in Triton, over the paged cache (flash-attention style).

A step's prefill chunks are packed rows of q (StepLayout): chunk j's n_j new tokens sit at positions
ctx_j - n_j .. ctx_j - 1 of its sequence, and their K/V are already in the cache with everything before
them (earlier chunks, prefix-cache hits, which may end mid-block). So every key is read from the cache
through the block table, one block id per token, and no chunk needs its K/V passed separately.

One program per (query tile of BLOCK_M rows of one chunk, query head): it streams the keys up to the
tile's last position in tiles of BLOCK_N with an online softmax in float32. Key tiles wholly before
the tile's first query position need no causal mask and run without one; the rest are masked (key
position <= query position, < ctx). The host lists the (chunk, first query) of every tile once per step
(`prefill_tiles`), so chunks of any length share one launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
BLOCK_M = 64  # queries per program
BLOCK_N = 64  # keys per inner tile


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, k_base, v_base, ks_base, vs_base, table_row, q_pos, tile, ctx,
    stride_k_b, stride_k_s, stride_v_b, stride_v_s, stride_ks_b, stride_vs_b,
    d, d_ok,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL_MASK: tl.constexpr, QUANTIZED: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """One key tile's contribution to the online softmax of a query tile: (acc, l_i, m_i) updated."""
    pos = tile + tl.arange(0, BLOCK_N)  # [BLOCK_N] key positions
    n_ok = pos < ctx
    block = tl.load(table_row + pos // BLOCK_SIZE, mask=n_ok, other=0).to(tl.int64)  # block * stride: > 2**31
    offset = pos % BLOCK_SIZE
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(k_base + block[:, None] * stride_k_b + offset[:, None] * stride_k_s + d[None, :],
                mask=kv_mask, other=0.0)  # [BLOCK_N, HEAD_DIM_PAD]
    v = tl.load(v_base + block[:, None] * stride_v_b + offset[:, None] * stride_v_s + d[None, :],
                mask=kv_mask, other=0.0)
    if QUANTIZED:
        k = k.to(tl.float32) * tl.load(ks_base + block * stride_ks_b + offset, mask=n_ok, other=0.0)[:, None]
        v = v.to(tl.float32) * tl.load(vs_base + block * stride_vs_b + offset, mask=n_ok, other=0.0)[:, None]
        if not DOT_FP32:
            k = k.to(q.dtype)
            v = v.to(q.dtype)
    if DOT_FP32:
        s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")  # [BLOCK_M, BLOCK_N]
    else:
        s = tl.dot(q, tl.trans(k))
    if CAUSAL_MASK:
        s = tl.where((pos[None, :] <= q_pos[:, None]) & n_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if DOT_FP32:
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, k_scale_ptr, v_scale_ptr, out_ptr,
    tile_chunk_ptr, tile_first_ptr, chunk_q_start_ptr, chunk_q_len_ptr, chunk_ctx_ptr, chunk_tables_ptr,
    stride_q_t, stride_q_h,
    stride_k_h, stride_k_b, stride_k_s,
    stride_v_h, stride_v_b, stride_v_s,
    stride_ks_h, stride_ks_b,
    stride_vs_h, stride_vs_b,
    stride_o_t, stride_o_h,
    stride_table,
    scale_log2,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QUANTIZED: tl.constexpr, DOT_FP32: tl.constexpr,
):
    tile_id = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    chunk = tl.load(tile_chunk_ptr + tile_id)
    first = tl.load(tile_first_ptr + tile_id)  # the tile's first query, counted within its chunk
    q_start = tl.load(chunk_q_start_ptr + chunk)
    q_len = tl.load(chunk_q_len_ptr + chunk)
    ctx = tl.load(chunk_ctx_ptr + chunk)

    m = first + tl.arange(0, BLOCK_M)
    m_ok = m < q_len
    q_pos = ctx - q_len + m  # [BLOCK_M] positions of the tile's queries in the sequence
    d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = d < HEAD_DIM
    q_rows = q_start + m
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_q_t + head * stride_q_h + d[None, :],
        mask=m_ok[:, None] & d_ok[None, :], other=0.0,
    ).to(tl.float32)
    q = q * scale_log2  # base-2 softmax: exp2 of these scores is exp of the real ones
    if not DOT_FP32:
        q = q.to(q_ptr.dtype.element_ty)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    table_row = chunk_tables_ptr + chunk * stride_table
    kv_head_64 = kv_head.to(tl.int64)  # a layer's cache can pass 2**31 elements
    k_base = k_ptr + kv_head_64 * stride_k_h
    v_base = v_ptr + kv_head_64 * stride_v_h
    ks_base = k_scale_ptr + kv_head_64 * stride_ks_h
    vs_base = v_scale_ptr + kv_head_64 * stride_vs_h

    # Key tiles that end at or before the tile's first query position: every query sees all of them.
    first_pos = ctx - q_len + first
    unmasked_end = (first_pos // BLOCK_N) * BLOCK_N
    for tile in range(0, unmasked_end, BLOCK_N):
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, k_base, v_base, ks_base, vs_base, table_row, q_pos, tile, ctx,
            stride_k_b, stride_k_s, stride_v_b, stride_v_s, stride_ks_b, stride_vs_b, d, d_ok,
            BLOCK_SIZE, BLOCK_N, False, QUANTIZED, DOT_FP32,
        )
    # The rest, up to the tile's last query (its last row may be past the chunk: padding, not stored).
    end = tl.minimum(ctx, first_pos + BLOCK_M)
    for tile in range(unmasked_end, end, BLOCK_N):
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, k_base, v_base, ks_base, vs_base, table_row, q_pos, tile, ctx,
            stride_k_b, stride_k_s, stride_v_b, stride_v_s, stride_ks_b, stride_vs_b, d, d_ok,
            BLOCK_SIZE, BLOCK_N, True, QUANTIZED, DOT_FP32,
        )

    o = acc / l_i[:, None]
    tl.store(
        out_ptr + q_rows[:, None] * stride_o_t + head * stride_o_h + d[None, :],
        o.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :],
    )


def prefill_tiles(q_lens: list[int], block_m: int = BLOCK_M) -> tuple[list[int], list[int]]:
    """(chunk index, first query within the chunk) of every BLOCK_M-query tile of chunks of q_lens."""
    chunks: list[int] = []
    firsts: list[int] = []
    for j, n in enumerate(q_lens):
        for first in range(0, n, block_m):
            chunks.append(j)
            firsts.append(first)
    return chunks, firsts


def paged_prefill_attention(
    out: torch.Tensor,
    q: torch.Tensor,
    k_codes: torch.Tensor,
    v_codes: torch.Tensor,
    k_scales: torch.Tensor | None,
    v_scales: torch.Tensor | None,
    tile_chunk: torch.Tensor,
    tile_first: torch.Tensor,
    chunk_q_start: torch.Tensor,
    chunk_q_len: torch.Tensor,
    chunk_ctx: torch.Tensor,
    chunk_tables: torch.Tensor,
    scale: float,
    dot_fp32: bool,
) -> None:
    """Writes the chunks' rows of out [T, H, D] from q [T, H, D], causal, over the paged cache.

    k/v_codes [KVH, num_blocks, block_size, D] (model dtype, or 8-bit codes with k/v_scales
    [KVH, num_blocks, block_size] float32). Per chunk (int32): chunk_q_start [P] first row of q,
    chunk_q_len [P] its queries, chunk_ctx [P] its sequence's tokens including them, chunk_tables
    [P, nb] its blocks; tile_chunk / tile_first [NT] from prefill_tiles (BLOCK_M)."""
    num_tiles = tile_chunk.shape[0]
    if num_tiles == 0:
        return
    kvh, _, block_size, head_dim = k_codes.shape
    num_heads = q.shape[1]
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))  # a tl.dot dimension: at least 16 on a GPU
    quantized = k_scales is not None
    k_s = k_scales if quantized else out
    v_s = v_scales if quantized else out
    _prefill_kernel[(num_tiles, num_heads)](
        q, k_codes, v_codes, k_s, v_s, out,
        tile_chunk, tile_first, chunk_q_start, chunk_q_len, chunk_ctx, chunk_tables,
        q.stride(0), q.stride(1),
        k_codes.stride(0), k_codes.stride(1), k_codes.stride(2),
        v_codes.stride(0), v_codes.stride(1), v_codes.stride(2),
        k_s.stride(0) if quantized else 0, k_s.stride(1) if quantized else 0,
        v_s.stride(0) if quantized else 0, v_s.stride(1) if quantized else 0,
        out.stride(0), out.stride(1),
        chunk_tables.stride(0),
        scale * LOG2E,
        GROUP=num_heads // kvh,
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad,
        BLOCK_SIZE=block_size, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N if head_dim_pad <= 128 else 32,
        QUANTIZED=quantized, DOT_FP32=dot_fp32,
    )
