"""Which CPU linear path the engine runs (`EngineArgs.cpu_linear`), chosen and reported by the benchmarks."""

from __future__ import annotations

from collections import Counter
from typing import Any

from nanoserve.config import CPU_LINEAR_BACKENDS as CHOICES


def add_cpu_linear_argument(p) -> None:
    p.add_argument(
        "--cpu-linear",
        default=None,
        choices=CHOICES,
        help="the engine's path for bf16 CPU linears (EngineArgs.cpu_linear; default: the engine's own; "
        "torch = plain F.linear)",
    )


def engine_kwargs(cpu_linear: str | None) -> dict[str, Any]:
    return {} if cpu_linear is None else {"cpu_linear": cpu_linear}


def linear_paths(engine: Any) -> dict[str, int]:
    """How many of the model's linear modules took each path, e.g. {"avx512": 73}."""
    used: Counter = Counter()
    for module in engine.runner.model.modules():
        backend = getattr(module, "backend", None)
        if isinstance(backend, str) and "Linear" in type(module).__name__:
            used[backend] += 1
    return dict(used)
