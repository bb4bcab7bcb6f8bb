"""A short chunk after a cached prefix (a speculative verify of 1 + k tokens) runs as k + 1 decode rows:
what k + 1 one-token decode steps at those positions compute, for fp32 and bf16, over plain and 8-bit
caches: bit for bit in the native backend (its kernel computes each row alone), to rounding in the
torch backend (its padded batched matmuls sum in an order that depends on the batch's widest context,
with or without speculation); and its metadata says so (rows, per-row context, shared table)."""

from __future__ import annotations

import math

import pytest
import torch

from nanoserve.model import native_kernels
from nanoserve.model.attention import (
    CpuNativeAttentionBackend,
    StepLayout,
    TorchAttentionBackend,
    torch_backend,
)
from nanoserve.model.attention.kv_cache import allocate_kv_caches, write_kv


def _backends(kvh, g, d, dtype):
    dims = (kvh * g, kvh, d, d**-0.5)
    out = [TorchAttentionBackend(*dims, dtype=dtype)]
    ext = native_kernels.load_native_kernels()
    if ext is not None:
        out.append(CpuNativeAttentionBackend(*dims, dtype=dtype, native_ext=ext))
    return out


def _layout(seqs, tables, bs):
    """StepLayout for (ctx, n_q) per sequence over the given block tables."""
    starts, slots = [0], []
    for (ctx, n_q), table in zip(seqs, tables, strict=True):
        starts.append(starts[-1] + n_q)
        slots += [table[p // bs] * bs + p % bs for p in range(ctx - n_q, ctx)]
    return StepLayout(starts, [ctx for ctx, _ in seqs], tables, slots, bs)


def _pool(seqs, bs, kvh, d, dtype, kv_dtype, gen):
    """Block tables for `seqs` and a pool of random K/V (every slot written, quantized if kv_dtype is)."""
    need = [math.ceil(ctx / bs) for ctx, _ in seqs]
    num_blocks = sum(need) + 1
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables = [[perm.pop() for _ in range(nb)] for nb in need]
    (kc, vc), = allocate_kv_caches(1, kvh, num_blocks, bs, d, dtype, kv_dtype, torch.device("cpu"))
    slots = torch.arange(num_blocks * bs)
    write_kv(kc, torch.randn(len(slots), kvh, d, generator=gen).to(dtype), slots)
    write_kv(vc, torch.randn(len(slots), kvh, d, generator=gen).to(dtype), slots)
    return tables, kc, vc


@pytest.mark.parametrize("kv_dtype", ["auto", "int8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bs,kvh,g,d", [(4, 2, 3, 16), (16, 2, 7, 64), (16, 1, 8, 128)])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_a_verify_chunk_equals_k_plus_1_single_token_decodes_bitwise(k, bs, kvh, g, d, dtype, kv_dtype):
    """A step with a verify chunk of k + 1 tokens beside a plain decode and a long prefill chunk: each of
    the chunk's rows equals a one-token decode step at its position over the same cache, exactly."""
    gen = torch.Generator().manual_seed(k)
    ctx = 3 * bs + 2  # the chunk crosses a block boundary for every k
    seqs = [(9, 1), (ctx, k + 1), (40, 20)]
    tables, kc0, vc0 = _pool(seqs, bs, kvh, d, dtype, kv_dtype, gen)
    layout = _layout(seqs, tables, bs)
    t = layout.query_start[-1]
    q = torch.randn(t, kvh * g, d, generator=gen).to(dtype)  # [T, H, D]
    k_new = torch.randn(t, kvh, d, generator=gen).to(dtype)  # [T, KVH, D]
    v_new = torch.randn(t, kvh, d, generator=gen).to(dtype)
    chunk = range(layout.query_start[1], layout.query_start[2])
    for backend in _backends(kvh, g, d, dtype):
        kc, vc = _clone(kc0), _clone(vc0)
        out = backend.forward(q, k_new, v_new, kc, vc, backend.build_metadata(layout))
        for i, row in enumerate(chunk):
            # the decode step that a speculation-off run makes at the chunk's i-th position
            one = _layout([(ctx - k + i, 1)], [tables[1]], bs)
            want = backend.forward(q[row : row + 1], None, None, kc, vc, backend.build_metadata(one))
            if backend.name == "cpu_native":
                assert torch.equal(out[row], want[0]), i
            else:
                torch.testing.assert_close(out[row], want[0], msg=f"{backend.name} row {i}")


def _clone(cache):
    if isinstance(cache, torch.Tensor):
        return cache.clone()
    return type(cache)(cache.codes.clone(), cache.scales.clone())


def test_short_chunks_become_decode_rows_with_their_own_context_and_the_shared_table():
    bs = 4
    # a decode, a verify chunk of 4 after 10 cached tokens, a long prefill chunk, a 2-token chunk
    seqs = [(9, 1), (14, 4), (40, 20), (6, 2)]
    tables = [[3, 1, 0], [5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [19, 20]]
    layout = _layout(seqs, tables, bs)
    assert torch_backend.DECODE_ROWS_MAX_QUERY_LEN >= 4
    meta = CpuNativeAttentionBackend(4, 2, 16, 0.25, native_ext=object()).build_metadata(layout)
    b = meta.batch
    assert b.decode_rows.tolist() == [0, 1, 2, 3, 4, 25, 26]
    assert meta.decode_ctx_lens.tolist() == [9, 11, 12, 13, 14, 5, 6], "row i of the chunk: its own position"
    assert b.decode_tables.tolist() == [
        [3, 1, 0, 0], [5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8], [19, 20, 0, 0], [19, 20, 0, 0]
    ]
    assert b.prefill_spans == [(5, 25, 40)]
    torch_meta = TorchAttentionBackend(4, 2, 16, 0.25).build_metadata(layout)
    assert torch.equal(torch_meta.batch.decode_tables, b.decode_tables)
    # row 1 (the chunk's first query, position 10) sees 11 keys, not the chunk's later ones
    bias = torch_meta.decode_bias[1, 0]
    assert (bias[:11] == 0).all() and torch.isinf(bias[11:]).all()
    # a step of decodes and verify chunks only: every row is a decode row, no row gather
    only = _layout([(9, 1), (14, 4)], tables[:2], bs)
    native = CpuNativeAttentionBackend(4, 2, 16, 0.25, native_ext=object())
    assert native.build_metadata(only).batch.decode_rows is None


def test_chunks_longer_than_the_limit_stay_prefill_chunks(monkeypatch):
    monkeypatch.setattr(torch_backend, "DECODE_ROWS_MAX_QUERY_LEN", 1)
    layout = _layout([(9, 1), (14, 4)], [[3, 1, 0], [5, 6, 7, 8]], 4)
    b = TorchAttentionBackend(4, 2, 16, 0.25).build_metadata(layout).batch
    assert b.decode_rows.tolist() == [0] and b.prefill_spans == [(1, 5, 14)]


def test_a_chunk_over_a_short_context_runs_as_decode_rows(monkeypatch):
    """A prompt of up to DECODE_ROWS_MAX_CONTEXT tokens (cached ones included) is decode rows whatever
    its length; past it, or over a longer context, a chunk longer than the query limit is prefill."""
    monkeypatch.setattr(torch_backend, "DECODE_ROWS_MAX_CONTEXT", 24)
    bs = 4
    short = _layout([(24, 24)], [list(range(6))], bs)  # 24 queries over a 24-token context
    b = TorchAttentionBackend(4, 2, 16, 0.25).build_metadata(short).batch
    assert b.prefill_spans == [] and b.decode_tables.shape[0] == 24
    longer = _layout([(25, 25), (30, 20)], [list(range(7)), list(range(7, 15))], bs)
    b = TorchAttentionBackend(4, 2, 16, 0.25).build_metadata(longer).batch
    assert b.prefill_spans == [(0, 25, 25), (25, 45, 30)]
