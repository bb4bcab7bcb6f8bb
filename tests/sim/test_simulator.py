"""The simulator runs the engine's real Scheduler: its schedule equals the harness's for the same arrivals."""

from __future__ import annotations

import random

import pytest
from sim_harness import Harness, fake_next_token

from nanoserve.sim.simulator import SimConfig, Simulator
from nanoserve.sim.step_model import ConstantStepModel
from nanoserve.sim.workload import SimRequest


def _workload(n: int, seed: int, gap_s: float) -> list[SimRequest]:
    rng = random.Random(seed)
    return [
        SimRequest(f"r{i}", i * gap_s, [rng.randrange(50) for _ in range(rng.randint(3, 40))],
                   rng.randint(1, 12))
        for i in range(n)
    ]


def _harness_schedule(workload, num_blocks, max_tokens, chunked=True, prefix=False, max_seqs=8):
    """Drive the harness step by step, adding each request before the first step starting at or after
    its arrival (every step takes 1 s, as the simulator's ConstantStepModel)."""
    h = Harness(num_blocks, block_size=4, max_num_seqs=max_seqs, max_num_batched_tokens=max_tokens,
                chunked=chunked, prefix=prefix, max_model_len=64)
    pending = sorted(workload, key=lambda r: r.arrival_s)
    clock, i, steps = 0.0, 0, []
    while i < len(pending) or h.sched.has_unfinished():
        while i < len(pending) and pending[i].arrival_s <= clock:
            h.add(pending[i].request_id, pending[i].prompt_token_ids, pending[i].output_len)
            i += 1
        if not h.sched.has_unfinished():
            clock = pending[i].arrival_s
            continue
        out = h.step()
        clock += 1.0
        steps.append([(s.seq.request.request_id, s.num_new_tokens) for s in out.scheduled])
    return steps, h.sched.counters.num_preemptions


def _sim(workload, num_blocks, max_tokens, chunked=True, prefix=False, max_seqs=8):
    config = SimConfig(num_blocks, block_size=4, max_num_seqs=max_seqs, max_num_batched_tokens=max_tokens,
                       enable_chunked_prefill=chunked, enable_prefix_caching=prefix, max_model_len=64)
    result = Simulator(config, ConstantStepModel(1.0), next_token=fake_next_token).run(workload)
    return result


@pytest.mark.parametrize("max_tokens", [16, 32, 64])
def test_schedule_equals_the_real_scheduler_and_changes_with_the_token_budget(max_tokens):
    work = _workload(12, seed=1, gap_s=0.7)
    result = _sim(work, 200, max_tokens)
    expected, _ = _harness_schedule(work, 200, max_tokens)
    assert [s.scheduled for s in result.steps] == expected
    # every request got exactly its output length, one token per sampling step
    assert all(len(r.token_times_s) == r.output_len for r in result.requests)


def test_token_budget_changes_the_simulated_schedule():
    work = _workload(12, seed=1, gap_s=0.7)
    a, b = _sim(work, 200, 16), _sim(work, 200, 64)
    assert [s.scheduled for s in a.steps] != [s.scheduled for s in b.steps]
    assert a.duration_s > b.duration_s  # fewer tokens per step: more steps of the same length


@pytest.mark.parametrize("chunked", [True, False])
def test_small_pool_preempts_exactly_as_the_scheduler_does(chunked):
    work = _workload(10, seed=3, gap_s=0.2)
    result = _sim(work, 16, 64, chunked=chunked)
    expected, preemptions = _harness_schedule(work, 16, 64, chunked=chunked)
    assert preemptions > 0, "the pool is meant to be small enough to preempt"
    assert [s.scheduled for s in result.steps] == expected
    assert result.num_preemptions == preemptions
    assert sum(r.num_preemptions for r in result.requests) == preemptions
    assert sum(len(s.preempted) for s in result.steps) == preemptions


def test_prefix_caching_hits_are_the_schedulers():
    shared = list(range(20))
    work = [SimRequest(f"r{i}", float(i), shared + [30 + i], 4) for i in range(4)]
    result = _sim(work, 100, 64, prefix=True)
    expected, _ = _harness_schedule(work, 100, 64, prefix=True)
    assert [s.scheduled for s in result.steps] == expected
    first_chunk = {}
    for s in result.steps:
        for rid, n in s.scheduled:
            first_chunk.setdefault(rid, n)
    # r0 computes its 21 prompt tokens; the others hit the 5 shared blocks and compute the last token
    assert first_chunk == {"r0": 21, "r1": 1, "r2": 1, "r3": 1}


def test_idle_gaps_jump_the_clock_to_the_next_arrival():
    work = [SimRequest("a", 0.0, [1, 2, 3], 2), SimRequest("b", 100.0, [4, 5, 6], 2)]
    result = _sim(work, 50, 64)
    a, b = result.requests
    assert a.token_times_s == [1.0, 2.0]
    assert b.token_times_s == [101.0, 102.0]
    assert result.duration_s == 102.0


