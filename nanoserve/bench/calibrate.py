"""`nanoserve bench calibrate`: this engine's step time on this machine, as the simulator's profile.

  nanoserve bench calibrate --random-model qwen2.5-0.5b --num-cpu-threads 2 --output qwen.json
  nanoserve simulate --profile qwen.json --num-gpu-blocks-override 512 ...

The real engine (LLMEngine from EngineArgs' flags) runs controlled batches and every `engine.step()` is
timed whole (schedule, forward, sampling, output processing: what a step costs the engine loop):

- prefill: n requests with P-token prompts (n from --prefill-batches, when n·P fits the token budget;
  P from --prefill-tokens; a prompt longer than max_num_batched_tokens is chunked, which adds chunks
  that start past 0);
- decode: B requests decoding at context C (B from --decode-batches, C from --contexts; 3 × --repeats
  steps), each with a prompt of its own (a shared prefix would keep every row's KV in cache);
- mixed: B decodes (the smallest B, and 8) plus a fresh P-token prompt in one step;
- idle: a P-token prompt arriving at an engine that has been idle for G seconds (G from --idle-gaps): a
  light-load step, slower than the same step run back to back (the cold_start terms of the fit), and
  the WAKE_DECODES decode steps after it, each its own point (the warming term). The
  time from the end of the wait to the step's start (the sleep's overshoot and add_request: 0.29 ms
  on the demo model here) is the profile's wake_s: the simulator starts a request that finds the
  engine idle that much after its arrival.

The process is set up as `nanoserve serve` sets itself up: after loading, everything alive is collected
once and frozen (gc.freeze), so full collections do not rescan torch's and the model's objects; without
it a full collection costs ~180 ms on the toy model's process, inside whichever step triggers it.

Each step's shape is read from the scheduler's own output with the simulator's StepShape.of, so the
profile's features mean exactly what the simulator computes. Each point keeps the median step time of
--repeats steps. The profile is JSON: {"samples": [{"kind", "decode_batch", "prefill_tokens",
"context_tokens", "attention_pairs", "prefill_seqs", "prefill_step", "cold_start", "cold_start_slow",
"step_s"}, ...],
"fit": {...}, "machine": {...}};
sim/step_model.py's CalibratedStepModel.from_file() fits it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from nanoserve.bench.canary import canary_s, memory_canary_s

DEFAULT_DECODE_BATCHES = "1,4,16,48"
DEFAULT_CONTEXTS = "32,512"
DEFAULT_PREFILL_TOKENS = "16,64,256,1024"
DEFAULT_PREFILL_BATCHES = "1,8,32"
DEFAULT_IDLE_GAPS = "0.005,0.02,0.05,0.1,0.2"
WAKE_DECODES = 6  # decode steps timed after each idle point's wake-up step


@dataclass
class StepTimer:
    """Wraps one engine's scheduler.schedule (an instance attribute, the class untouched) to read each
    step's shape, and times engine.step() calls made through `step()`. A step's idle_s is the time since
    the previous step returned, when the engine had no request in between (else 0)."""

    engine: Any
    samples: list[dict[str, Any]] = field(default_factory=list)
    _last: Any = None
    last_end: float = field(default_factory=time.perf_counter)  # when the last step returned
    _was_idle: bool = True
    _wake_idle_s: float = 0.0  # the last wake-up's idle time and the steps since (StepShape's)
    _since_wake: int = 0

    def __post_init__(self) -> None:
        sched = self.engine.scheduler
        inner = sched.schedule

        def schedule():
            self._last = inner()
            return self._last

        sched.schedule = schedule
        self._inner = inner

    def detach(self) -> None:
        del self.engine.scheduler.schedule

    def mark_idle(self) -> None:
        """Call when the engine has no request left: the time until the next step is idle time."""
        self._was_idle = True
        self.last_end = time.perf_counter()

    def step(self, kind: str = "", record: bool = True) -> list:
        self._last = None
        t0 = time.perf_counter()
        idle_s = t0 - self.last_end if self._was_idle else 0.0
        if idle_s > 0:
            self._wake_idle_s, self._since_wake = idle_s, 0
        else:
            self._since_wake += 1
        outs = self.engine.step()
        self.last_end = t1 = time.perf_counter()
        self._was_idle = not self.engine.has_unfinished_requests()
        if record and self._last is not None and not self._last.is_empty:
            shape = shape_features(self._last, idle_s, self._wake_idle_s, self._since_wake)
            self.samples.append({"kind": kind, **shape, "step_s": t1 - t0})
        return outs


def shape_features(out: Any, idle_s: float = 0.0, wake_idle_s: float = 0.0,
                   steps_since_wake: int = 0) -> dict[str, float]:
    """The simulator's StepShape of a SchedulerOutput (after idle_s of idle engine; steps_since_wake
    steps after a wake-up from wake_idle_s of idle), by feature name."""
    from dataclasses import replace

    from nanoserve.sim.simulator import Simulator
    from nanoserve.sim.step_model import shape_features as features

    shape = replace(Simulator._shape(out), idle_s=idle_s, wake_idle_s=wake_idle_s,
                    steps_since_wake=steps_since_wake)
    return features(shape)


@dataclass
class Calibrator:
    engine: Any
    vocab_size: int
    repeats: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        self.timer = StepTimer(self.engine)
        self.rng = random.Random(self.seed)
        self._ids = 0

    def _prompt(self, n: int) -> list[int]:
        return [self.rng.randrange(3, self.vocab_size) for _ in range(n)]

    def _add(self, prompt: list[int], max_tokens: int) -> str:
        from nanoserve import SamplingParams

        self._ids += 1
        rid = f"cal-{self._ids}"
        self.engine.add_request(rid, {"prompt_token_ids": prompt},
                                SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0))
        return rid

    def _drain(self, ids: list[str]) -> None:
        self.engine.abort_request(ids)
        while self.engine.has_unfinished_requests():
            self.timer.step(record=False)
        self.timer._was_idle = False  # busy calibrating, not idle, until the next point's first step

    def _point(self, kind: str, start: int) -> dict[str, Any]:
        """The median step time over the samples recorded since `start`, with their mean features."""
        got = self.timer.samples[start:]
        del self.timer.samples[start:]
        return self._summary(kind, got)

    def _summary(self, kind: str, got: list[dict[str, Any]]) -> dict[str, Any]:
        if not got:
            raise RuntimeError(f"calibration point {kind} recorded no step")
        from nanoserve.sim.step_model import ALL_FEATURES

        point = {"kind": kind}
        for k in ALL_FEATURES:
            point[k] = round(statistics.fmean(s[k] for s in got), 4)
        point["step_s"] = statistics.median(s["step_s"] for s in got)
        point["num_steps"] = len(got)
        return point

    def prefill(self, tokens: int, num_prompts: int = 1) -> dict[str, Any]:
        start = len(self.timer.samples)
        for _ in range(self.repeats):
            ids = [self._add(self._prompt(tokens), 1) for _ in range(num_prompts)]
            while self.engine.has_unfinished_requests():
                self.timer.step("prefill")
            self._drain(ids)
        return self._point(f"prefill {num_prompts}x P={tokens}", start)

    def after_idle(self, tokens: int, idle_s: float) -> list[dict[str, Any]]:
        """A prompt arriving after idle_s of idle engine: the first step of a light-load request, and
        the WAKE_DECODES decode steps after it (points of their own: the warming term)."""
        wake_s = []
        steps: list[list[dict[str, Any]]] = [[] for _ in range(1 + WAKE_DECODES)]
        for _ in range(self.repeats):
            self.timer.mark_idle()
            due = time.perf_counter() + idle_s
            time.sleep(idle_s)  # as a serving loop waits for the next request
            ids = [self._add(self._prompt(tokens), 2 + WAKE_DECODES)]
            wake_s.append(time.perf_counter() - due)  # the wait's overshoot and admitting the request
            for d in range(1 + WAKE_DECODES):
                start = len(self.timer.samples)
                self.timer.step("idle")
                steps[d] += self.timer.samples[start:]
                del self.timer.samples[start:]
            self._drain(ids)
        kind = f"idle {idle_s * 1e3:g} ms P={tokens}"
        points = [self._summary(kind if d == 0 else f"{kind} decode {d}", got) for d, got in enumerate(steps)]
        points[0]["wake_s"] = statistics.median(wake_s)
        return points

    def fill_steps(self, batch: int, context: int) -> int:
        """Steps the scheduler takes to prefill `batch` prompts of `context` tokens: the first prompts
        decode a token in each of them (chunked prefill puts decodes first) while the last wait."""
        return -(-batch * context // self.engine.scheduler_config.max_num_batched_tokens) + 1

    def _decoding_batch(self, batch: int, context: int, extra_steps: int) -> list[str]:
        """`batch` requests that have their first token, each with its own prompt of `context` tokens,
        and room for `extra_steps` more tokens after the last of them has started.

        Not prompts sharing a cached prefix (cheaper to build, as this did until session 11): every row's
        attention then reads the same KV blocks, which stay in cache, while a workload's rows read their
        own. On the demo model a batch of 255 at context 64 decoded 17-27% faster with the shared prefix
        than with distinct prompts (Qwen2.5-0.5B shape, 32 at 512: 4-6%)."""
        # Without the fill steps' tokens in max_tokens the first prompts finished during the timed
        # steps: "decode B=255 C=104" on the demo model ran at a mean batch of 132.
        room = min(extra_steps + 2 + self.fill_steps(batch, context),
                   self.engine.scheduler_config.max_model_len - context)
        ids = [self._add(self._prompt(context), room) for _ in range(batch)]
        while not self._all_started(ids):
            self.timer.step(record=False)
        return ids

    def _all_started(self, ids: list[str]) -> bool:
        for rid in ids:
            parent = self.engine.requests.get(rid)
            if parent is not None and parent.metrics.first_token_time is None:
                return False
        return True

    def decode(self, batch: int, context: int) -> dict[str, Any]:
        steps = 3 * self.repeats  # decode steps are short and cheap to build: more of them, less noise
        ids = self._decoding_batch(batch, context, steps)
        start = len(self.timer.samples)
        for _ in range(steps):
            self.timer.step("decode")
        self._drain(ids)
        return self._point(f"decode B={batch} C={context}", start)

    def mixed(self, batch: int, context: int, tokens: int) -> dict[str, Any]:
        ids = self._decoding_batch(batch, context, 2 * self.repeats)
        start = len(self.timer.samples)
        for _ in range(self.repeats):
            ids.append(self._add(self._prompt(tokens), 1))
            self.timer.step("mixed")  # the B decodes and the new prompt's first chunk
            while not self._all_started(ids):
                self.timer.step(record=False)
        self._drain(ids)
        return self._point(f"mixed B={batch} C={context} P={tokens}", start)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def calibrate(
    engine: Any,
    vocab_size: int,
    decode_batches: list[int],
    contexts: list[int],
    prefill_tokens: list[int],
    prefill_batches: tuple[int, ...] = (1,),
    repeats: int = 5,
    idle_gaps_s: tuple[float, ...] = (),
    seed: int = 0,
    log: Any = None,
    passes: int = 1,
) -> list[dict[str, Any]]:
    """The profile's samples: every prefill, decode and mixed point that fits the engine's limits.

    With passes > 1 the whole sweep runs that many times and each point keeps the median of its passes'
    step times: a point's steps are then spread over the calibration instead of falling in one stretch
    of seconds, in which this shared box's speed can be 10-20% off its average (one sweep measured
    decode B=1 at 34.6 ms and B=2 at 30.3 ms, C=512, on the Qwen shape)."""
    sc = engine.scheduler_config
    pool_tokens = engine.cache_config.num_tokens
    cal = Calibrator(engine, vocab_size, repeats, seed)
    cal.decode(1, 8)  # warm-up: first calls pay one-off costs
    del cal.timer.samples[:]
    limit = min(sc.max_model_len, pool_tokens) - 3 * repeats - 4
    by_kind: dict[str, list[dict[str, Any]]] = {}

    def add(point: dict[str, Any]) -> None:
        # the machine's speed state around the point (bench/canary.py)
        point["canary_s"], point["memory_canary_s"] = canary_s(), memory_canary_s()
        by_kind.setdefault(point["kind"], []).append(point)
        if log:
            log(f"{point['kind']:<28} {point['step_s'] * 1e3:9.2f} ms  ({point['num_steps']} steps)")

    for i in range(passes):
        if log and passes > 1:
            log(f"pass {i + 1} of {passes}")
        _sweep(cal, add, engine, decode_batches, contexts, prefill_tokens, prefill_batches, idle_gaps_s,
               limit)
    cal.timer.detach()
    return [_merge(runs) for runs in by_kind.values()]


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One point from its passes: the median step time (and wake time), the features' mean."""
    from nanoserve.sim.step_model import ALL_FEATURES

    if len(runs) == 1:
        return runs[0]
    point = {"kind": runs[0]["kind"]}
    for k in ALL_FEATURES:
        point[k] = round(statistics.fmean(r[k] for r in runs), 4)
    point["step_s"] = statistics.median(r["step_s"] for r in runs)
    point["num_steps"] = sum(r["num_steps"] for r in runs)
    if "wake_s" in runs[0]:
        point["wake_s"] = statistics.median(r["wake_s"] for r in runs)
    point["pass_step_s"] = [r["step_s"] for r in runs]
    for key in ("canary_s", "memory_canary_s"):
        if all(key in r for r in runs):
            point[key] = statistics.median(r[key] for r in runs)
            point[f"pass_{key}"] = [r[key] for r in runs]
    return point


