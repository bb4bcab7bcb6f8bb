"""The measured side of `python -m nanoserve.sim.validate`: the replay's clock and the replays' summary."""

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from nanoserve.sim import validate
from nanoserve.sim.workload import SimRequest

STEP_S = 0.010  # every fake engine step
HARNESS_S = 0.005  # the timer's bookkeeping after each step


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def output(rid: str, num_tokens: int) -> SimpleNamespace:
    return SimpleNamespace(request_id=rid, outputs=[SimpleNamespace(token_ids=[0] * num_tokens)])


@dataclass
class FakeEngine:
    """One token per running request per step; a step takes STEP_S on the fake clock."""

    clock: FakeClock
    left: dict[str, int] = field(default_factory=dict)
    made: dict[str, int] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)  # an earlier run's aborted requests, reported once

    def get_stats(self):
        return SimpleNamespace(num_preemptions=0)

    def add_request(self, rid, prompt, params) -> None:
        self.left[rid], self.made[rid] = params.max_tokens, 0

    def has_unfinished_requests(self) -> bool:
        return bool(self.left)

    def step(self) -> list:
        self.clock.now += STEP_S
        outs = [output(rid, 0) for rid in self.stale]
        self.stale = []
        for rid in list(self.left):
            self.made[rid] += 1
            self.left[rid] -= 1
            outs.append(output(rid, self.made[rid]))
            if not self.left[rid]:
                del self.left[rid]
        return outs


class SlowTimer:
    """A StepTimer whose bookkeeping after each step takes HARNESS_S."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.last_end = engine, 0.0

    def step(self, kind: str = "") -> list:
        outs = self.engine.step()
        self.last_end = self.engine.clock.now
        self.engine.clock.now += HARNESS_S
        return outs


def test_replay_takes_the_harness_time_off_the_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(validate, "time", clock)
    engine = FakeEngine(clock, stale=["cal-7"])
    work = [SimRequest("a", 0.0, [1, 2, 3], 3), SimRequest("b", 0.0, [4, 5], 2)]
    results, duration, preempted = validate.replay(engine, work, SlowTimer(engine))
    # tokens at 10, 20, 30 ms of engine time, not 10, 25, 40 (the timer's 5 ms a step left in)
    assert duration == pytest.approx(3 * STEP_S)
    a, b = results
    assert a.ttft_s == pytest.approx(STEP_S) and a.itl_s == pytest.approx([STEP_S, STEP_S])
    assert b.output_len == 2 and b.latency_s == pytest.approx(2 * STEP_S)
    assert preempted == 0


def test_an_idle_engine_waits_for_the_next_arrival_on_the_engine_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(validate, "time", clock)
    engine = FakeEngine(clock)
    work = [SimRequest("a", 0.0, [1], 2), SimRequest("b", 0.5, [2], 1)]
    results, duration, _ = validate.replay(engine, work, SlowTimer(engine))
    assert results[1].ttft_s == pytest.approx(STEP_S)  # admitted at 0.5 s, first token one step later
    assert duration == pytest.approx(0.5 + STEP_S)


def test_fresh_prompts_keep_arrivals_and_lengths_and_change_the_ids():
    work = [SimRequest("a", 0.1, list(range(40)), 7), SimRequest("b", 0.3, list(range(5)), 2)]
    fresh = validate.fresh_prompts(work, seed=3, vocab_size=1000)
    assert [(r.request_id, r.arrival_s, r.prompt_len, r.output_len) for r in fresh] == [
        ("a", 0.1, 40, 7), ("b", 0.3, 5, 2)]
    assert fresh[0].prompt_token_ids != work[0].prompt_token_ids
    assert all(0 <= t < 1000 for r in fresh for t in r.prompt_token_ids)
    assert validate.fresh_prompts(work, 3, 1000)[0].prompt_token_ids == fresh[0].prompt_token_ids
    assert validate.fresh_prompts(work, 4, 1000)[0].prompt_token_ids != fresh[0].prompt_token_ids


def test_median_summary_keeps_each_measures_median_and_the_spread():
    runs = [{k: v for k in validate.COMPARED} for v in (10.0, 12.0, 11.0)]
    out = validate.median_summary(runs)
    assert all(out[k] == 11.0 for k in validate.COMPARED)
    assert out["spread"]["output_throughput"] == pytest.approx(0.2)
