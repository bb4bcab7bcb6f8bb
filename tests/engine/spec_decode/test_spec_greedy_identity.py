"""Greedy output with speculation equals greedy output without, on every demo task, for both proposers
and k in {1, 3, 5}, under chunked prefill, prefix caching and a pool small enough to preempt."""

from __future__ import annotations

import random

import pytest
from spec_configs import draft, ngram

from nanoserve.demo_tasks import TASKS, make_problem
from nanoserve.sampling_params import SamplingParams

PER_TASK = 50
# Small blocks and pool, a small token budget: prompts are chunked, "reverse "/"sort " prefixes hit the
# prefix cache, and 200 sequences at once cannot all fit (preemption).
ENGINE = dict(block_size=4, num_gpu_blocks_override=24, max_num_batched_tokens=48, enable_prefix_caching=True)


def _prompts() -> list[str]:
    rng = random.Random(13)
    return [make_problem(task, rng).prompt for task in TASKS for _ in range(PER_TASK)]


@pytest.fixture(scope="module")
def reference():
    from nanoserve import LLM
    from nanoserve.demo import default_model

    llm = LLM(default_model(), **ENGINE)
    outs = llm.generate(_prompts(), SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)
    return [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs]


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("proposer", [ngram, draft], ids=["ngram", "draft_model"])
def test_greedy_identity(demo_llm, reference, proposer, k):
    llm = demo_llm(speculative_config=proposer(k), **ENGINE)
    outs = llm.generate(_prompts(), SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)
    got = [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs]
    assert got == reference
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0  # the conditions were exercised
    assert stats.spec_decode_num_accepted_tokens > 0
    drafts = stats.spec_decode_num_drafts
    assert 0 < drafts <= stats.spec_decode_num_draft_tokens <= k * drafts
    assert stats.generation_tokens == sum(len(t) for t, _ in reference)  # nothing past a finish counted
