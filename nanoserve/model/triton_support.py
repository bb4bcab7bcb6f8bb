"""Whether Triton kernels can run here: on CUDA with triton installed, or on any device under Triton's
CPU interpreter (TRITON_INTERPRET=1, which is how the test suite runs every kernel on machines without a
GPU). Triton stays optional: nothing imports it until a Triton path is chosen.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    """TRITON_INTERPRET=1: kernels run in Triton's NumPy interpreter (slow; for tests on CPU)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def triton_unusable_reason(device: torch.device | str) -> str | None:
    """None when Triton kernels can run for tensors on `device`, else why not (for error messages)."""
    device = torch.device(device)
    if not triton_installed():
        return "needs the triton package (pip install triton)"
    if device.type == "cuda" or interpreter_on():
        return None
    return f"runs on CUDA only (device is {device}; TRITON_INTERPRET=1 runs it on CPU, slowly, for tests)"
