"""The host allocator's policy in a CPU serving process (glibc malloc).

A step's activations are allocated and freed every step, in sizes that change with the step's shape.
By default glibc serves a block above its mmap threshold (128 KiB at first, raised to the size of the
largest mmapped block freed, at most 32 MiB) with fresh pages from the kernel, and returns the top of
the heap to the kernel once more than twice that threshold is free there. Either way the next step's
activations land on pages the kernel must fault in and zero again. On the 2-core dev box a demo-model
prompt step of 2,048 tokens took 4k-20k page faults and 33-55 ms; with the policy below, tens of faults
and 24-30 ms. How many faults a step takes also depended on the steps before it, which a step-time
profile (`nanoserve bench calibrate`) cannot see: the simulator's prompt steps came out 20-60% short.

`tune()` fixes the mmap threshold at glibc's largest (32 MiB) and keeps up to TRIM_THRESHOLD_BYTES
free at the heap top, so freed activations are reused, as vLLM's recommended CPU allocator (tcmalloc)
does. Blocks above 32 MiB still come fresh each time; the model keeps its per-step activations below
that (layers.MLP_CHUNK_BYTES). Off with NANOSERVE_MALLOC_TUNE=0; nothing happens where glibc is not
the C library.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: mallopt refuses more
TRIM_THRESHOLD_BYTES = 1 << 30


@dataclass(frozen=True)
class MallocPolicy:
    applied: bool
    reason: str  # why not, when not applied
    mmap_threshold_bytes: int = 0
    trim_threshold_bytes: int = 0


_applied: MallocPolicy | None = None


def tune() -> MallocPolicy:
    """Apply the policy once per process (later calls return the first result)."""
    global _applied
    if _applied is None:
        _applied = _tune()
        if _applied.applied:
            logger.debug("malloc: mmap threshold %d B, trim threshold %d B", MMAP_THRESHOLD_BYTES,
                         TRIM_THRESHOLD_BYTES)
    return _applied


def _tune() -> MallocPolicy:
    if os.environ.get("NANOSERVE_MALLOC_TUNE", "1").strip() == "0":
        return MallocPolicy(False, "NANOSERVE_MALLOC_TUNE=0")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return MallocPolicy(False, "the C library is not glibc")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as e:
        return MallocPolicy(False, f"mallopt unavailable: {e}")
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    if not ok:
        return MallocPolicy(False, "mallopt refused the thresholds")
    return MallocPolicy(True, "", MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES)
