"""The engine on CUDA end to end (skipped without a GPU; scripts/gpu_check.sh runs it on one).

Greedy fp32 output on the GPU equals the CPU engine's and is the same with CUDA graphs on and off;
the graphs do serve the decode steps; no native CPU code is used; sampling, seeds, penalties,
logprobs, prompt logprobs and an int8 KV cache run on the device.
"""

from __future__ import annotations

import random

import pytest
import torch

from nanoserve import SamplingParams
from nanoserve.model.kernels import TorchKernels
from nanoserve.model.triton_support import triton_unusable_reason

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _prompts(n: int = 6, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    lengths = [rng.randrange(2, 300) for _ in range(n)]
    return [{"prompt_token_ids": [rng.randrange(4, 120) for _ in range(k)]} for k in lengths]


def _greedy(llm, prompts, n=16):
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_greedy_fp32_on_cuda_equals_cpu_with_graphs_on_and_off(make_llm, backend):
    """auto on CUDA: the Triton attention backend and fused ops where triton runs; torch: the reference."""
    prompts = _prompts()
    cpu = _greedy(make_llm(device="cpu", attention_backend="torch"), prompts)
    graphs_llm = make_llm(device="cuda", attention_backend=backend)
    runner = graphs_llm.llm_engine.runner
    assert runner.graphs is not None and runner.kv_caches[0][0].is_cuda
    triton_ok = triton_unusable_reason("cuda") is None
    assert type(runner.kernels).__name__ == ("TritonKernels" if triton_ok else TorchKernels.__name__)
    assert runner.model.model.fused_decode is None
    want_backend = "triton" if backend == "auto" and triton_ok else "torch"
    assert runner.attention_backend.name == want_backend
    with_graphs = _greedy(graphs_llm, prompts)
    assert runner.graphs.replays > 0
    eager = _greedy(make_llm(device="cuda", attention_backend=backend, enforce_eager=True), prompts)
    assert with_graphs == eager
    assert with_graphs == cpu


def test_sampling_features_run_on_the_device_and_seeds_repeat(make_llm):
    llm = make_llm(device="cuda", kv_cache_dtype="int8")
    params = [
        SamplingParams(max_tokens=8, temperature=0.8, top_p=0.9, top_k=20, seed=1, logprobs=3),
        SamplingParams(max_tokens=8, temperature=1.0, min_p=0.1, repetition_penalty=1.2, seed=2,
                       frequency_penalty=0.5, presence_penalty=0.3, logit_bias={5: 2.0}),
        SamplingParams(max_tokens=8, temperature=0.0, min_tokens=4, prompt_logprobs=2),
        SamplingParams(max_tokens=8, temperature=0.7, seed=3),
    ]
    prompts = _prompts(4, seed=1)
    first = llm.generate(prompts, params, use_tqdm=False)
    again = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in first] == [o.outputs[0].token_ids for o in again]
    assert all(len(o.outputs[0].token_ids) == 8 for o in first)
    assert first[0].outputs[0].logprobs and len(first[0].outputs[0].logprobs) == 8
    assert first[2].prompt_logprobs is not None
