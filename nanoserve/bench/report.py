"""Plain-text tables, percentile summaries and JSON results shared by the benchmarks."""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float], percentiles: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """mean, median, std and p<q> of `values` (same unit as the input)."""
    n = len(values)
    mean = sum(values) / n if n else 0.0
    std = (sum((v - mean) ** 2 for v in values) / n) ** 0.5 if n else 0.0
    out = {"mean": mean, "median": percentile(values, 50), "std": std}
    for q in percentiles:
        out[f"p{q:g}"] = percentile(values, q)
    return out


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    if title:
        print(title)
    for i, r in enumerate(cells):
        cols = zip(r, widths, strict=True)
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(cols)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def environment() -> dict[str, Any]:
    """Where and when a figure was taken: figures on a shared machine mean little without it."""
    import os

    env: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host_cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        env["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return env


def _jsonable(x: Any) -> Any:
    """inf / nan as strings: strict JSON has no Infinity."""
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def save_json(path: str | Path, result: dict[str, Any]) -> None:
    result = _jsonable({**result, "environment": environment()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")
