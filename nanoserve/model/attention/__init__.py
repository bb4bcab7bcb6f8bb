"""Attention over the paged KV cache, behind one small backend interface.

- backend.py: `AttentionBackend` (`build_metadata(layout)` once per step, `forward` once per layer),
  `StepLayout` (where the step's tokens sit, filled by the runner) and the `AttentionMetadata` base.
- torch_backend.py: the reference backend, plain PyTorch on any device.
- cpu_native_backend.py: the reference backend with decodes through the native C++ kernel.
- triton_backend.py: Triton kernels (CUDA; the CPU interpreter in tests): triton_decode.py (paged
  decode, split-K) and triton_prefill.py (prefill / chunked prefill over the paged cache). Imports triton
  only when constructed.
- selector.py: `make_attention_backend`, from EngineArgs.attention_backend.
- kv_cache.py: how K/V are stored (EngineArgs.kv_cache_dtype): model dtype, or int8/fp8 codes with a
  scale per (token, kv head) (`QuantizedKV`); `allocate_kv_caches`, `write_kv`, `gather_kv`.

A step's tokens are packed flat: sequence i owns rows query_start[i]:query_start[i+1] of q/k/v. Its
new K/V go to the cache slots in slot_mapping; then each query attends over everything cached for
its sequence up to its own position (cached context + the causal part of its chunk).
"""

from nanoserve.model.attention.backend import AttentionBackend, AttentionMetadata, StepLayout
from nanoserve.model.attention.cpu_native_backend import CpuNativeAttentionBackend, CpuNativeAttentionMetadata
from nanoserve.model.attention.kv_cache import QuantizedKV, allocate_kv_caches
from nanoserve.model.attention.selector import make_attention_backend
from nanoserve.model.attention.torch_backend import TorchAttentionBackend, TorchAttentionMetadata
from nanoserve.model.attention.triton_backend import TritonAttentionBackend, TritonAttentionMetadata

__all__ = [
    "AttentionBackend",
    "AttentionMetadata",
    "CpuNativeAttentionBackend",
    "CpuNativeAttentionMetadata",
    "QuantizedKV",
    "StepLayout",
    "TorchAttentionBackend",
    "TorchAttentionMetadata",
    "TritonAttentionBackend",
    "TritonAttentionMetadata",
    "allocate_kv_caches",
    "make_attention_backend",
]