def test_static_batching_admits_the_next_batch_only_when_all_finish():
    work = [SimRequest(f"r{i}", 0.0, [i + 1] * 4, out) for i, out in enumerate([2, 10, 2, 10])]
    config = SimConfig(100, block_size=4, max_num_seqs=8, max_num_batched_tokens=64, batching="static",
                       static_batch_size=2)
    result = Simulator(config, ConstantStepModel(1.0)).run(work)
    first = {r.request_id: r for r in result.requests}
    # batch 1 (r0, r1) runs 10 steps; r2 starts only after r1's last token
    assert first["r1"].finish_s == 10.0
    assert first["r2"].token_times_s[0] == 11.0
    cont = Simulator(SimConfig(100, block_size=4, max_num_seqs=2, max_num_batched_tokens=64),
                     ConstantStepModel(1.0)).run(work)
    assert {r.request_id: r for r in cont.requests}["r2"].token_times_s[0] == 3.0  # takes r0's slot


def test_request_too_long_for_the_pool_is_refused():
    from nanoserve.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError):
        _sim([SimRequest("big", 0.0, [1] * 60, 10)], 4, 64)


class _RecordingModel:
    """1 s per step; remembers each step's shape."""

    wake_s = 0.0

    def __init__(self) -> None:
        self.shapes = []

    def step_time_s(self, shape):
        self.shapes.append(shape)
        return 1.0

    def describe(self) -> dict:
        return {"kind": "recording"}


def test_a_step_after_an_idle_engine_carries_the_idle_time():
    # r0 runs 3 steps (t 0..3: prompt, 2 decodes); r1 arrives at 10 s to an idle engine; r2 joins r1 busy
    work = [SimRequest("r0", 0.0, [1, 2, 3], 3), SimRequest("r1", 10.0, [4, 5, 6], 3),
            SimRequest("r2", 11.5, [7, 8, 9], 1)]
    model = _RecordingModel()
    config = SimConfig(64, block_size=4, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64)
    Simulator(config, model, next_token=fake_next_token).run(work)
    assert [s.idle_s for s in model.shapes] == [0.0, 0.0, 0.0, 7.0, 0.0, 0.0]
    # the steps after the wake-up know how long ago it was (the warming term); the first run never slept
    assert [(s.wake_idle_s, s.steps_since_wake) for s in model.shapes] == [
        (0.0, 1), (0.0, 2), (0.0, 3), (7.0, 0), (7.0, 1), (7.0, 2)]


def test_a_request_finding_the_engine_idle_starts_after_the_wake_up():
    # "a" arrives at t=0 (no wait: no wake-up), "b" at 100 s to an idle engine, "c" at 100.5 s while busy
    work = [SimRequest("a", 0.0, [1, 2, 3], 2), SimRequest("b", 100.0, [4, 5, 6], 2),
            SimRequest("c", 100.5, [7, 8, 9], 1)]
    config = SimConfig(64, block_size=4, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64)
    sim = Simulator(config, ConstantStepModel(1.0, wake_s=0.25), next_token=fake_next_token)
    a, b, c = sim.run(work).requests
    assert a.token_times_s == [1.0, 2.0]
    assert b.token_times_s == [101.25, 102.25]
    assert c.token_times_s == [102.25]  # joined the running engine's next step: no wake-up of its own


def test_a_front_end_delays_arrivals_and_lengthens_each_step_by_its_tokens():
    # Without a front end: "a" at t=0 runs 1 s steps (tokens at 1, 2, 3); "b" arrives at 1.5 s and joins
    # the step starting at 2. With 0.25 s of front-end latency and 0.5 s per emitted token: "a" reaches
    # the engine at 0.25; its first step emits 1 token (ends 1.75), then "b" (there at 1.75) joins, and
    # the steps that emit 2 tokens take 2 s.
    work = [SimRequest("a", 0.0, [1, 2, 3], 3), SimRequest("b", 1.5, [4, 5, 6], 2)]
    plain = SimConfig(64, block_size=4, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64)
    a, b = Simulator(plain, ConstantStepModel(1.0), next_token=fake_next_token).run(work).requests
    assert (a.token_times_s, b.token_times_s) == ([1.0, 2.0, 3.0], [3.0, 4.0])
    served = SimConfig(64, block_size=4, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64,
                       frontend_latency_s=0.25, frontend_token_s=0.5)
    a, b = Simulator(served, ConstantStepModel(1.0), next_token=fake_next_token).run(work).requests
    assert a.token_times_s == [1.75, 3.75, 5.75]
    assert b.token_times_s == [3.75, 5.75]
    assert a.arrival_s == 0.0  # TTFT counts from the sending: 1.75 s


@pytest.mark.parametrize("field", ["frontend_latency_s", "frontend_token_s"])
def test_front_end_terms_must_be_finite_and_not_negative(field):
    from nanoserve.errors import InvalidRequestError

    for bad in (-0.001, float("inf")):
        with pytest.raises(InvalidRequestError, match=field):
            SimConfig(64, **{field: bad})
