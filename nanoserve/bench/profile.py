"""Where an engine step's time goes: schedule, prepare inputs, forward, sample, output processing.

The engine exposes no timing hooks, so `StepProfiler.attach(engine)` wraps its methods from outside
(instance attributes shadow the class's methods; nothing in the engine's files changes) and
`detach()` restores them:

- schedule          `engine.scheduler.schedule`
- prepare inputs    `engine.runner.prepare`
- forward           `engine.runner.model.forward` + `engine.runner.model.compute_logits`
    split into linear (every nn.Linear-like module), attention (each layer's attention backend),
    fused (the whole-step native decode call, fused_decode.py: linear, attention and the rest in
    one C++ call, so they cannot be told apart) and other (norms, rotary, activation, embedding,
    residuals: the remainder)
- sample            `engine.runner.sampler`
- output processing the rest of `engine.step`: bookkeeping after the step, appending tokens,
                    detokenizing, stop checks, building RequestOutputs, runner glue.

Engine overhead = step time − forward time. Only CPU timings are exact; on CUDA the wrappers
synchronize, which perturbs what they measure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PHASES = ("schedule", "prepare", "forward", "sample", "output")
FORWARD_PARTS = ("linear", "attention", "fused", "other")


@dataclass
class StepRecord:
    num_seqs: int = 0  # sequences scheduled
    num_tokens: int = 0  # tokens run through the model
    num_prefill_seqs: int = 0  # sequences with more than one new token
    times_s: dict[str, float] = field(default_factory=dict)  # phase / forward part -> seconds
    total_s: float = 0.0


@dataclass
class PhaseSummary:
    label: str
    num_steps: int
    mean_step_ms: float
    mean_ms: dict[str, float]  # phase -> mean ms per step
    share: dict[str, float]  # phase -> fraction of step time
    overhead_share: float  # everything but the forward pass, fraction of step time
    mean_batch: float  # sequences per step
    mean_tokens: float


class StepProfiler:
    def __init__(self, split_forward: bool = True) -> None:
        self.split_forward = split_forward
        self.records: list[StepRecord] = []
        self._current: StepRecord | None = None
        self._restore: list[tuple[Any, str, Any, bool]] = []
        self._sync: Callable[[], None] = lambda: None

    # ---- wrapping --------------------------------------------------------------------------
    def _patch(self, obj: Any, name: str, new: Any) -> None:
        had = name in vars(obj)
        self._restore.append((obj, name, vars(obj).get(name), had))
        setattr(obj, name, new)

    def _timed(self, fn: Callable, key: str, sync: bool = False) -> Callable:
        def wrapper(*args, **kwargs):
            rec = self._current
            if rec is None:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if sync:
                    self._sync()
                rec.times_s[key] = rec.times_s.get(key, 0.0) + time.perf_counter() - t0

        return wrapper

    def attach(self, engine: Any) -> StepProfiler:
        """Wrap `engine`'s step and its parts; returns self. Parts the engine lacks are skipped."""
        import torch

        runner = engine.runner
        device = getattr(runner, "device", None)
        if device is not None and getattr(device, "type", "cpu") == "cuda":
            self._sync = torch.cuda.synchronize
        scheduler = engine.scheduler
        schedule = scheduler.schedule

        def timed_schedule(*args, **kwargs):
            out = self._timed(schedule, "schedule")(*args, **kwargs)
            rec = self._current
            if rec is not None:
                items = getattr(out, "scheduled", []) or []
                rec.num_seqs = len(items)
                rec.num_tokens = sum(getattr(i, "num_new_tokens", 1) for i in items)
                rec.num_prefill_seqs = sum(1 for i in items if getattr(i, "num_new_tokens", 1) > 1)
            return out

        self._patch(scheduler, "schedule", timed_schedule)
        if hasattr(runner, "prepare"):
            self._patch(runner, "prepare", self._timed(runner.prepare, "prepare"))
        model = runner.model
        self._patch(model, "forward", self._timed(model.forward, "forward", sync=True))
        if hasattr(model, "compute_logits"):
            self._patch(model, "compute_logits", self._timed(model.compute_logits, "forward", sync=True))
        if hasattr(runner, "sampler"):
            sampler = runner.sampler
            self._patch(runner, "sampler", _CallableProxy(self._timed(sampler, "sample", sync=True), sampler))
        if self.split_forward:
            self._attach_forward_parts(model)
        step = engine.step

        def timed_step(*args, **kwargs):
            rec = StepRecord()
            self._current = rec
            t0 = time.perf_counter()
            try:
                return step(*args, **kwargs)
            finally:
                rec.total_s = time.perf_counter() - t0
                self._current = None
                if rec.num_seqs:
                    self.records.append(rec)

        self._patch(engine, "step", timed_step)
        return self

    def _attach_forward_parts(self, model: Any) -> None:
        import torch

        timed_backends: set[int] = set()  # every layer shares one attention backend: wrap it once
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__:
                self._patch(module, "forward", self._timed(module.forward, "linear", sync=True))
            backend = getattr(module, "backend", None)
            is_plain = backend is not None and not isinstance(backend, torch.nn.Module)
            if is_plain and hasattr(backend, "forward") and id(backend) not in timed_backends:
                timed_backends.add(id(backend))
                self._patch(backend, "forward", self._timed(backend.forward, "attention", sync=True))
            fused = vars(module).get("fused_decode")
            if fused is not None:  # decode steps skip the modules above: time the native call whole
                timed = self._timed(fused, "fused", sync=True)
                self._patch(module, "fused_decode", _CallableProxy(timed, fused))

    def detach(self) -> None:
        for obj, name, old, had in reversed(self._restore):
            if had:
                setattr(obj, name, old)
            else:
                try:
                    delattr(obj, name)
                except AttributeError:
                    pass
        self._restore.clear()

    def reset(self) -> None:
        self.records.clear()

    # ---- results ---------------------------------------------------------------------------
    def summary(self) -> list[PhaseSummary]:
        """All steps, decode-only steps, and steps with a prefill, each summarised."""
        groups = [
            ("all steps", self.records),
            ("decode-only steps", [r for r in self.records if r.num_prefill_seqs == 0]),
            ("steps with prefill", [r for r in self.records if r.num_prefill_seqs > 0]),
        ]
        return [summarize_records(label, recs) for label, recs in groups if recs]

    def by_batch(self, batch_sizes: tuple[int, ...]) -> list[PhaseSummary]:
        """Decode-only steps whose batch is exactly one of `batch_sizes`."""
        out = []
        for b in batch_sizes:
            recs = [r for r in self.records if r.num_prefill_seqs == 0 and r.num_seqs == b]
            if recs:
                out.append(summarize_records(f"decode batch {b}", recs))
        return out