def _sweep(cal: Calibrator, add: Any, engine: Any, decode_batches: list[int], contexts: list[int],
           prefill_tokens: list[int], prefill_batches: tuple[int, ...], idle_gaps_s: tuple[float, ...],
           limit: int) -> None:
    """Every point once, in calibrate's order."""
    sc = engine.scheduler_config
    repeats = cal.repeats
    for n in prefill_batches:
        for p in prefill_tokens:
            if p <= limit and (n == 1 or n * p <= sc.max_num_batched_tokens) and n <= sc.max_num_seqs:
                add(cal.prefill(p, n))
    for c in contexts:
        c = min(c, limit)
        for b in decode_batches:
            b = min(b, sc.max_num_seqs - 1)
            # every sequence holds its own context and decode room (no more than max_model_len: the
            # room is capped there, so that the largest batch is measured at the longest context too)
            bs = engine.cache_config.block_size
            room = 3 * repeats + 4 + cal.fill_steps(b, c)
            if b * -(-min(c + room, sc.max_model_len) // bs) > engine.cache_config.num_blocks:
                continue
            add(cal.decode(b, c))
    # A prompt beside a few decodes (light load) and beside 8 (busier): the fixed cost of a prompt step
    # is not the same at both, and a light-load TTFT is made of the first kind.
    c = min(max(contexts), limit)
    for b in sorted({min(decode_batches), min(8, max(decode_batches), sc.max_num_seqs - 1)}):
        for p in prefill_tokens[1:]:
            if p + b <= sc.max_num_batched_tokens:
                add(cal.mixed(b, c, min(p, limit)))
    # Light load: a prompt after the engine sat idle (the first step of a request arriving alone).
    for gap in idle_gaps_s:
        for p in prefill_tokens[:2]:
            if p + 2 + WAKE_DECODES <= limit:
                for point in cal.after_idle(p, gap):
                    add(point)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nanoserve.bench.engine_flags import add_engine_arguments

    p.add_argument("--decode-batches", default=DEFAULT_DECODE_BATCHES, help="decode batch sizes B")
    p.add_argument("--contexts", default=DEFAULT_CONTEXTS, help="context lengths C of the decode points "
                   "(capped at what max-model-len and the pool allow)")
    p.add_argument("--prefill-tokens", default=DEFAULT_PREFILL_TOKENS, help="prompt lengths P")
    p.add_argument("--prefill-batches", default=DEFAULT_PREFILL_BATCHES,
                   help="prompts per prefill point (n prompts of P tokens in one step, when they fit)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per point (the median is kept)")
    p.add_argument("--passes", type=int, default=1,
                   help="sweeps over all the points; each point keeps the median of its passes (spreads a "
                   "point's steps over the calibration, against the machine's drift)")
    p.add_argument("--idle-gaps", default=DEFAULT_IDLE_GAPS,
                   help="seconds of idle engine before the idle points' prompt step ('' for none)")
    p.add_argument("--output", "-o", default="step_profile.json", metavar="FILE.json")
    add_engine_arguments(p)


def run(args: argparse.Namespace) -> int:
    from nanoserve import LLM, freeze_startup_objects
    from nanoserve.bench.engine_flags import engine_kwargs
    from nanoserve.bench.models import resolve_model, vocab_size
    from nanoserve.sim.step_model import CalibratedStepModel

    model_dir = resolve_model(args.model, args.random_model, args.random_layers)
    kwargs = engine_kwargs(args, model_dir)
    llm = LLM(model=model_dir, **kwargs)
    engine = llm.llm_engine
    freeze_startup_objects()  # as the served engine is
    t0 = time.perf_counter()
    gaps = tuple(float(x) for x in args.idle_gaps.split(",") if x.strip())
    samples = calibrate(engine, vocab_size(model_dir), _ints(args.decode_batches), _ints(args.contexts),
                        _ints(args.prefill_tokens), tuple(_ints(args.prefill_batches)), args.repeats,
                        gaps, args.seed or 0, log=print, passes=args.passes)
    fit = CalibratedStepModel.fit(samples, args.output)
    profile = {
        "benchmark": "calibrate",
        "model": model_dir,
        "engine_args": {k: v for k, v in kwargs.items() if isinstance(v, str | int | float | bool | None)},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "num_cpu_threads": args.num_cpu_threads},
        "elapsed_s": time.perf_counter() - t0,
        "samples": samples,
        "fit": fit.describe(),
    }
    wake = [s["wake_s"] for s in samples if "wake_s" in s]
    if wake:  # from a request's arrival at an idle engine to its first step (simulator's wake_s)
        profile["wake_s"] = statistics.median(wake)
    with open(args.output, "w") as f:
        json.dump(profile, f, indent=2)
    worst = max(abs(fit.predict_s(s) - s["step_s"]) / s["step_s"] for s in samples)
    print(f"{len(samples)} points in {profile['elapsed_s']:.1f} s -> {args.output} "
          f"(fit: worst point off by {worst:.1%})")
    return 0
