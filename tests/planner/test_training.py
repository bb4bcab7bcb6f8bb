"""Training compute, time, cost, Chinchilla sizing and MFU."""

from __future__ import annotations

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner import training as t


def test_time_scales_inversely_with_gpus_and_mfu():
    a = t.training_time(7e9, 1e12, 64, 1e15, 0.5).value
    assert t.training_time(7e9, 1e12, 128, 1e15, 0.5).value == pytest.approx(a / 2)
    assert t.training_time(7e9, 1e12, 64, 1e15, 0.25).value == pytest.approx(2 * a)
    assert a == pytest.approx(6 * 7e9 * 1e12 / (64 * 1e15 * 0.5))


def test_chinchilla_optimal_is_consistent_with_6nd():
    n, d = t.chinchilla_optimal(3.15e23)
    assert 6 * n.value * d.value == pytest.approx(3.15e23)
    assert d.value / n.value == pytest.approx(20)
    assert t.tokens_for_compute(3.15e23, n.value).value == pytest.approx(d.value)


def test_mfu_round_trip_and_impossible_values():
    m = t.mfu_from_throughput(1000, 7e9, 1e15)
    assert m.value == pytest.approx(0.042) and m.note == ""
    assert "impossible" in t.mfu_from_throughput(1e5, 7e9, 1e15).note


def test_cost_is_gpu_hours_times_price():
    c = t.training_cost(7200, 8, 2.5)
    assert c.steps[0].value == 16 and c.value == 40


def test_width_for_params_rounds_to_multiple():
    w = t.width_for_params(124e6, 12)
    assert w.value % 64 == 0 and w.value == 896  # √(124e6 / 144) = 928 → nearest multiple of 64


def test_bad_input():
    with pytest.raises(InvalidRequestError):
        t.training_time(7e9, 1e12, 8, 1e15, mfu=0)
    with pytest.raises(InvalidRequestError):
        t.chinchilla_tokens(-1)