class _CallableProxy:
    """Stands in for a callable object (the sampler): calls go through `fn`, attributes to `target`."""

    def __init__(self, fn: Callable, target: Any) -> None:
        self._fn, self._target = fn, target

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def summarize_records(label: str, recs: list[StepRecord]) -> PhaseSummary:
    n = len(recs)
    total = sum(r.total_s for r in recs)
    sums = {p: 0.0 for p in PHASES + FORWARD_PARTS}
    for r in recs:
        named = sum(r.times_s.get(p, 0.0) for p in PHASES if p != "output")
        sums["output"] += max(0.0, r.total_s - named)
        for p in PHASES[:-1] + FORWARD_PARTS[:-1]:
            sums[p] += r.times_s.get(p, 0.0)
        parts = FORWARD_PARTS[:-1]
        if any(p in r.times_s for p in parts):
            split_s = sum(r.times_s.get(p, 0.0) for p in parts)
            sums["other"] += max(0.0, r.times_s.get("forward", 0.0) - split_s)
    mean_ms = {p: s / n * 1e3 for p, s in sums.items()}
    share = {p: (s / total if total else 0.0) for p, s in sums.items()}
    return PhaseSummary(
        label,
        n,
        total / n * 1e3,
        mean_ms,
        share,
        1.0 - share["forward"],
        sum(r.num_seqs for r in recs) / n,
        sum(r.num_tokens for r in recs) / n,
    )


def print_profile(summaries: list[PhaseSummary]) -> None:
    from nanoserve.bench.report import print_table

    header = (
        ["steps", "n", "batch", "tokens", "step ms"]
        + [f"{p} ms" for p in PHASES]
        + ["(linear", "attn", "fused", "other)", "overhead"]
    )
    rows = []
    for s in summaries:
        rows.append(
            [s.label, s.num_steps, f"{s.mean_batch:.1f}", f"{s.mean_tokens:.0f}", f"{s.mean_step_ms:.1f}"]
            + [f"{s.mean_ms[p]:.2f} ({s.share[p]:.0%})" for p in PHASES]
            + [f"{s.mean_ms[p]:.1f}" for p in FORWARD_PARTS]
            + [f"{s.overhead_share:.1%}"]
        )
    print_table(header, rows, title="engine step profile (mean per step; overhead = all but forward)")
