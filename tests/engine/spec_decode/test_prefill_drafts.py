"""Drafts verified in the prefill step: the scheduler's attach_drafts (budget and pool bound it), the
engine drafting for a prefill chunk that samples (a short answer finishes in its prefill step, output
unchanged), where that is allowed (prefill_chunk_max_tokens), and the draft model stopping at EOS."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from spec_configs import draft, ngram

from nanoserve.config import CacheConfig, SchedulerConfig
from nanoserve.engine.block_manager import BlockManager
from nanoserve.engine.scheduler import Scheduler
from nanoserve.engine.sequence import Request
from nanoserve.engine.spec_decode.draft_proposer import DraftModelProposer
from nanoserve.engine.spec_decode.proposer import prefill_chunk_max_tokens
from nanoserve.model.attention.torch_backend import DECODE_ROWS_MAX_QUERY_LEN
from nanoserve.sampling_params import SamplingParams


def _scheduler(num_blocks: int, budget: int) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=64)
    return Scheduler(config, BlockManager(num_blocks, 4, enable_prefix_caching=False))


def _admit(sched: Scheduler, prompt_len: int):
    sched.add_request(Request("r", list(range(3, 3 + prompt_len)), SamplingParams(), 0, 16))
    out = sched.schedule()
    (item,) = out.scheduled
    return out, item


def test_attach_drafts_grows_the_prefill_chunk_and_the_step_verifies_them():
    sched = _scheduler(num_blocks=8, budget=64)
    out, item = _admit(sched, 6)
    assert sched.attach_drafts(out, item, [7, 8, 9]) == 3
    assert (item.num_new_tokens, item.spec_token_ids, out.num_batched_tokens) == (9, [7, 8, 9], 9)
    assert item.samples and len(item.seq.block_table) == 3  # slots for 9 tokens in blocks of 4
    sched.update_after_step(out)
    seq = item.seq
    assert seq.num_computed_tokens == 6 and seq.spec_token_ids == []  # drafts count once accepted
    seq.token_ids += [7, 8, 5]  # two drafts accepted, then the target's own token
    sched.accept_spec_tokens(seq, 2)
    assert seq.num_computed_tokens == 8 and len(seq.block_table) == 3


def test_attach_drafts_stays_within_the_token_budget_and_the_pool():
    sched = _scheduler(num_blocks=8, budget=8)
    out, item = _admit(sched, 6)
    assert sched.attach_drafts(out, item, [7, 8, 9]) == 2  # 6 + 2 fill the budget of 8
    assert item.num_new_tokens == 8 and item.spec_token_ids == [7, 8]
    tight = _scheduler(num_blocks=2, budget=64)
    out, item = _admit(tight, 8)  # both blocks full: no slot for a draft, and nobody is preempted
    assert tight.attach_drafts(out, item, [7]) == 0
    assert item.num_new_tokens == 8 and item.spec_token_ids == [] and not out.preempted


@pytest.mark.parametrize("spec,prompt", [(draft(3), "44+30="), (ngram(3), "sort 3 = 1 2 =")],
                         ids=["draft", "ngram"])
def test_the_prefill_step_verifies_drafts_and_a_short_answer_finishes_there(demo_llm, spec, prompt):
    params = SamplingParams(temperature=0, max_tokens=16)
    off, on = demo_llm(), demo_llm(speculative_config=spec)
    ref = off.generate([prompt], params, use_tqdm=False)[0].outputs[0]
    engine = on.llm_engine
    engine.add_request("r", prompt, params)
    outs = engine.step()
    assert engine.get_stats().spec_decode_num_drafts == 1  # drafted from the prompt, verified at once
    first = outs[0].outputs[0].token_ids
    assert first == ref.token_ids[: len(first)]
    if spec["method"] == "draft_model":  # the draft agrees: the whole answer (3 tokens) in one step
        assert outs[0].finished and first == ref.token_ids and len(first) == 3
    while engine.has_unfinished_requests():
        outs = engine.step()
    got = outs[0].outputs[0]
    assert got.token_ids == ref.token_ids and got.text == ref.text


def test_prefill_chunks_carry_drafts_where_verification_stays_exact():
    assert prefill_chunk_max_tokens("float32") is None  # fp32 linears are not batch-invariant anyway
    assert prefill_chunk_max_tokens("bfloat16") == DECODE_ROWS_MAX_QUERY_LEN  # decode rows only


class _ScriptedDraft(DraftModelProposer):
    """The lean loop over a fake model whose argmax is scripted per call."""

    def __init__(self, script: list[int], eos: int) -> None:
        super().__init__(SimpleNamespace(cache_config=CacheConfig(4, 16, enable_prefix_caching=False)), [eos])
        self.script = script
        self.calls = 0

    def _native_decoder(self):  # noqa: ANN202 -- the scripted model runs in Python only
        return None

    def _argmax(self, items):  # noqa: ANN001
        self.calls += 1
        return [self.script[self.calls - 1]] * len(items)


@pytest.mark.parametrize("params,expected", [
    (SamplingParams(), [5, 2]),  # EOS drafted: no more drafts, no more forwards
    (SamplingParams(ignore_eos=True), [5, 2, 6, 7]),
    (SamplingParams(min_tokens=3), [5, 2, 6, 7]),  # EOS at output 2 would not stop the sequence
    (SamplingParams(ignore_eos=True, stop_token_ids=[6]), [5, 2, 6]),  # a stop token id likewise
])
def test_the_draft_model_stops_drafting_at_a_draft_that_would_finish(params, expected):
    proposer = _ScriptedDraft([5, 2, 6, 7], eos=2)
    seq = Request("r", [3, 4, 9], params, 0, 16).seq
    assert proposer.propose([seq], [4]) == [expected]
    assert proposer.calls == len(expected)
    proposer.free(seq)
    proposer.check_all_free()
