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


def quantization_report(engine: Any) -> dict[str, Any]:
    """What the benchmarked weights were: the quantization the engine ran (from --quantization, or read
    from the checkpoint's quantization_config with no flag; None: the model dtype) and the bytes held."""
    quant = engine.model_config.quantization
    return {
        "quantization": quant.method if quant is not None else None,
        "dtype": engine.model_config.dtype,
        "weight_bytes": engine.weight_bytes,
        "kv_bytes_per_token": engine.kv_bytes_per_token,
    }


def describe_quantization(report: dict[str, Any]) -> str:
    """One line for a benchmark's printout, e.g. 'weights: int4 decoder linears, bfloat16 rest, 12.3 MiB'."""
    method = report["quantization"]
    kind = f"{method} decoder linears, {report['dtype']} rest" if method else report["dtype"]
    return f"weights: {kind}, {report['weight_bytes'] / 2**20:.1f} MiB"
