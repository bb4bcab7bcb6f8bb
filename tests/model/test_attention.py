"""The attention backends: both compute plain causal attention over the paged cache on mixed steps,
their metadata holds only what they read, and the engine uses the one EngineArgs asks for."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from nanoserve import LLM, SamplingParams
from nanoserve.config import EngineArgs
from nanoserve.errors import InvalidRequestError
from nanoserve.model import native_kernels
from nanoserve.model.attention import (
    CpuNativeAttentionBackend,
    StepLayout,
    TorchAttentionBackend,
    make_attention_backend,
    selector,
    torch_backend,
)

# (context_len, query_len) per sequence: decodes (query_len 1), a whole prompt, chunks after a cached
# prefix, a one-token context; in scheduler order, decodes and prefills interleaved.
MIXED_STEP = [(9, 1), (37, 37), (1, 1), (40, 5), (23, 1), (16, 3), (64, 1)]


def _random_step(seqs, block_size, kvh, g, d, dtype, seed=0):
    """A step over a pool of random K/V: (layout, q, k, v, k_cache, v_cache) for `seqs`' (ctx, n_q)."""
    gen = torch.Generator().manual_seed(seed)
    need = [math.ceil(ctx / block_size) for ctx, _ in seqs]
    num_blocks = sum(need) + len(seqs) + 1
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables, starts, slots = [], [0], []
    for (ctx, n_q), nb in zip(seqs, need, strict=True):
        extra = len(tables) % 2  # some tables hold a spare block past the context (never read)
        tables.append([perm.pop() for _ in range(nb + extra)])
        starts.append(starts[-1] + n_q)
        slots += [tables[-1][p // block_size] * block_size + p % block_size for p in range(ctx - n_q, ctx)]
    layout = StepLayout(starts, [ctx for ctx, _ in seqs], tables, slots, block_size)
    t = starts[-1]
    k_cache = torch.randn(kvh, num_blocks, block_size, d, generator=gen).to(dtype)
    v_cache = torch.randn(kvh, num_blocks, block_size, d, generator=gen).to(dtype)
    q = torch.randn(t, kvh * g, d, generator=gen).to(dtype)  # [T, H, D]
    k = torch.randn(t, kvh, d, generator=gen).to(dtype)  # [T, KVH, D]
    v = torch.randn(t, kvh, d, generator=gen).to(dtype)
    return layout, q, k, v, k_cache, v_cache


def _reference(q, k_cache, v_cache, layout, scale):
    """Causal attention per sequence in fp32, its K/V read slot by slot: what any backend must compute."""
    kvh, d = k_cache.shape[0], k_cache.shape[-1]
    g, bs = q.shape[1] // kvh, layout.block_size
    out = torch.empty(q.shape, dtype=torch.float32)
    for i, (table, ctx) in enumerate(zip(layout.block_tables, layout.context_lens, strict=True)):
        s, e = layout.query_start[i], layout.query_start[i + 1]
        slots = torch.tensor([table[p // bs] * bs + p % bs for p in range(ctx)])
        k = k_cache.view(kvh, -1, d)[:, slots].float().repeat_interleave(g, dim=0)  # [H, ctx, D]
        v = v_cache.view(kvh, -1, d)[:, slots].float().repeat_interleave(g, dim=0)
        scores = q[s:e].float().transpose(0, 1) @ k.transpose(1, 2) * scale  # [H, n_q, ctx]
        q_pos = torch.arange(ctx - (e - s), ctx)
        scores.masked_fill_(torch.arange(ctx)[None, :] > q_pos[:, None], float("-inf"))
        out[s:e] = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1)
    return out


def _backends(kvh, g, d, dtype):
    dims = (kvh * g, kvh, d, d**-0.5)
    backends = [TorchAttentionBackend(*dims, dtype=dtype)]
    ext = native_kernels.load_native_kernels()
    if ext is not None:
        backends.append(CpuNativeAttentionBackend(*dims, dtype=dtype, native_ext=ext))
    return backends


# short_chunks: as decode rows (the default) or, with DECODE_ROWS_MAX_QUERY_LEN 1, as prefill chunks
@pytest.mark.parametrize("short_chunks", ["decode_rows", "prefill"])
@pytest.mark.parametrize("prefill_path", ["matmul", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size,kvh,g,d", [(4, 2, 3, 16), (16, 1, 8, 64), (8, 4, 1, 32), (1, 2, 2, 16)])
def test_backends_agree_with_reference_attention_on_a_mixed_step(
    short_chunks, prefill_path, dtype, block_size, kvh, g, d, monkeypatch
):
    monkeypatch.setattr(torch_backend, "DECODE_ROWS_MAX_CONTEXT", 0)  # chunks split by length only here
    if short_chunks == "prefill":
        monkeypatch.setattr(torch_backend, "DECODE_ROWS_MAX_QUERY_LEN", 1)
    if prefill_path == "sdpa":
        monkeypatch.setattr(torch_backend, "PREFILL_MATMUL_MAX_SCORES", 0)
    else:  # causal row groups of 3 queries: every prefill chunk of the step is split
        monkeypatch.setattr(torch_backend, "PREFILL_QUERY_ROWS", 3)
        monkeypatch.setattr(torch_backend, "PREFILL_MIN_QUERY_ROWS", 1)
    layout, q, k, v, k_cache, v_cache = _random_step(MIXED_STEP, block_size, kvh, g, d, dtype)
    outs, caches = [], []
    for backend in _backends(kvh, g, d, dtype):
        kc, vc = k_cache.clone(), v_cache.clone()
        outs.append(backend.forward(q, k, v, kc, vc, backend.build_metadata(layout)).float())
        caches.append((kc, vc))
    kc, vc = caches[0]
    slots = torch.tensor(layout.slot_mapping)
    assert torch.equal(kc.view(kvh, -1, d)[:, slots], k.transpose(0, 1)), "new K lands in its slots"
    assert torch.equal(vc.view(kvh, -1, d)[:, slots], v.transpose(0, 1))
    ref = _reference(q, kc, vc, layout, d**-0.5)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for out, (kc2, vc2) in zip(outs, caches, strict=True):
        assert torch.equal(kc2, kc) and torch.equal(vc2, vc), "every backend writes the same cache"
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    if len(outs) == 2:
        torch.testing.assert_close(outs[0], outs[1], rtol=tol, atol=tol)


def test_backends_skip_the_cache_write_when_the_caller_did_it():
    layout, q, k, v, k_cache, v_cache = _random_step(MIXED_STEP, 4, 2, 2, 16, torch.float32)
    for backend in _backends(2, 2, 16, torch.float32):
        kc, vc = k_cache.clone(), v_cache.clone()
        out = backend.forward(q, None, None, kc, vc, backend.build_metadata(layout))
        assert torch.equal(kc, k_cache) and torch.equal(vc, v_cache)
        torch.testing.assert_close(out, _reference(q, k_cache, v_cache, layout, 16**-0.5))


def _fields(meta) -> set[str]:
    return {f.name for f in dataclasses.fields(meta)}


def test_metadata_holds_only_what_each_backend_reads(monkeypatch):
    # one-token decodes only as decode rows here (short chunks: tests/model/attention/test_verify_rows.py)
    monkeypatch.setattr(torch_backend, "DECODE_ROWS_MAX_QUERY_LEN", 1)
    monkeypatch.setattr(torch_backend, "DECODE_ROWS_MAX_CONTEXT", 0)
    layout, *_ = _random_step(MIXED_STEP, 4, 2, 2, 16, torch.bfloat16)
    torch_meta = TorchAttentionBackend(4, 2, 16, 0.25, dtype=torch.bfloat16).build_metadata(layout)
    assert _fields(torch_meta) == {"slot_mapping", "batch", "decode_bias"}
    assert _fields(torch_meta.batch) == {
        "block_size", "decode_rows", "decode_tables", "prefill_spans", "prefill_tables"
    }
    b = torch_meta.batch
    decodes = [i for i, (_, n) in enumerate(MIXED_STEP) if n == 1]
    prefills = [i for i, (_, n) in enumerate(MIXED_STEP) if n > 1]
    assert torch_meta.slot_mapping.dtype == torch.int64
    assert torch_meta.slot_mapping.shape == (layout.query_start[-1],)
    assert b.decode_rows.tolist() == [layout.query_start[i] for i in decodes]
    assert b.decode_tables.dtype == torch.int64 and b.decode_tables.shape == (len(decodes), 64 // 4)
    assert b.prefill_tables.dtype == torch.int64 and b.prefill_tables.shape == (len(prefills), 40 // 4)
    starts = layout.query_start
    assert b.prefill_spans == [(starts[i], starts[i + 1], MIXED_STEP[i][0]) for i in prefills]
    assert torch_meta.decode_bias.shape == (len(decodes), 1, 64)
    assert torch_meta.decode_bias.dtype == torch.bfloat16
    # the one-token context (third sequence, second decode) sees exactly its first key
    assert torch_meta.decode_bias[1, 0, 0] == 0 and torch.isinf(torch_meta.decode_bias[1, 0, 1:]).all()

    native_meta = CpuNativeAttentionBackend(4, 2, 16, 0.25, native_ext=object()).build_metadata(layout)
    assert _fields(native_meta) == {"slot_mapping", "batch", "decode_ctx_lens"}, "no mask for the kernel"
    assert native_meta.decode_ctx_lens.dtype == torch.int64
    assert native_meta.decode_ctx_lens.tolist() == [MIXED_STEP[i][0] for i in decodes]

    # a decode-only step: no row gather, no prefill tensors; a prefill-only step: no decode tensors
    decode_only = StepLayout([0, 1, 2], [5, 9], [[3, 1], [0, 2, 4]], [17, 16], 4)
    meta = TorchAttentionBackend(4, 2, 16, 0.25).build_metadata(decode_only)
    assert meta.batch.decode_rows is None and meta.batch.prefill_tables is None
    assert meta.batch.prefill_spans == [] and meta.batch.decode_tables.tolist() == [[3, 1, 0], [0, 2, 4]]
    prefill_only = StepLayout([0, 5], [5], [[3, 1]], [12, 13, 14, 15, 4], 4)
    meta = TorchAttentionBackend(4, 2, 16, 0.25).build_metadata(prefill_only)
    assert meta.batch.decode_tables is None and meta.batch.decode_rows is None and meta.decode_bias is None


def test_auto_picks_the_native_backend_on_cpu_only_when_the_extension_is_there(monkeypatch):
    dims = (4, 2, 16, torch.float32)
    cpu = torch.device("cpu")
    assert make_attention_backend("auto", cpu, object(), *dims).name == "cpu_native"
    assert make_attention_backend("auto", cpu, None, *dims).name == "torch"
    # On CUDA: triton where it can run (test_triton_attention.py), else torch.
    monkeypatch.setattr(selector, "triton_unusable_reason", lambda device: "needs the triton package")
    assert make_attention_backend("auto", torch.device("cuda"), object(), *dims).name == "torch"
    assert make_attention_backend("torch", cpu, object(), *dims).name == "torch"
    with pytest.raises(InvalidRequestError, match="not loaded"):
        make_attention_backend("cpu_native", cpu, None, *dims)
    with pytest.raises(InvalidRequestError, match="CPU only"):
        make_attention_backend("cpu_native", torch.device("cuda"), object(), *dims)


def test_invalid_attention_backend_is_rejected(tiny_model):
    with pytest.raises(InvalidRequestError, match="attention_backend") as err:
        EngineArgs(model=str(tiny_model("llama")), attention_backend="flash")
    assert err.value.param == "attention_backend"
    with pytest.raises(InvalidRequestError, match="CPU only"):
        EngineArgs(model=str(tiny_model("llama")), device="cuda", attention_backend="cpu_native")
    with pytest.raises(InvalidRequestError, match="attention_backend"):
        make_attention_backend("flash", torch.device("cpu"), None, 4, 2, 16, torch.float32)


def _generate(llm) -> list[list[int]]:
    prompts = [[5, 9, 33, 7, 100, 3], list(range(10, 47)), [42]]
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def test_torch_backend_never_calls_the_native_decode_kernel(tiny_model, monkeypatch):
    ext = native_kernels.load_native_kernels()
    if ext is None:
        pytest.skip(f"native kernels unavailable: {native_kernels.unavailable_reason()}")

    def forbidden(*args):
        raise AssertionError("native decode_attention called")

    monkeypatch.setattr(ext, "decode_attention", forbidden)
    # the fused decode step calls the kernel through its table, not this attribute: per-op path only
    monkeypatch.setenv("NANOSERVE_DISABLE_FUSED_DECODE", "1")
    path = str(tiny_model("llama"))
    kw = {"num_gpu_blocks_override": 32, "block_size": 4, "max_num_batched_tokens": 16}
    llm = LLM(path, attention_backend="torch", **kw)
    runner = llm.llm_engine.runner
    assert isinstance(runner.attention_backend, TorchAttentionBackend)
    assert not isinstance(runner.attention_backend, CpuNativeAttentionBackend)
    assert all(a.backend is runner.attention_backend for a in runner.model.attention_layers())
    assert all(len(t) == 4 for t in _generate(llm))
    # the same run on the native backend does reach the patched kernel
    with pytest.raises(AssertionError, match="native decode_attention called"):
        _generate(LLM(path, attention_backend="cpu_native", **kw))


def test_runner_builds_attention_metadata_once_per_step(tiny_model):
    llm = LLM(str(tiny_model("llama")), num_gpu_blocks_override=32, block_size=4, max_num_batched_tokens=16)
    runner = llm.llm_engine.runner
    backend = runner.attention_backend
    calls, steps = [], []
    build, execute = backend.build_metadata, runner.execute
    backend.build_metadata = lambda layout: calls.append(layout) or build(layout)
    runner.execute = lambda out, *rest: steps.append(out) or execute(out, *rest)
    assert all(len(t) == 4 for t in _generate(llm))
    assert len(runner.model.attention_layers()) > 1
    assert len(calls) == len(steps) > 0, "one build_metadata per step, whatever the number of layers"
    assert all(isinstance(c, StepLayout) for c in calls)
