"""Paged decode attention in Triton: one query token per row, over that row's blocks of the cache.

One program per (row, kv head, partition) handles the G query heads that share the kv head (GQA: heads
kv_head * G .. kv_head * G + G - 1, padded to 16 rows so the scores are one tl.dot), streaming the
partition's tokens in tiles of BLOCK_N through the block table (one block id per token, so any block
size works) with an online softmax in float32. Long contexts are split (split-K): with more than one
partition each program writes its partial max, sum and unnormalised output, and a second kernel
combines the partitions of each (row, head); with one partition the first kernel writes the output.

Rows are whatever the backend calls decode rows: a one-token decode, or one query of a short chunk with
its own context length (causal within the chunk). A quantized cache (kv_cache.QuantizedKV) is read as
codes and dequantized per token with its float32 scale as the tile is loaded.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# Every tl.dot dimension must be at least 16 on a GPU: query heads of one kv head are padded to it, and
# so are small head dims and key tiles.
MIN_DOT = 16


@triton.jit
def _decode_partition_kernel(
    q_ptr, k_ptr, v_ptr, k_scale_ptr, v_scale_ptr, out_ptr,
    part_max_ptr, part_sum_ptr, part_out_ptr,
    row_ids_ptr, row_tables_ptr, row_ctx_ptr,
    stride_q_t, stride_q_h,
    stride_k_h, stride_k_b, stride_k_s,
    stride_v_h, stride_v_b, stride_v_s,
    stride_ks_h, stride_ks_b,
    stride_vs_h, stride_vs_b,
    stride_o_t, stride_o_h,
    stride_table,
    scale_log2,
    num_partitions,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, PARTITION_TOKENS: tl.constexpr,
    QUANTIZED: tl.constexpr, DOT_FP32: tl.constexpr, SPLIT: tl.constexpr,
):
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    ctx = tl.load(row_ctx_ptr + row)
    q_row = tl.load(row_ids_ptr + row)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM_PAD)
    g_ok = g < GROUP
    d_ok = d < HEAD_DIM
    heads = kv_head * GROUP + g  # [GROUP_PAD]
    q = tl.load(
        q_ptr + q_row * stride_q_t + heads[:, None] * stride_q_h + d[None, :],
        mask=g_ok[:, None] & d_ok[None, :], other=0.0,
    ).to(tl.float32)  # [GROUP_PAD, HEAD_DIM_PAD]
    # Softmax in base 2: scores scaled by scale * log2(e), so exp2 gives exp of the real scores.
    q = q * scale_log2
    if not DOT_FP32:
        q = q.to(q_ptr.dtype.element_ty)  # 16-bit dots, float32 accumulation

    m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], dtype=tl.float32)

    kv_head_64 = kv_head.to(tl.int64)  # a layer's cache can pass 2**31 elements
    k_base = k_ptr + kv_head_64 * stride_k_h
    v_base = v_ptr + kv_head_64 * stride_v_h
    ks_base = k_scale_ptr + kv_head_64 * stride_ks_h
    vs_base = v_scale_ptr + kv_head_64 * stride_vs_h
    start = part * PARTITION_TOKENS
    end = tl.minimum(start + PARTITION_TOKENS, ctx)
    n = tl.arange(0, BLOCK_N)
    for tile in range(start, end, BLOCK_N):
        pos = tile + n  # [BLOCK_N] token positions
        n_ok = pos < end
        block = tl.load(row_tables_ptr + row * stride_table + pos // BLOCK_SIZE, mask=n_ok, other=0)
        block = block.to(tl.int64)  # block * stride can pass 2**31 in a large pool
        offset = pos % BLOCK_SIZE
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + block[:, None] * stride_k_b + offset[:, None] * stride_k_s + d[None, :],
                    mask=kv_mask, other=0.0)  # [BLOCK_N, HEAD_DIM_PAD]
        v = tl.load(v_base + block[:, None] * stride_v_b + offset[:, None] * stride_v_s + d[None, :],
                    mask=kv_mask, other=0.0)
        if QUANTIZED:
            k_s = tl.load(ks_base + block * stride_ks_b + offset, mask=n_ok, other=0.0)  # [BLOCK_N]
            v_s = tl.load(vs_base + block * stride_vs_b + offset, mask=n_ok, other=0.0)
            k = k.to(tl.float32) * k_s[:, None]
            v = v.to(tl.float32) * v_s[:, None]
            if not DOT_FP32:
                k = k.to(q_ptr.dtype.element_ty)
                v = v.to(q_ptr.dtype.element_ty)
        if DOT_FP32:
            s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")  # [GROUP_PAD, BLOCK_N]
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DOT_FP32:
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    if SPLIT:
        # Partitions past this row's context ran no tile; the reduce kernel never reads them.
        ml = (row * (tl.num_programs(1) * GROUP) + heads) * num_partitions + part  # [GROUP_PAD] in [Bd, H, P]
        tl.store(part_max_ptr + ml, m_i, mask=g_ok)
        tl.store(part_sum_ptr + ml, l_i, mask=g_ok)
        tl.store(part_out_ptr + ml[:, None] * HEAD_DIM_PAD + d[None, :], acc, mask=g_ok[:, None])
    else:
        o = acc / l_i[:, None]
        tl.store(
            out_ptr + q_row * stride_o_t + heads[:, None] * stride_o_h + d[None, :],
            o.to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :],
        )


@triton.jit
def _decode_reduce_kernel(
    out_ptr, part_max_ptr, part_sum_ptr, part_out_ptr,
    row_ids_ptr, row_ctx_ptr,
    stride_o_t, stride_o_h,
    num_partitions,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    PARTITION_TOKENS: tl.constexpr, PARTS_PAD: tl.constexpr,
):
    row = tl.program_id(0)
    head = tl.program_id(1)
    ctx = tl.load(row_ctx_ptr + row)
    q_row = tl.load(row_ids_ptr + row)
    used = tl.cdiv(ctx, PARTITION_TOKENS)
    p = tl.arange(0, PARTS_PAD)
    d = tl.arange(0, HEAD_DIM_PAD)
    p_ok = p < used
    base = (row * tl.num_programs(1) + head) * num_partitions
    m = tl.load(part_max_ptr + base + p, mask=p_ok, other=float("-inf"))  # [PARTS_PAD]
    l_p = tl.load(part_sum_ptr + base + p, mask=p_ok, other=0.0)
    o = tl.load(part_out_ptr + (base + p)[:, None] * HEAD_DIM_PAD + d[None, :], mask=p_ok[:, None], other=0.0)
    m_all = tl.max(m, axis=0)
    w = tl.where(p_ok, tl.exp2(m - m_all), 0.0)  # [PARTS_PAD] each partition's weight
    total = tl.sum(w * l_p, axis=0)
    res = tl.sum(w[:, None] * o, axis=0) / total  # [HEAD_DIM_PAD]
    tl.store(out_ptr + q_row * stride_o_t + head * stride_o_h + d, res.to(out_ptr.dtype.element_ty),
             mask=d < HEAD_DIM)


def paged_decode_attention(
    out: torch.Tensor,
    q: torch.Tensor,
    k_codes: torch.Tensor,
    v_codes: torch.Tensor,
    k_scales: torch.Tensor | None,
    v_scales: torch.Tensor | None,
    row_ids: torch.Tensor,
    row_tables: torch.Tensor,
    row_ctx: torch.Tensor,
    max_ctx: int,
    scale: float,
    partition_tokens: int,
    dot_fp32: bool,
) -> None:
    """Writes out[row_ids] ([Bd, H, D] rows of out [T, H, D]) from q [T, H, D] over the paged cache.

    k/v_codes [KVH, num_blocks, block_size, D] (the model's dtype, or 8-bit codes with k/v_scales
    [KVH, num_blocks, block_size] float32); row_tables [Bd, nb] int32 blocks of each row's sequence,
    row_ctx [Bd] int32 tokens each row attends to (max_ctx: their largest, a host int). Contexts longer
    than partition_tokens are split over partitions and reduced (split-K). dot_fp32: every dot in
    float32 (an fp32 model, or the interpreter, whose 16-bit dots are wrong)."""
    num_rows = row_ids.shape[0]
    if num_rows == 0:
        return
    kvh, _, block_size, head_dim = k_codes.shape
    num_heads = q.shape[1]
    group = num_heads // kvh
    head_dim_pad = max(MIN_DOT, triton.next_power_of_2(head_dim))
    num_partitions = triton.cdiv(max(max_ctx, 1), partition_tokens)
    split = num_partitions > 1
    quantized = k_scales is not None
    block_n = max(MIN_DOT, min(triton.next_power_of_2(partition_tokens), 64 if head_dim_pad <= 128 else 32))
    if split:
        part_max = torch.empty((num_rows, num_heads, num_partitions), dtype=torch.float32, device=q.device)
        part_sum = torch.empty_like(part_max)
        part_out = torch.empty((num_rows, num_heads, num_partitions, head_dim_pad), dtype=torch.float32,
                               device=q.device)  # [Bd, H, P, D_pad] unnormalised partial outputs
    else:
        part_max = part_sum = part_out = out  # unused
    k_s = k_scales if quantized else out
    v_s = v_scales if quantized else out
    _decode_partition_kernel[(num_rows, kvh, num_partitions)](
        q, k_codes, v_codes, k_s, v_s, out,
        part_max, part_sum, part_out,
        row_ids, row_tables, row_ctx,
        q.stride(0), q.stride(1),
        k_codes.stride(0), k_codes.stride(1), k_codes.stride(2),
        v_codes.stride(0), v_codes.stride(1), v_codes.stride(2),
        k_s.stride(0) if quantized else 0, k_s.stride(1) if quantized else 0,
        v_s.stride(0) if quantized else 0, v_s.stride(1) if quantized else 0,
        out.stride(0), out.stride(1),
        row_tables.stride(0),
        scale * LOG2E,
        num_partitions,
        GROUP=group, GROUP_PAD=max(MIN_DOT, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, PARTITION_TOKENS=partition_tokens,
        QUANTIZED=quantized, DOT_FP32=dot_fp32, SPLIT=split,
    )
    if split:
        _decode_reduce_kernel[(num_rows, num_heads)](
            out, part_max, part_sum, part_out,
            row_ids, row_ctx,
            out.stride(0), out.stride(1),
            num_partitions,
            HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad,
            PARTITION_TOKENS=partition_tokens, PARTS_PAD=triton.next_power_of_2(num_partitions),
        )
