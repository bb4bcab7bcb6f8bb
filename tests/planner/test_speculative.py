"""Speculative decoding: exact vs approximate expectations, speedup, break-even, best k."""

from __future__ import annotations

import random

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner import speculative as s


def _simulate(alpha: float, k: int, rounds: int = 100_000, seed: int = 0) -> float:
    """Tokens per round when each draft token is accepted with probability α until the first reject."""
    rng = random.Random(seed)
    total = 0
    for _ in range(rounds):
        accepted = 0
        while accepted < k and rng.random() < alpha:
            accepted += 1
        total += accepted + 1  # the target always adds one token of its own
    return total / rounds


@pytest.mark.parametrize(("alpha", "k"), [(0.5, 3), (0.8, 4), (0.9, 8)])
def test_exact_expectation_matches_simulation(alpha, k):
    assert s.expected_tokens(alpha, k).value == pytest.approx(_simulate(alpha, k), rel=0.01)


def test_approximations_overestimate():
    for a in (0.3, 0.6, 0.9):
        exact = s.expected_tokens(a, 5).value
        assert s.expected_tokens(a, 5, "approx").value > exact
    assert s.expected_tokens(1.0, 5).value == 6 and s.expected_tokens(0.0, 5).value == 1


def test_break_even_solves_the_speedup_equation():
    for method in s.METHODS:
        a = s.break_even_acceptance(4, 0.04, 0.004, method, target_speedup=1.5).value
        assert s.speedup(a, 4, 0.04, 0.004, method).value == pytest.approx(1.5, rel=1e-6)


def test_unreachable_speedup_is_an_error():
    with pytest.raises(InvalidRequestError, match="possible with k=2"):
        s.break_even_acceptance(2, 0.05, 0.005, target_speedup=5)


def test_parallel_draft_hides_draft_time():
    seq = s.speedup(0.8, 4, 0.05, 0.01).value
    par = s.speedup(0.8, 4, 0.05, 0.01, draft_parallel=True).value
    assert par == pytest.approx(s.expected_tokens(0.8, 4).value) and par > seq


def test_optimal_k_grows_with_acceptance():
    low = s.optimal_k(0.5, 0.05, 0.005).value
    high = s.optimal_k(0.95, 0.05, 0.005).value
    assert high > low >= 1


@pytest.mark.parametrize(
    "bad",
    [
        lambda: s.expected_tokens(1.2, 3),
        lambda: s.expected_tokens(0.5, 0),
        lambda: s.expected_tokens(0.5, 3, "guess"),
        lambda: s.step_time(3, 0, 1),
    ],
)
def test_bad_input(bad):
    with pytest.raises(InvalidRequestError):
        bad()


def test_overhead_and_verify_terms():
    from nanoserve.planner.speculative import expected_tokens as _e
    from nanoserve.planner.speculative import speedup as _s
    from nanoserve.planner.speculative import step_time as _t

    # Defaults leave the textbook formula alone.
    plain = _s(0.8, 3, 1.0, 0.2, verify_time_s=None, overhead_s=0).value
    assert _s(0.8, 3, 1.0, 0.2).value == pytest.approx(plain)
    assert _t(3, 1.0, 0.2, verify_time_s=2.0, overhead_s=0.5).value == pytest.approx(3 * 0.2 + 2.0 + 0.5)
    assert _t(3, 1.0, 0.2, draft_parallel=True, verify_time_s=2.0, overhead_s=0.5).value == pytest.approx(2.5)
    e = _e(0.8, 3).value
    r = _s(0.8, 3, 1.0, 0.2, verify_time_s=2.0, overhead_s=0.5)
    assert r.value == pytest.approx(e * 1.5 / 3.1)
    assert r.value < _s(0.8, 3, 1.0, 0.2).value  # the terms only ever cost
    assert "t_verify" in r.steps[1].formula and "o" in r.formula
    with pytest.raises(Exception, match="overhead_s"):
        _t(3, 1.0, 0.2, overhead_s=-1)
