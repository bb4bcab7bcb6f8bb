"""The Triton attention backend (decode with split-K, prefill over the paged cache) against the torch
reference backend at awkward shapes: odd context lengths, block sizes 16 and 32, GQA group sizes 1-8
(MQA too), head_dim 64 and 128, prefix hits that end mid-block, mixed decode + prefill steps, 8-bit
caches; fp32 to a tight tolerance, bf16 to bf16's. Without a GPU the kernels run in Triton's CPU
interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes stay small. Plus greedy tokens of a
tiny model through LLM with attention_backend triton equal those with torch, and the selector's rules."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from nanoserve.errors import InvalidRequestError  # noqa: E402
from nanoserve.model.attention import StepLayout, TorchAttentionBackend, make_attention_backend  # noqa: E402
from nanoserve.model.attention.kv_cache import allocate_kv_caches, write_kv  # noqa: E402
from nanoserve.model.attention.triton_backend import TritonAttentionBackend  # noqa: E402
from nanoserve.model.triton_support import triton_unusable_reason  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def _run(seqs, bs, kvh, g, d, dtype, kv_dtype="auto", partition_tokens=512, seed=0):
    """(triton out, torch out) for one step of `seqs` = [(context_len, query_len)] over a shuffled pool.

    The first context_len - query_len tokens of each sequence are already cached (random K/V); the
    step's new K/V are written by the backends themselves."""
    gen = torch.Generator().manual_seed(seed)
    need = [math.ceil(ctx / bs) for ctx, _ in seqs]
    num_blocks = sum(need) + 2
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables = [[perm.pop() for _ in range(nb)] for nb in need]
    starts, slots = [0], []
    for (ctx, n_q), table in zip(seqs, tables, strict=True):
        starts.append(starts[-1] + n_q)
        slots += [table[p // bs] * bs + p % bs for p in range(ctx - n_q, ctx)]
    layout = StepLayout(starts, [ctx for ctx, _ in seqs], tables, slots, bs)
    t = starts[-1]
    q = torch.randn(t, kvh * g, d, generator=gen).to(dtype).to(DEVICE)  # [T, H, D]
    k = torch.randn(t, kvh, d, generator=gen).to(dtype).to(DEVICE)  # [T, KVH, D]
    v = torch.randn(t, kvh, d, generator=gen).to(dtype).to(DEVICE)
    old_k = torch.randn(num_blocks * bs, kvh, d, generator=gen).to(dtype).to(DEVICE)  # every slot
    old_v = torch.randn(num_blocks * bs, kvh, d, generator=gen).to(dtype).to(DEVICE)
    dims = (kvh * g, kvh, d, d**-0.5)
    outs = []
    for backend in (
        TritonAttentionBackend(*dims, dtype=dtype, device=DEVICE, partition_tokens=partition_tokens),
        TorchAttentionBackend(*dims, dtype=dtype, device=DEVICE),
    ):
        (kc, vc), = allocate_kv_caches(1, kvh, num_blocks, bs, d, dtype, kv_dtype, DEVICE)
        all_slots = torch.arange(num_blocks * bs, device=DEVICE)
        write_kv(kc, old_k, all_slots)
        write_kv(vc, old_v, all_slots)
        outs.append(backend.forward(q, k, v, kc, vc, backend.build_metadata(layout)).float().cpu())
    return outs


def _close(seqs, bs, kvh, g, d, dtype, **kw):
    got, want = _run(seqs, bs, kvh, g, d, dtype, **kw)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bs,kvh,g,d", [(16, 2, 1, 64), (32, 1, 8, 128), (16, 2, 4, 64), (32, 3, 2, 128)])
def test_decode_matches_reference(bs, kvh, g, d, dtype):
    """One-token decodes at odd context lengths: a block's first token, its last, one past, several blocks."""
    _close([(1, 1), (bs, 1), (bs + 1, 1), (3 * bs + 7, 1)], bs, kvh, g, d, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("partition_tokens", [16, 24])
def test_decode_split_k_matches_reference(partition_tokens, dtype):
    """Split-K forced on: contexts of 1..6 partitions (one row shorter than a partition) reduce exactly."""
    seqs = [(5, 1), (61, 1), (97, 1), (partition_tokens, 1)]
    _close(seqs, 16, 2, 4, 64, dtype, partition_tokens=partition_tokens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bs,kvh,g,d", [(16, 1, 8, 64), (32, 2, 2, 128), (16, 4, 1, 64)])
def test_prefill_matches_reference(bs, kvh, g, d, dtype):
    """Varlen chunks: a whole prompt longer than one query tile, a prefix hit ending mid-block, a later
    chunk of a chunked prefill whose start is block-aligned, an odd short prompt (9: just past the decode-row
    limit), a chunk after a long cached prefix (key tiles before it run unmasked)."""
    seqs = [(70, 70), (bs + 5 + 20, 20), (2 * bs + 11, 11), (9, 9), (150, 12)]
    _close(seqs, bs, kvh, g, d, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_dtype", ["auto", "int8", "fp8_e4m3"])
def test_mixed_step_matches_reference(kv_dtype, dtype):
    """Decodes, a speculative-verify-sized chunk (decode rows) and prefill chunks in one step, split-K
    on, over plain and 8-bit caches."""
    seqs = [(40, 1), (23, 23), (37, 4), (3, 1), (50, 17)]
    _close(seqs, 16, 2, 4, 64, dtype, kv_dtype=kv_dtype, partition_tokens=16)


@pytest.mark.parametrize("d", [80, 8])
def test_padded_head_dims_are_masked(d):
    """A head dim that is not a power of two (80), or below a tl.dot's 16 (8), is padded and masked."""
    _close([(21, 1), (30, 12)], 16, 2, 2, d, torch.float32, partition_tokens=16)


def test_k_none_means_the_caller_wrote_the_cache():
    """k/v None: the backend reads what is already in the cache (the fused rope_cache path)."""
    bs, kvh, d = 16, 2, 64
    # A decode at position 19 (block 1, offset 3) and a 10-token prompt in block 2.
    slots = [1 * bs + 3] + [2 * bs + p for p in range(10)]
    layout = StepLayout([0, 1, 11], [20, 10], [[0, 1], [2]], slots, bs)
    (kc, vc), = allocate_kv_caches(1, kvh, 3, bs, d, torch.float32, "auto", DEVICE)
    gen = torch.Generator().manual_seed(1)
    kc.copy_(torch.randn(kc.shape, generator=gen))
    vc.copy_(torch.randn(vc.shape, generator=gen))
    q = torch.randn(11, kvh * 4, d, generator=gen).to(DEVICE)
    dims = (kvh * 4, kvh, d, d**-0.5)
    tri, ref = TritonAttentionBackend(*dims, device=DEVICE), TorchAttentionBackend(*dims, device=DEVICE)
    got = tri.forward(q, None, None, kc, vc, tri.build_metadata(layout))
    want = ref.forward(q, None, None, kc, vc, ref.build_metadata(layout))
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_selector_rules():
    """auto never picks triton on CPU (even under the interpreter); triton asked for where it cannot
    run is refused with the reason; on CUDA auto picks triton."""
    dims = (4, 2, 64, torch.float32)
    auto_cpu = make_attention_backend("auto", torch.device("cpu"), None, *dims)
    assert auto_cpu.name == "torch"
    if triton_unusable_reason("cpu") is None:  # the interpreter is on
        assert make_attention_backend("triton", torch.device("cpu"), None, *dims).name == "triton"
    # triton is installed (importorskip above): usable on CUDA, so auto takes it there.
    assert make_attention_backend("auto", torch.device("cuda"), None, *dims).name == "triton"


def test_triton_refused_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InvalidRequestError, match="triton.*CUDA only"):
        make_attention_backend("triton", torch.device("cpu"), None, 4, 2, 64, torch.float32)


def test_llm_greedy_tokens_equal_torch_backend(tiny_llama):
    """End to end on a tiny model in fp32: prefill, chunked prefill, prefix-cache hits and decodes."""
    from nanoserve import LLM, SamplingParams

    shared = [1, 5, 9, 2, 7, 3, 8, 4, 6, 10, 11, 12, 13, 14, 15, 16, 17, 18]
    first = [shared + [19, 20, 21, 22, 23]]
    # After `first`, the second batch hits its cached first block; [3, 4] decodes beside a prefill.
    second = [shared + [30, 31], [3, 4], list(range(2, 40))]
    params = SamplingParams(temperature=0.0, max_tokens=6)
    tokens = {}
    for backend in ("torch", "triton"):
        with LLM(str(tiny_llama), dtype="float32", device=str(DEVICE), attention_backend=backend,
                 block_size=16, enable_prefix_caching=True, num_gpu_blocks_override=64) as llm:
            got = []
            for batch in (first, second):
                outs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
                got += [o.outputs[0].token_ids for o in outs]
            tokens[backend] = got
    assert tokens["triton"] == tokens["torch"]
    assert all(len(t) == 6 for t in tokens["triton"])
