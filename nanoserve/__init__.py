"""nanoserve: a small LLM inference server and capacity planner.

The engine's public names follow vLLM's (LLM, SamplingParams, RequestOutput, EngineArgs) and are
imported lazily, so that `nanoserve.planner` and the CLI's planning commands never import torch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# How torch's OpenMP threads wait between parallel regions. Spinning forever (ACTIVE) steals the other
# core of a small shared machine (a decode step measured 9x slower under load); sleeping at once
# (PASSIVE) pays a futex wake-up at each of a step's hundreds of regions (SmolLM2, 32 at once, quiet
# box: 425 output tok/s PASSIVE, 520 with a short spin, 532 ACTIVE; benchmarks/RESULTS.md). So by
# default a thread spins briefly (libgomp's GOMP_SPINCOUNT, ~0.1 ms) and then sleeps. Must be set
# before torch is imported; either variable set by the user wins (OMP_WAIT_POLICY=PASSIVE alone: no spin).
DEFAULT_OMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}


def apply_default_omp_env(env: dict[str, str] | os._Environ = os.environ) -> None:
    """Set DEFAULT_OMP_ENV in `env` unless the user chose a wait policy or a spin count already."""
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env.update(DEFAULT_OMP_ENV)


apply_default_omp_env()


def freeze_startup_objects() -> None:
    """Once loaded: collect, then move everything alive (torch, transformers, the model) out of the
    collector's reach, so full collections (GIL-holding pauses, ~180 ms on the toy model's process)
    stay short. `nanoserve serve` does it, and so do the runs that measure it (calibrate, validate)."""
    import gc

    gc.collect()
    gc.freeze()

__version__ = "0.1.0"

_LAZY = {
    "LLM": "nanoserve.entrypoints.llm",
    "SamplingParams": "nanoserve.sampling_params",
    "StructuredOutputsParams": "nanoserve.sampling_params",
    "RequestOutput": "nanoserve.outputs",
    "CompletionOutput": "nanoserve.outputs",
    "RequestMetrics": "nanoserve.outputs",
    "EngineArgs": "nanoserve.config",
    "LLMEngine": "nanoserve.engine.llm_engine",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nanoserve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
