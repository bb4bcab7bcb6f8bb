"""The draft model's native proposal loop (FusedDecoder.greedy_steps) proposes exactly what the
per-token Python loop proposes: same outputs, same drafts (the per-position acceptance counters are
equal), at batch 1 and with many sequences at once, with EOS, stop token ids and min_tokens deciding
where drafting ends (the native loop stops early once every sequence drew a finishing draft)."""

from __future__ import annotations

import pytest
from spec_configs import draft

from nanoserve.demo_tasks import TASKS, held_out_problems
from nanoserve.engine.spec_decode.draft_proposer import DraftModelProposer
from nanoserve.sampling_params import SamplingParams

PROMPTS = [p.prompt for task in TASKS for p in held_out_problems(task, 8)]


def _run(demo_llm, max_num_seqs: int, k: int, params: dict):
    llm = demo_llm(speculative_config=draft(k), max_num_seqs=max_num_seqs)
    if llm.llm_engine.runner.model.model.fused_decode is None:
        pytest.skip("no fused decode path on this machine")
    if "stop_token_ids" in params:  # the space: inside most answers
        params = {**params, "stop_token_ids": llm.get_tokenizer().encode(" ", add_special_tokens=False)}
    sp = SamplingParams(**{"temperature": 0, "max_tokens": 40, **params})
    outs = llm.generate(PROMPTS, sp, use_tqdm=False)
    stats = llm.llm_engine.get_stats()
    return ([o.outputs[0].token_ids for o in outs], stats.spec_decode_num_draft_tokens,
            list(stats.spec_decode_num_accepted_tokens_per_pos))


@pytest.mark.parametrize(
    "params", [{}, {"min_tokens": 6}, {"ignore_eos": True, "max_tokens": 12}, {"stop_token_ids": None}],
    ids=["eos", "min_tokens", "ignore_eos", "stop_ids"],
)
@pytest.mark.parametrize("max_num_seqs, k", [(1, 5), (16, 3)])
def test_native_loop_proposes_what_the_python_loop_proposes(demo_llm, monkeypatch, max_num_seqs, k, params):
    used = []
    real = DraftModelProposer._propose_natively

    def counting(self, *args):
        done = real(self, *args)
        used.append(done)
        return done

    monkeypatch.setattr(DraftModelProposer, "_propose_natively", counting)
    native = _run(demo_llm, max_num_seqs, k, params)
    assert any(used), "the native loop never ran"
    monkeypatch.setattr(DraftModelProposer, "_propose_natively", lambda self, *args: False)
    assert _run(demo_llm, max_num_seqs, k, params) == native
