"""bench spec's arithmetic: α fitted to tokens per step, c, measured vs predicted speed-up, the table."""

from __future__ import annotations

import pytest

from nanoserve.bench.spec_analysis import RunMeasure, compare, fit_alpha, markdown
from nanoserve.engine.spec_decode.step_timers import StepTimers
from nanoserve.planner.speculative import expected_tokens, speedup


@pytest.mark.parametrize("alpha,k", [(0.0, 3), (0.3, 1), (0.6, 3), (0.9, 6)])
def test_fit_alpha_inverts_expected_tokens(alpha, k):
    assert fit_alpha(expected_tokens(alpha, k).value, k) == pytest.approx(alpha, abs=1e-6)


def test_fit_alpha_clamps():
    assert fit_alpha(0.5, 3) == 0.0
    assert fit_alpha(9.0, 3) == 1.0


def _timers(steps, step_s, execute_s, propose_s, verified=True):
    t = StepTimers()
    for _ in range(steps):
        t.observe(1, step_s, execute_s, propose_s, verified, verified)
    return t


def test_compare_from_fake_timers():
    k = 3
    # Off: 100 decode steps of 3 ms, 2 ms of it the target forward -> o = 1 ms.
    off = RunMeasure(_timers(100, 3e-3, 2e-3, 0.0, verified=False), elapsed_s=0.4, output_tokens=100)
    # On: 40 decode steps, each 5 ms: verify 3 ms, proposer 0.6 ms (0.2 ms a draft position), E = 2.5.
    on = RunMeasure(_timers(40, 5e-3, 3e-3, 0.6e-3), elapsed_s=0.25, output_tokens=100,
                    num_drafts=40, num_draft_tokens=120, num_accepted_tokens=60,
                    accepted_per_pos=[30, 20, 10])
    c = compare("fake", "draft_model", k, off, on, identical=True)
    assert c.tokens_per_step == pytest.approx(2.5)
    assert c.acceptance_rate == pytest.approx(0.5)
    assert c.acceptance_per_pos == pytest.approx([0.75, 0.5, 0.25])
    assert expected_tokens(c.alpha, k).value == pytest.approx(2.5, rel=1e-6)
    assert c.t_target_s == pytest.approx(2e-3) and c.t_verify_s == pytest.approx(3e-3)
    assert c.t_draft_s == pytest.approx(0.2e-3) and c.c == pytest.approx(0.1)
    assert c.overhead_s == pytest.approx(1e-3)
    # Decode time per token: off 3 ms, on 5 ms / 2.5 = 2 ms.
    assert c.measured == pytest.approx(1.5)
    assert c.predicted == pytest.approx(speedup(c.alpha, k, 2e-3, 0.2e-3).value)
    assert c.predicted == pytest.approx(2.5 * 2 / 2.6)
    # With the terms: 2.5 × (2 + 1) / (0.6 + 3 + 1) -- but the on run's step also holds its own overhead.
    assert c.predicted_terms == pytest.approx(2.5 * 3 / 4.6)
    assert c.ratio == pytest.approx(1.5 / (2.5 * 2 / 2.6))
    assert c.off_tok_s == pytest.approx(250) and c.on_tok_s == pytest.approx(400)
    assert c.end_to_end == pytest.approx(1.6) and c.as_dict()["end_to_end"] == pytest.approx(1.6)
    md = markdown([c])
    assert md.count("\n") == 3 and "| fake | draft_model | 3 | 0.50 | 0.75 0.50 0.25 |" in md
    assert "| end to end × |" in md and "| 250 | 400 | 1.60 | 1.50 |" in md
    assert "| yes |" in md


def test_compare_with_no_drafts_is_all_zero_acceptance():
    off = RunMeasure(_timers(10, 3e-3, 2e-3, 0.0, verified=False), 0.03, 10)
    on = RunMeasure(_timers(10, 3.1e-3, 2e-3, 0.1e-3, verified=False), 0.031, 10)
    c = compare("none", "ngram", 2, off, on)
    assert c.alpha == 0.0 and c.acceptance_rate == 0.0 and c.acceptance_per_pos == []
    assert c.measured == pytest.approx(3 / 3.1)
    assert c.identical is None
