"""Native CPU kernels for the small, non-matmul work of a step (csrc/native_kernels.cpp): paged
decode attention, the prefill softmax, fused residual-add + RMSNorm, SiLU-and-multiply, rotary +
KV-cache write, argmax.

In eager PyTorch each of these is several small ops per layer (attention alone is gather K, gather V,
two batched matmuls, mask, softmax, transposes; RMSNorm is ~8 ops) and each op costs microseconds on
CPU whatever its size, so at batch 1 they cost more than the math. Each kernel here is one call.

- `decode_attention`: for each (sequence, kv head) walk the sequence's block table, dot the G query
  heads sharing that kv head with each key row (read once), softmax, accumulate V, all in fp32. No
  gather copy, no mask: each sequence stops at its own context length. bf16 caches with head_dim 64
  or 128 and G <= 8 take an AVX-512 version (keys in chunks of 16, sums reduced 16 at a time, value
  accumulators in registers), about twice as fast per layer as the generic loop (benchmarks/RESULTS.md).
- `causal_softmax_` (csrc/prefill_softmax.cpp): the mask and softmax between a prefill row group's two
  batched matmuls, in place, fp32 math with an AVX-512 exp (csrc/vec_math.h); masked keys are skipped, not
  added -inf to. torch's bf16 softmax plus the mask add took ~20 ms of a 512-token Qwen2.5-0.5B step.
- `argmax_rows`: greedy sampling over the model-dtype logits, rows in parallel (torch's argmax walks a
  [batch, vocabulary] tensor row after row).
- `add_rms_norm`, `silu_mul`, `rope_cache`: elementwise work that rounds to the model's dtype
  wherever transformers' graph does, so outputs match the PyTorch path within float rounding (fp32
  sums in another order, vectorized exp) and at most one bf16 rounding apart in bf16.

Threaded with ATen's pool and built by native_build.load_extension (in the foreground, first start
only). `load_native_kernels()` returns the extension, or None when it cannot be built (no compiler) or
NANOSERVE_DISABLE_NATIVE_KERNELS=1; the runner wraps it in kernels.NativeCpuKernels and hands that to
the model, so which kernels a run uses is decided once, at start-up.
"""

from __future__ import annotations

import logging
import os
import threading
from types import ModuleType

from nanoserve.model.native_build import load_extension

log = logging.getLogger(__name__)

NAME = "nanoserve_native_kernels"
SOURCES = ["native_kernels.cpp", "prefill_softmax.cpp"]
_ext: ModuleType | None = None
_ext_error: str | None = None
_lock = threading.Lock()


def load_native_kernels() -> ModuleType | None:
    """Build (first call only; cached on disk) and return the extension, or None with a logged reason."""
    global _ext, _ext_error
    if os.environ.get("NANOSERVE_DISABLE_NATIVE_KERNELS") == "1":
        return None
    with _lock:
        if _ext is not None or _ext_error is not None:
            return _ext
        try:
            _ext = load_extension(NAME, SOURCES, ["-march=native", "-ffast-math"], ["-lmvec"])
        except Exception as e:  # no compiler, missing headers...
            _ext_error = f"native kernels build failed: {type(e).__name__}: {str(e)[:300]}"
            log.info("native kernels unavailable (%s); using the PyTorch paths", _ext_error)
        return _ext


def unavailable_reason() -> str | None:
    if os.environ.get("NANOSERVE_DISABLE_NATIVE_KERNELS") == "1":
        return "disabled by NANOSERVE_DISABLE_NATIVE_KERNELS=1"
    return _ext_error
