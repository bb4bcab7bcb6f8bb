"""Which attention backend a run uses: chosen once, from EngineArgs.attention_backend and the device."""

from __future__ import annotations

from typing import Any

import torch

from nanoserve.config import ATTENTION_BACKENDS
from nanoserve.errors import InvalidRequestError
from nanoserve.model.attention.backend import AttentionBackend
from nanoserve.model.attention.cpu_native_backend import CpuNativeAttentionBackend
from nanoserve.model.attention.torch_backend import TorchAttentionBackend
from nanoserve.model.triton_support import triton_unusable_reason


def make_attention_backend(
    name: str,
    device: torch.device,
    native_ext: Any,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
) -> AttentionBackend:
    """The backend `name` asks for; auto = cpu_native on CPU when native_ext (the extension) is not None,
    triton on CUDA when it can run there, else torch (never triton on CPU, interpreter or not: it is for
    tests there, and slow)."""
    if name not in ATTENTION_BACKENDS:
        raise InvalidRequestError(
            f"attention_backend must be one of {ATTENTION_BACKENDS}, got {name!r}", "attention_backend"
        )
    native_ok = device.type == "cpu" and native_ext is not None
    if name == "auto":
        if device.type == "cuda" and triton_unusable_reason(device) is None:
            name = "triton"
        else:
            name = "cpu_native" if native_ok else "torch"
    dims = (num_heads, num_kv_heads, head_dim, head_dim**-0.5)
    if name == "torch":
        return TorchAttentionBackend(*dims, dtype=dtype, device=device)
    if name == "triton":
        # Imported only when chosen; its constructor refuses (InvalidRequestError with the reason) where
        # Triton cannot run.
        from nanoserve.model.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend(*dims, dtype=dtype, device=device)
    if not native_ok:
        why = "runs on CPU only" if device.type != "cpu" else "needs the native CPU kernels (not loaded)"
        raise InvalidRequestError(f"attention_backend cpu_native {why}", "attention_backend")
    return CpuNativeAttentionBackend(*dims, dtype=dtype, device=device, native_ext=native_ext)
