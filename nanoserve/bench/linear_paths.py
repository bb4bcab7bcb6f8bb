"""Which CPU linear path the engine ran (`EngineArgs.cpu_linear` chose it), as the benchmarks report it."""

from __future__ import annotations

from collections import Counter
from typing import Any


def linear_paths(engine: Any) -> dict[str, int]:
    """How many of the model's linear modules took each path, e.g. {"avx512": 73}."""
    used: Counter = Counter()
    for module in engine.runner.model.modules():
        backend = getattr(module, "backend", None)
        if isinstance(backend, str) and "Linear" in type(module).__name__:
            used[backend] += 1
    return dict(used)
