"""Speculative decoding measured against the planner: α, c, measured and predicted speed-up (issue #13).

Pure arithmetic over two runs of the same workload in the same process, speculation off and on, each
with the engine's StepTimers attached (engine/spec_decode/step_timers.py). Only decode steps count:

    t_target  = off run: runner.execute per decode step (the plain target forward + sampling)
    t_verify  = on run:  runner.execute per decode step (the target over 1 + k tokens + verification)
    t_draft   = on run:  proposer time per decode step / k (one draft position; n-gram: its lookup)
    c         = t_draft / t_target (the planner's draft/target cost ratio)
    o         = off run: per decode step, time outside execute and proposer (scheduling, appending,
                detokenizing, stop checks)
    E         = tokens emitted by decode steps / decoded sequences (tokens per sequence per decode step;
                a prefill step verifies drafts too, and those are left out)
    α         = the i.i.d. acceptance that gives that E: solve 1 + α + … + α^k = E (the planner's α;
                it folds in the steps where the n-gram proposer found nothing to draft)
    measured  = (off decode time per token) / (on decode time per token)   (decode steps only)
    predicted = planner.speculative.speedup(α, k, t_target, t_draft)        (the textbook formula)
    with terms= the same with verify_time_s = t_verify and overhead_s = o   (the planner's optional terms)

vLLM's acceptance rate (accepted / drafted) and the per-position rates are reported beside α.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from nanoserve.engine.spec_decode.step_timers import StepTimers


@dataclass
class RunMeasure:
    """One engine run of the workload: what the bench reads off the engine afterwards."""

    timers: StepTimers
    elapsed_s: float  # the whole generate call, prefill included
    output_tokens: int
    num_drafts: int = 0  # EngineStats.spec_decode_* deltas over the run
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)


@dataclass
class SpecComparison:
    label: str
    method: str
    k: int
    acceptance_rate: float  # vLLM's: accepted / drafted
    acceptance_per_pos: list[float]  # [j]: drafts accepted at position j / drafts verified
    tokens_per_step: float  # E, per decoded sequence
    alpha: float  # the planner's α fitted to E
    t_target_s: float
    t_verify_s: float
    t_draft_s: float
    c: float
    overhead_s: float
    off_tok_s: float  # end to end (prefill included), off and on
    on_tok_s: float
    measured: float  # decode speed-up
    predicted: float  # textbook planner
    predicted_terms: float  # planner with verify_time_s and overhead_s
    identical: bool | None = None  # greedy outputs on == off (None: not checked)
    # Where they differ: [prompt index, first differing token position, tokens off] per differing prompt.
    mismatches: list[list[int]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """measured / predicted (textbook)."""
        return self.measured / self.predicted if self.predicted else 0.0

    @property
    def end_to_end(self) -> float:
        """on_tok_s / off_tok_s: the speed-up a user sees, prefill included."""
        return self.on_tok_s / self.off_tok_s if self.off_tok_s else 0.0

    @property
    def ratio_terms(self) -> float:
        return self.measured / self.predicted_terms if self.predicted_terms else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "ratio_terms": self.ratio_terms,
                "end_to_end": self.end_to_end}


def fit_alpha(tokens_per_step: float, k: int) -> float:
    """The α in [0, 1] with 1 + α + … + α^k = tokens_per_step (clamped to the reachable range)."""
    if tokens_per_step <= 1:
        return 0.0
    if tokens_per_step >= k + 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(mid**j for j in range(k + 1)) < tokens_per_step:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def first_differences(off: list[list[int]], on: list[list[int]]) -> list[list[int]]:
    """[prompt index, first position where the token lists differ, len(off)] for each prompt that differs."""
    out = []
    for i, (a, b) in enumerate(zip(off, on, strict=True)):
        if a != b:
            pos = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            out.append([i, pos, len(a)])
    return out


def _per_step(total_s: float, steps: int) -> float:
    return total_s / steps if steps else 0.0


def compare(label: str, method: str, k: int, off: RunMeasure, on: RunMeasure,
            identical: bool | None = None) -> SpecComparison:
    from nanoserve.planner.speculative import speedup

    t_off, t_on = off.timers, on.timers
    t_target = _per_step(t_off.execute_s, t_off.num_decode_steps)
    t_verify = _per_step(t_on.execute_s, t_on.num_decode_steps)
    t_draft = _per_step(t_on.propose_s, t_on.num_decode_steps) / k
    overhead = max(0.0, _per_step(t_off.other_s, t_off.num_decode_steps))
    rows = t_on.num_decode_rows
    if t_on.num_decode_tokens:  # drafts verified in prefill steps are not decode-step tokens
        e = t_on.num_decode_tokens / rows
    else:
        e = 1 + on.num_accepted_tokens / rows if rows else 1.0
    alpha = fit_alpha(e, k)
    # Decode time per token: off emits one token per decoded sequence, on emits E on average.
    off_tpt = _per_step(t_off.step_s, t_off.num_decode_rows)
    on_tpt = t_on.step_s / (rows * e) if rows else 0.0
    measured = off_tpt / on_tpt if on_tpt else 0.0
    ok = t_target > 0
    predicted = speedup(alpha, k, t_target, t_draft).value if ok else 0.0
    predicted_terms = (
        speedup(alpha, k, t_target, t_draft, verify_time_s=t_verify or None, overhead_s=overhead).value
        if ok else 0.0
    )
    return SpecComparison(
        label, method, k,
        on.num_accepted_tokens / on.num_draft_tokens if on.num_draft_tokens else 0.0,
        [a / on.num_drafts for a in on.accepted_per_pos] if on.num_drafts else [],
        e, alpha, t_target, t_verify, t_draft, t_draft / t_target if ok else 0.0, overhead,
        off.output_tokens / off.elapsed_s if off.elapsed_s else 0.0,
        on.output_tokens / on.elapsed_s if on.elapsed_s else 0.0,
        measured, predicted, predicted_terms, identical,
    )


HEADER = ["workload", "method", "k", "accept", "per position", "α (fit)", "c", "t_target ms", "t_verify ms",
          "o ms", "off tok/s", "on tok/s", "end to end ×", "measured ×", "predicted ×", "meas/pred",
          "pred+terms ×", "meas/pred+terms", "same output"]


def rows(comparisons: list[SpecComparison]) -> list[list[str]]:
    out = []
    for c in comparisons:
        out.append([
            c.label, c.method, str(c.k), f"{c.acceptance_rate:.2f}",
            " ".join(f"{a:.2f}" for a in c.acceptance_per_pos) or "-",
            f"{c.alpha:.2f}", f"{c.c:.2f}", f"{c.t_target_s * 1e3:.2f}", f"{c.t_verify_s * 1e3:.2f}",
            f"{c.overhead_s * 1e3:.2f}", f"{c.off_tok_s:.0f}", f"{c.on_tok_s:.0f}", f"{c.end_to_end:.2f}",
            f"{c.measured:.2f}", f"{c.predicted:.2f}", f"{c.ratio:.2f}",
            f"{c.predicted_terms:.2f}", f"{c.ratio_terms:.2f}",
            "-" if c.identical is None else "yes" if c.identical else f"NO ({len(c.mismatches) or '?'})",
        ])
    return out


def markdown(comparisons: list[SpecComparison]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(comparisons)]
    return "\n".join(lines) + "\n"


def print_comparisons(comparisons: list[SpecComparison], title: str) -> None:
    from nanoserve.bench.report import print_table

    print_table(HEADER, rows(comparisons), title=title)
