"""The draft model's native proposal loop (FusedDecoder.greedy_steps) proposes exactly what the
per-token Python loop proposes: same outputs, same drafts (the per-position acceptance counters are
equal), at batch 1 and with many sequences at once, stop tokens inside drafts included."""

from __future__ import annotations

import pytest
from spec_configs import draft

from nanoserve.demo_tasks import TASKS, held_out_problems
from nanoserve.engine.spec_decode.draft_proposer import DraftModelProposer
from nanoserve.sampling_params import SamplingParams

PROMPTS = [p.prompt for task in TASKS for p in held_out_problems(task, 8)]


def _run(demo_llm, max_num_seqs: int, k: int):
    llm = demo_llm(speculative_config=draft(k), max_num_seqs=max_num_seqs)
    if llm.llm_engine.runner.model.model.fused_decode is None:
        pytest.skip("no fused decode path on this machine")
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)
    stats = llm.llm_engine.get_stats()
    return ([o.outputs[0].token_ids for o in outs], stats.spec_decode_num_draft_tokens,
            list(stats.spec_decode_num_accepted_tokens_per_pos))


@pytest.mark.parametrize("max_num_seqs, k", [(1, 5), (16, 3)])
def test_native_loop_proposes_what_the_python_loop_proposes(demo_llm, monkeypatch, max_num_seqs, k):
    used = []
    real = DraftModelProposer._propose_natively

    def counting(self, *args):
        done = real(self, *args)
        used.append(done)
        return done

    monkeypatch.setattr(DraftModelProposer, "_propose_natively", counting)
    native = _run(demo_llm, max_num_seqs, k)
    assert any(used), "the native loop never ran"
    monkeypatch.setattr(DraftModelProposer, "_propose_natively", lambda self, *args: False)
    assert _run(demo_llm, max_num_seqs, k) == native
