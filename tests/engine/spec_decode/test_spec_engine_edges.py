"""Speculation inside the engine: stop conditions inside an accepted run, logprobs, penalties, n > 1,
seeds, abort mid-draft (both pools freed), per-request counts."""

from __future__ import annotations

import pytest
from spec_configs import draft, ngram

from nanoserve.sampling_params import SamplingParams

PROMPTS = ["sort 9 8 7 6 5 4 3 2 1 0 =", "reverse abcdefghijkl =", "123+456=", "sort 3 1 2 =", "503-78="]


def _run(llm, params, prompts=PROMPTS):
    return [o.outputs for o in llm.generate(prompts, params, use_tqdm=False)]


def _same(a, b):
    assert [[(c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in x] for x in a] == \
           [[(c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in x] for x in b]


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 4, 6, 9])
def test_max_tokens_landing_mid_draft(demo_llm, max_tokens):
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    off, on = demo_llm(), demo_llm(speculative_config=draft(5))
    ref, got = _run(off, params), _run(on, params)
    _same(ref, got)
    assert all(len(c[0].token_ids) <= max_tokens for c in got)
    assert on.llm_engine.generation_tokens == sum(len(c[0].token_ids) for c in got)


def test_eos_inside_an_accepted_run_ends_there(demo_llm):
    params = SamplingParams(temperature=0, max_tokens=60)
    off, on = demo_llm(), demo_llm(speculative_config=draft(5))
    ref, got = _run(off, params), _run(on, params)
    _same(ref, got)
    assert all(c[0].finish_reason == "stop" for c in got)  # every answer ends with EOS before 60 tokens
    # The draft model (99% agreement) drafts EOS and beyond it; nothing past EOS is emitted or counted.
    assert on.llm_engine.generation_tokens == sum(len(c[0].token_ids) for c in got)
    assert on.llm_engine.spec_counters.num_accepted_tokens > 0


@pytest.mark.parametrize("spec", [ngram(3), draft(4)], ids=["ngram", "draft_model"])
def test_stop_strings_and_stop_tokens_inside_a_run(demo_llm, spec):
    params = SamplingParams(temperature=0, max_tokens=40, stop=["5", "h"], include_stop_str_in_output=False)
    _same(_run(demo_llm(), params), _run(demo_llm(speculative_config=spec), params))
    params = SamplingParams(temperature=0, max_tokens=40, stop=["8 9"], include_stop_str_in_output=True)
    _same(_run(demo_llm(), params), _run(demo_llm(speculative_config=spec), params))


def test_logprobs_of_emitted_tokens_come_from_the_target(demo_llm):
    params = SamplingParams(temperature=0, max_tokens=30, logprobs=3)
    ref, got = _run(demo_llm(), params), _run(demo_llm(speculative_config=draft(3)), params)
    _same(ref, got)
    for a, b in zip(ref, got, strict=True):
        assert len(a[0].logprobs) == len(b[0].logprobs) == len(b[0].token_ids)
        for ea, eb in zip(a[0].logprobs, b[0].logprobs, strict=True):
            assert ea.keys() == eb.keys()
            assert all(abs(ea[t] - eb[t]) < 1e-4 for t in ea)


@pytest.mark.parametrize("spec", [ngram(3), draft(3)], ids=["ngram", "draft_model"])
def test_penalties_and_bias_are_applied_per_draft_position(demo_llm, spec):
    # Penalties depend on the tokens before each position (earlier drafts included): a verify that scored
    # every position with the same history would diverge from speculation off.
    params = SamplingParams(temperature=0, max_tokens=30, repetition_penalty=1.4, frequency_penalty=0.6,
                            presence_penalty=0.3, logit_bias={14: 1.5}, min_tokens=3)
    on = demo_llm(speculative_config=spec)
    _same(_run(demo_llm(), params), _run(on, params))
    assert on.llm_engine.spec_counters.num_draft_tokens > 0


def test_n_greater_than_one_and_seeds(demo_llm):
    greedy = SamplingParams(temperature=0, max_tokens=30, n=3)
    _same(_run(demo_llm(), greedy), _run(demo_llm(speculative_config=draft(3)), greedy))
    seeded = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=30, n=3, seed=7)
    a = _run(demo_llm(speculative_config=draft(3)), seeded)
    b = _run(demo_llm(speculative_config=draft(3)), seeded)
    _same(a, b)  # reproducible run to run


def test_per_request_counts_and_engine_counters_agree(demo_llm):
    llm = demo_llm(speculative_config=draft(3))
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=30), use_tqdm=False)
    drafted = sum(o.metrics.spec_num_draft_tokens for o in outs)
    accepted = sum(o.metrics.spec_num_accepted_tokens for o in outs)
    c = llm.llm_engine.spec_counters
    assert drafted == c.num_draft_tokens > 0 and accepted == c.num_accepted_tokens > 0
    assert all(o.metrics.spec_num_accepted_tokens <= o.metrics.spec_num_draft_tokens for o in outs)
    assert sum(c.accepted_per_pos) == accepted
    assert c.accepted_per_pos == sorted(c.accepted_per_pos, reverse=True)  # position j needs 0..j-1


@pytest.mark.parametrize("spec", [ngram(3), draft(3)], ids=["ngram", "draft_model"])
def test_abort_mid_draft_frees_both_pools(demo_llm, spec):
    llm = demo_llm(speculative_config=spec, num_gpu_blocks_override=64)
    engine = llm.llm_engine
    for i, p in enumerate(PROMPTS * 4):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=40))
    for _ in range(50):
        engine.step()
        if any(s.spec_token_ids for s in engine.scheduler.running):
            break
    assert any(s.spec_token_ids for s in engine.scheduler.running), "no sequence held drafts"
    if spec["method"] == "draft_model":
        assert engine.proposer.block_manager.num_free_blocks < engine.proposer.block_manager.num_blocks
    engine.abort_request([str(i) for i in range(len(PROMPTS) * 4)])
    engine.step()  # hands out the aborted outputs
    assert not engine.has_unfinished_requests()
    engine.check_all_blocks_free()  # both pools (the fixture checks again)
