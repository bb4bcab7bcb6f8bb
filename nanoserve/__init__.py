"""nanoserve: a small LLM inference server and capacity planner.

The engine's public names follow vLLM's (LLM, SamplingParams, RequestOutput, EngineArgs) and are
imported lazily, so that `nanoserve.planner` and the CLI's planning commands never import torch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# OpenMP threads that spin while waiting steal the other core on small CPU machines (measured: a
# decode step 9x slower under load). Must be set before torch is imported; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
