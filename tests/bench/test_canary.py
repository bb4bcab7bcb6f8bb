"""bench/canary.py: the machine-speed canary, its sampling log and the slow-state fraction."""

import pytest

from nanoserve.bench import canary


def test_canary_times_a_loop_that_grows_with_its_length():
    short = min(canary.canary_s(2_000) for _ in range(5))
    long = min(canary.canary_s(200_000) for _ in range(5))
    assert 0 < short < long


def test_the_memory_canary_copies_a_buffer_past_the_last_level_cache():
    assert canary.CANARY_BYTES > 32 << 20
    assert canary.memory_canary_s() > 0
    assert canary._buffers[0].nbytes == canary.CANARY_BYTES


def test_the_log_samples_each_canary_at_most_once_per_its_interval(monkeypatch):
    monkeypatch.setattr(canary, "canary_s", lambda loops=canary.CANARY_LOOPS: 0.001)
    monkeypatch.setattr(canary, "memory_canary_s", lambda: 0.002)
    log = canary.CanaryLog(every_s=0.1, memory_every_s=0.3)
    taken = [log.maybe_sample(t) for t in (0.0, 0.05, 0.099, 0.1, 0.15, 0.31)]
    assert taken == [True, False, False, True, False, True]
    assert log.samples_s == [0.001] * 3
    assert log.memory_samples_s == [0.002] * 2  # at 0 and 0.31 s


def test_slow_fraction_counts_samples_past_the_factor():
    fastest = 0.5e-3
    samples = [0.5e-3, 0.6e-3, 0.64e-3, 0.66e-3, 1.0e-3]  # 1.3 x 0.5 ms = 0.65 ms
    assert canary.slow_fraction(samples, fastest) == pytest.approx(2 / 5)
    assert canary.slow_fraction([], fastest) == 0.0
