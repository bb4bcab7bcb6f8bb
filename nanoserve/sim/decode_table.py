"""Decode-only steps by interpolation between the profile's measured decode points.

The calibrated model's linear fit (step_model.py) spans every kind of step with one intercept and a few
slopes. Its decode curve is a compromise between the points: on the demo model it put decode B=1 11%
under its own measurement (0.167 vs 0.187 ms), and B=256 20% over what a saturated workload measured.
A light-load TPOT is made of B=1-3 steps and a saturated one of B=256 steps, so each needs the curve
where it was measured. A decode-only step (no prompt chunk) is therefore read off the measured points,
as vidur reads its operators' profiles: piecewise linear in the batch at each measured context, then
linear in the context per sequence between (or beyond) the two nearest contexts. Beyond the measured
batches the end segments continue.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise linear through (xs, ys), xs increasing, the end segments extended."""
    if len(xs) == 1:
        return ys[0]
    i = 1
    while i < len(xs) - 1 and x > xs[i]:
        i += 1
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class ContextLevel:
    context: float  # mean context tokens per sequence of the level's points
    batches: tuple[float, ...]  # increasing
    step_s: tuple[float, ...]


@dataclass(frozen=True)
class DecodeTable:
    levels: tuple[ContextLevel, ...]  # by increasing context
    context_slope_s: float = 0.0  # seconds per context token, for a table of one context
    # Seconds per unit of the warming feature (step_model.warming): what the decode steps soon after a
    # wake-up measured over the table, fitted to them (relative least squares through 0).
    warming_s: float = 0.0

    @classmethod
    def from_samples(cls, samples: list[dict], context_slope_s: float = 0.0) -> DecodeTable | None:
        """The decode-only, warm samples (no prompt chunk, no cold start or warming) grouped into contexts per
        sequence within 25% of each other; None unless some context has at least two batches."""
        points = sorted(
            (float(s["context_tokens"]) / float(s["decode_batch"]), float(s["decode_batch"]),
             float(s["step_s"]))
            for s in samples
            if float(s.get("decode_batch", 0)) > 0 and not float(s.get("prefill_tokens", 0))
            and float(s.get("cold_start", 0)) < 0.01 and float(s.get("warming", 0)) < 0.01
        )
        groups: list[list[tuple[float, float, float]]] = []
        for p in points:
            if groups and p[0] <= 1.25 * groups[-1][0][0]:
                groups[-1].append(p)
            else:
                groups.append([p])
        levels = []
        for g in groups:
            by_batch: dict[float, list[float]] = {}
            for _, b, t in g:
                by_batch.setdefault(round(b, 1), []).append(t)
            if len(by_batch) < 2:
                continue
            batches = sorted(by_batch)
            levels.append(ContextLevel(statistics.fmean(c for c, _, _ in g), tuple(batches),
                                       tuple(statistics.median(by_batch[b]) for b in batches)))
        if not levels:
            return None
        table = cls(tuple(levels), context_slope_s)
        num = den = 0.0
        for s in samples:
            f = float(s.get("warming", 0))
            if f >= 0.01 and float(s.get("decode_batch", 0)) > 0 and not float(s.get("prefill_tokens", 0)):
                t = float(s["step_s"])
                num += f * (t - table.predict_s(float(s["decode_batch"]), float(s["context_tokens"]))) / t**2
                den += f * f / t**2
        return cls(tuple(levels), context_slope_s, num / den if den else 0.0)

    def predict_s(self, batch: float, context_tokens: float, warming: float = 0.0) -> float:
        """A decode step of `batch` sequences reading `context_tokens` KV entries in all, `warming`
        (step_model.warming) after a wake-up."""
        per_seq = context_tokens / batch
        at = [_interp(batch, list(lv.batches), list(lv.step_s)) for lv in self.levels]
        if len(self.levels) == 1:
            t = at[0] + self.context_slope_s * batch * (per_seq - self.levels[0].context)
        else:
            t = _interp(per_seq, [lv.context for lv in self.levels], at)
        return max(t + self.warming_s * warming, 0.0)

    def describe(self) -> dict:
        levels = [{"context_per_seq": lv.context, "batches": list(lv.batches), "step_s": list(lv.step_s)}
                  for lv in self.levels]
        return {"levels": levels, "context_slope_s": self.context_slope_s, "warming_s": self.warming_s}
