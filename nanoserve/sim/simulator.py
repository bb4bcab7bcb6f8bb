"""The discrete-event serving simulation: the engine's own Scheduler and BlockManager, a step-time model
in place of the model runner.

One loop iteration is one engine step: requests that have arrived by the clock join the scheduler (as
n = 1 Requests, as the engine hands them over after its fan-out); scheduler.schedule() picks the step;
the step-time model says how long it takes; the clock advances; scheduler.update_after_step() runs;
every sequence whose chunk reached its end gets one token (a deterministic fake id) stamped with the
clock, and finishes at its output length. When nothing is left to run the clock jumps to the next
arrival plus the step model's wake_s (the serving loop's wake-up and admitting the request, from the
calibration; 0 for the analytic model), and the step after that gap is told how long the engine sat
idle (StepShape.idle_s: a cold step costs more). The policy (budgets, chunking, preemption, prefix
caching) is therefore exactly the engine's. Behind an HTTP front end (SimConfig.frontend_*), requests
reach the engine later and each emitted token lengthens its step.

Static batching (`batching="static"`): up to `static_batch_size` arrived requests start together and
the next batch is admitted only when every one of them has finished (seed 004 exercise 17); the same
scheduler runs each batch, so the only difference from continuous batching is the admission rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from nanoserve.config import SchedulerConfig
from nanoserve.engine.block_manager import BlockManager
from nanoserve.engine.scheduler import Scheduler, SchedulerOutput
from nanoserve.engine.sequence import Request
from nanoserve.errors import InvalidRequestError
from nanoserve.outputs import RequestMetrics
from nanoserve.sim.step_model import StepModel, StepShape
from nanoserve.sim.workload import SimRequest

BATCHING_MODES = ("continuous", "static")


def default_next_token(token_ids: list[int]) -> int:
    """The fake model: a fixed function of the length, so runs are deterministic."""
    return (len(token_ids) * 7919) % 32_000


@dataclass
class SimConfig:
    num_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    batching: str = "continuous"
    static_batch_size: int | None = None  # static batching's B (default: max_num_seqs)
    # An HTTP front end before the engine (sim/frontend.py measures both): a request reaches the engine
    # frontend_latency_s after it was sent (parsing, tokenizing, admission, the first chunk's way back),
    # and every token a step emits costs frontend_token_s of front-end work that shares the process
    # with the engine thread, so the step takes that much longer. 0: the engine alone (LLM, bench).
    frontend_latency_s: float = 0.0
    frontend_token_s: float = 0.0

    def __post_init__(self) -> None:
        if self.batching not in BATCHING_MODES:
            raise InvalidRequestError(f"batching must be one of {BATCHING_MODES}", "batching")
        if self.num_blocks < 1:
            raise InvalidRequestError("the KV pool needs at least one block", "num_blocks")
        for name in ("frontend_latency_s", "frontend_token_s"):
            value = getattr(self, name)
            if not 0.0 <= value < float("inf"):
                raise InvalidRequestError(f"{name} must be a finite number >= 0, got {value!r}", name)


@dataclass
class RequestRecord:
    request_id: str
    arrival_s: float
    prompt_len: int
    output_len: int
    token_times_s: list[float] = field(default_factory=list)  # clock when each output token was sampled
    num_preemptions: int = 0

    @property
    def finish_s(self) -> float:
        return self.token_times_s[-1]


@dataclass
class StepRecord:
    start_s: float
    duration_s: float
    scheduled: list[tuple[str, int]]  # (request id, tokens computed) in the scheduler's order
    preempted: list[str]
    num_running: int  # after the step
    num_waiting: int  # in the scheduler's queue and (static batching) not yet admitted, after the step
    kv_usage: float  # fraction of the KV blocks in use, after the step


@dataclass
class SimResult:
    requests: list[RequestRecord]
    steps: list[StepRecord]
    num_preemptions: int
    duration_s: float  # time 0 to the last token


class Simulator:
    def __init__(
        self,
        config: SimConfig,
        step_model: StepModel,
        next_token: Callable[[list[int]], int] = default_next_token,
    ) -> None:
        self.config = config
        self.step_model = step_model
        self.next_token = next_token
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens, config.max_model_len,
                            config.enable_chunked_prefill),
            self.block_manager,
        )
        self._orders = itertools.count()

    def _check(self, r: SimRequest) -> None:
        """What the engine rejects up front; anything else fits the pool alone, so it cannot deadlock."""
        total = r.prompt_len + r.output_len
        if total > self.config.max_model_len:
            raise InvalidRequestError(
                f"{r.request_id}: prompt + output = {total} tokens > max_model_len "
                f"{self.config.max_model_len}",
                "max_model_len")
        if self.block_manager.blocks_needed(total) > self.config.num_blocks:
            raise InvalidRequestError(
                f"{r.request_id}: {total} tokens need more than the pool's {self.config.num_blocks} blocks",
                "num_blocks")

    def run(self, workload: list[SimRequest]) -> SimResult:
        arrivals = sorted(workload, key=lambda r: r.arrival_s)
        for r in arrivals:
            self._check(r)
        records = {r.request_id: RequestRecord(r.request_id, r.arrival_s, r.prompt_len, r.output_len)
                   for r in arrivals}
        if len(records) != len(arrivals):
            raise InvalidRequestError("request ids must be unique", "request_id")
        static = self.config.batching == "static"
        batch_size = self.config.static_batch_size or self.config.max_num_seqs
        sched = self.scheduler
        queue: list[SimRequest] = []  # arrived, not yet given to the scheduler (static batching)
        steps: list[StepRecord] = []
        clock, i = 0.0, 0
        idle_since: float | None = 0.0  # when the engine last ran out of work; None while it has some
        wake_idle_s, since_wake = 0.0, 0  # the last wake-up: the idle time before it, steps since
        latency = self.config.frontend_latency_s
        while i < len(arrivals) or queue or sched.has_unfinished():
            while i < len(arrivals) and arrivals[i].arrival_s + latency <= clock:
                queue.append(arrivals[i])
                i += 1
            if not static or not sched.has_unfinished():
                take = queue[:batch_size] if static else queue
                for r in take:
                    self._add(r)
                del queue[: len(take)]
            if not sched.has_unfinished():
                if arrivals[i].arrival_s + latency > clock:  # idle until the next arrival, then wake up
                    clock = arrivals[i].arrival_s + latency + self.step_model.wake_s
                continue
            out = sched.schedule()
            if out.is_empty:
                raise RuntimeError("the scheduler made no progress with requests pending")
            idle_s = 0.0 if idle_since is None else clock - idle_since
            if idle_s > 0:
                wake_idle_s, since_wake = idle_s, 0
            else:
                since_wake += 1
            shape = replace(self._shape(out), idle_s=idle_s, wake_idle_s=wake_idle_s,
                            steps_since_wake=since_wake)
            dt = self.step_model.step_time_s(shape)
            dt += self.config.frontend_token_s * sum(1 for item in out.scheduled if item.samples)
            start = clock
            clock += dt
            sched.update_after_step(out)
            for item in out.scheduled:
                if not item.samples:
                    continue
                seq = item.seq
                seq.token_ids.append(self.next_token(seq.token_ids))
                records[seq.request.request_id].token_times_s.append(clock)
                if seq.num_output_tokens >= seq.request.max_tokens:
                    sched.finish_seq(seq, "length")
            for seq in out.preempted:
                records[seq.request.request_id].num_preemptions += 1
            idle_since = None if sched.has_unfinished() else clock
            steps.append(StepRecord(
                start, dt, [(s.seq.request.request_id, s.num_new_tokens) for s in out.scheduled],
                [s.request.request_id for s in out.preempted], sched.num_running,
                sched.num_waiting + len(queue),
                self.block_manager.stats().usage,
            ))
        return SimResult(list(records.values()), steps, sched.counters.num_preemptions, clock)

    def _add(self, r: SimRequest) -> None:
        request = Request(r.request_id, list(r.prompt_token_ids), None, next(self._orders), r.output_len,
                          metrics=RequestMetrics(arrival_time=r.arrival_s))
        self.scheduler.add_request(request)

    @staticmethod
    def _shape(out: SchedulerOutput) -> StepShape:
        """A chunk is a decode when it computes one token past a prompt already in the cache."""
        return StepShape.of([
            (s.start, s.num_new_tokens, s.num_new_tokens == 1 and s.start >= s.seq.num_prompt_tokens)
            for s in out.scheduled
        ])
