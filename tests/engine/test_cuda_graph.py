"""CUDA graphs for decode steps, tested on CPU: everything but the capture itself.

The graph runner with `capture=False` calls the same forward on the same static buffers a graph would
replay (bucketed batch, padding rows on the scratch block, the backend's `fill`), so these tests pin
the bucket choice, the padding and slicing and the static-buffer fill against the eager engine: the
same tokens and the same logprobs, bit for bit. Graphs are never attempted on CPU and enforce_eager
turns them off.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from nanoserve import SamplingParams
from nanoserve.engine import cuda_graph
from nanoserve.engine.cuda_graph import (
    CudaGraphConfig,
    capture_sizes,
    cuda_graph_config,
    smallest_at_least,
    width_buckets,
)
from nanoserve.engine.host_tensor import host_tensor
from nanoserve.model.attention.backend import AttentionBackend
from nanoserve.model.attention.torch_backend import TorchAttentionBackend


def _args(**kw):
    base = dict(enforce_eager=False, tensor_parallel_size=1, max_seq_len_to_capture=8192)
    return SimpleNamespace(**{**base, **kw})


def test_batch_buckets_are_vllms_sizes_up_to_max_num_seqs():
    assert capture_sizes(256) == [1, 2, 4, *range(8, 257, 8)]
    assert capture_sizes(64)[-3:] == [48, 56, 64]
    assert capture_sizes(12) == [1, 2, 4, 8, 12]  # max_num_seqs itself is a bucket
    assert capture_sizes(3) == [1, 2, 3]
    assert capture_sizes(1) == [1]
    sizes = capture_sizes(256)
    assert [smallest_at_least(n, sizes) for n in (1, 3, 5, 9, 17, 255, 256)] == [1, 4, 8, 16, 24, 256, 256]
    assert smallest_at_least(257, sizes) is None


def test_width_buckets_double_from_the_narrowest_up_to_the_longest_captured_context():
    assert width_buckets(512, 16, fixed_width=False) == [16, 32, 64, 128, 256, 512]
    assert width_buckets(100, 16, fixed_width=False) == [16, 32, 64, 100]
    assert width_buckets(8, 16, fixed_width=False) == [8]
    assert width_buckets(512, 16, fixed_width=True) == [512]


def test_graphs_only_on_cuda_and_never_with_enforce_eager_or_tensor_parallel():
    cuda = torch.device("cuda")
    assert cuda_graph_config(_args(), torch.device("cpu"), 256, 4096) is None
    assert cuda_graph_config(_args(enforce_eager=True), cuda, 256, 4096) is None
    assert cuda_graph_config(_args(tensor_parallel_size=2), cuda, 256, 4096) is None
    config = cuda_graph_config(_args(max_seq_len_to_capture=8192), cuda, 64, 2048)
    assert config == CudaGraphConfig(max_batch=64, max_seq_len=2048, capture=True)
    assert cuda_graph_config(_args(), cuda, 512, 16384) == CudaGraphConfig(256, 8192, True)


def test_host_tensor_is_torch_tensor_on_cpu():
    cases = (([1, 2, 3], torch.int64), ([0.5, 1.0], None), ([True, False], None), ([[1, 2]], None))
    for values, dtype in cases:
        got, want = host_tensor(values, dtype), torch.tensor(values, dtype=dtype)
        assert got.dtype == want.dtype and torch.equal(got, want)


def _graphs_on_cpu(monkeypatch, captured: list):
    """Make the engine build a graph runner on CPU, with the capture swapped for direct calls."""

    def config(args, device, max_num_seqs, max_model_len):
        if args.enforce_eager:
            return None
        return CudaGraphConfig(min(256, max_num_seqs), min(args.max_seq_len_to_capture, max_model_len),
                               capture=False)

    def no_capture(*a, **k):  # a capture on CPU would be a bug
        captured.append(a)
        raise AssertionError("capture_cuda_graph called with capture=False")

    monkeypatch.setattr(cuda_graph, "cuda_graph_config", config)
    monkeypatch.setattr(cuda_graph, "capture_cuda_graph", no_capture)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 120) for _ in range(rng.randrange(2, 40))] for _ in range(n)]


def _run(llm, prompts, max_tokens=12, logprobs=3):
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, logprobs=logprobs)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
def test_graph_path_gives_the_eager_tokens_and_logprobs_bit_for_bit(make_llm, monkeypatch, kv_cache_dtype):
    prompts = _prompts(5)  # 5 sequences: bucket 8, three padding rows; then fewer as none finish early
    kw = dict(device="cpu", attention_backend="torch", kv_cache_dtype=kv_cache_dtype, max_num_seqs=16)
    eager = _run(make_llm(**kw), prompts)
    captured: list = []
    _graphs_on_cpu(monkeypatch, captured)
    llm = make_llm(**kw)
    graphs = llm.llm_engine.runner.graphs
    assert graphs is not None and graphs.batch_sizes == [1, 2, 4, 8, 16]
    before = graphs.replays
    assert _run(llm, prompts) == eager
    assert graphs.replays - before >= 11  # every decode step after the prefill went through the runner
    assert (8, 16) in graphs._graphs and not captured


def test_triton_backend_graph_path_gives_the_eager_tokens(make_llm, monkeypatch):
    """The Triton backend's static metadata (one table width, max_row_ctx fixed at that width, so the
    decode grid is the same every replay) gives the eager tokens and logprobs (Triton's interpreter)."""
    from nanoserve.model.triton_support import triton_unusable_reason

    if triton_unusable_reason("cpu") is not None:  # a GPU machine: test_cuda_smoke covers it compiled
        pytest.skip("this CPU run of the Triton backend needs TRITON_INTERPRET=1")
    prompts = _prompts(3, seed=2)
    kw = dict(device="cpu", attention_backend="triton", max_num_seqs=4, max_model_len=128)
    eager = _run(make_llm(**kw), prompts, max_tokens=6)
    _graphs_on_cpu(monkeypatch, [])
    llm = make_llm(**kw)
    graphs = llm.llm_engine.runner.graphs
    assert graphs.meta.fixed_width and len(graphs.widths) == 1
    before = graphs.replays
    got = _run(llm, prompts, max_tokens=6)
    assert graphs.replays - before >= 5
    for (toks, lps), (toks_e, lps_e) in zip(got, eager, strict=True):
        assert toks == toks_e
        for step, step_e in zip(lps, lps_e, strict=True):
            assert step.keys() == step_e.keys()
            for t in step:
                assert abs(step[t] - step_e[t]) < 1e-5


def test_padding_rows_write_only_the_scratch_block(make_llm, monkeypatch):
    _graphs_on_cpu(monkeypatch, [])
    llm = make_llm(device="cpu", attention_backend="torch", num_gpu_blocks_override=32)
    runner = llm.llm_engine.runner
    assert runner.graphs.scratch_block == 32 and runner.kv_caches[0][0].shape[1] == 33  # one block more
    k_pool = runner.kv_caches[0][0]  # [KVH, blocks, block_size, D]
    k_pool[:, 32].fill_(7.0)
    before = k_pool[:, :32].clone()
    _run(llm, _prompts(3, seed=1), max_tokens=4, logprobs=None)  # 3 sequences: bucket 4, one padding row
    assert runner.graphs.replays > 0
    assert not torch.equal(k_pool[:, 32, 0], torch.full_like(k_pool[:, 32, 0], 7.0))  # its slot 0 written
    assert torch.equal(k_pool[:, 32, 1:], torch.full_like(k_pool[:, 32, 1:], 7.0))  # and nothing else
    assert not torch.equal(k_pool[:, :32], before)  # the sequences' own K went to their blocks


def test_wider_contexts_take_a_wider_bucket_and_longer_ones_run_eagerly(make_llm, monkeypatch):
    rng = random.Random(3)
    prompts = [[rng.randrange(3, 120) for _ in range(n)] for n in (250, 20)]  # crosses 256 tokens
    # No prefix cache: eager_one would otherwise reuse the 250-token prompt's blocks and compute only its
    # 10-token tail, which runs as decode rows (rounding differently from a whole prefill).
    kw = dict(device="cpu", attention_backend="torch", block_size=16, enable_prefix_caching=False)
    eager_llm = make_llm(**kw)
    eager = _run(eager_llm, prompts, max_tokens=10)
    eager_one = _run(eager_llm, prompts[:1], max_tokens=10)
    _graphs_on_cpu(monkeypatch, [])
    llm = make_llm(**kw)
    assert _run(llm, prompts, max_tokens=10) == eager
    assert {w for _, w in llm.llm_engine.runner.graphs._graphs} == {16, 32}  # 256 then 512 tokens wide
    short = make_llm(max_seq_len_to_capture=100, **kw)  # contexts past 100 tokens stay eager
    graphs = short.llm_engine.runner.graphs
    before = graphs.replays
    assert _run(short, prompts[:1], max_tokens=10) == eager_one
    assert graphs.replays == before


def test_enforce_eager_and_cpu_engines_have_no_graph_runner(make_llm, monkeypatch):
    assert make_llm(device="cpu").llm_engine.runner.graphs is None  # the real config: never on CPU
    _graphs_on_cpu(monkeypatch, [])
    assert make_llm(device="cpu", enforce_eager=True).llm_engine.runner.graphs is None


def test_a_backend_without_graph_metadata_runs_eagerly(make_llm, monkeypatch):
    _graphs_on_cpu(monkeypatch, [])
    monkeypatch.setattr(TorchAttentionBackend, "graph_metadata", AttentionBackend.graph_metadata)
    llm = make_llm(device="cpu", attention_backend="torch")
    assert llm.llm_engine.runner.graphs is None
    assert _run(llm, _prompts(2), max_tokens=3, logprobs=None)[0][0]
