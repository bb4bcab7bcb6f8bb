"""The model's non-matmul kernels, chosen once at start-up and handed to the layers.

The runner calls `select_kernels(device)` and binds the result to the model (`bind_kernels`) and the
sampler; a forward pass only calls methods of the object it was given, so a run never changes paths
midway and a test can hand in the reference kernels whatever else is loaded in the process.

- `TorchKernels`: the reference PyTorch ops (any device), bit-identical to transformers' graph.
- `TritonKernels` (triton_kernels.py): Triton kernels on CUDA (NANOSERVE_DISABLE_TRITON_KERNELS=1: off).
- `NativeCpuKernels`: one native call per op (native_kernels.py) on CPU; inputs it cannot take
  (another device, a non-contiguous tensor) go through the reference op. `rope_cache` into quantized
  caches (attention/kv_cache.QuantizedKV) quantizes each k/v row as it writes it. `.ext` is the extension, for
  the CPU attention backend's `decode_attention`.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

import torch
import torch.nn.functional as F

from nanoserve.model.attention.kv_cache import QuantizedKV

log = logging.getLogger(__name__)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x [T, N, D] (any N heads, e.g. q and k side by side) -> rotated copy; bit-identical to
    transformers' `x * cos + rotate_half(x) * sin`."""
    t, n, d = x.shape
    flipped = x.view(t, n, 2, d // 2).flip(2).view(t, n, d)  # [x_hi, x_lo]
    return (x * cos).add_(flipped * sin_signed)


class TorchKernels:
    """The reference paths, in PyTorch ops."""

    ext: ModuleType | None = None  # no native extension: attention takes its PyTorch decode path

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """weight * norm(x), after x += residual in place when residual is given."""
        if residual is not None:
            x.add_(residual)
        # F.rms_norm in float32 is bit-identical to transformers' x * rsqrt(mean(x²) + eps), in one op.
        h = F.rms_norm(x.float(), (x.shape[-1],), None, eps)
        return weight * h.to(x.dtype)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """[T, 2I] = [gate | up] -> silu(gate) * up [T, I]."""
        gate, up = gate_up.chunk(2, dim=-1)  # [T, I] each
        return F.silu(gate).mul_(up)

    def rope_cache(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin_signed: torch.Tensor,
        slots: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        num_heads: int,
        num_kv_heads: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """qkv [T, (H + 2 KVH) D] -> rotated q [T, H, D], rotated k and v [T, KVH, D] for the attention
        backend to write to the caches; k and v are None when this call already wrote them there."""
        t, h, kvh, d = qkv.shape[0], num_heads, num_kv_heads, k_cache.shape[-1]
        qk = apply_rotary(qkv[:, : (h + kvh) * d].view(t, h + kvh, d), cos, sin_signed)  # one pass
        return qk[:, :h], qk[:, h:], qkv[:, (h + kvh) * d :].view(t, kvh, d)

    def argmax_rows(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, V] -> [B] int64: the first maximal index per row."""
        return logits.argmax(dim=-1)

    def __repr__(self) -> str:
        return type(self).__name__ + "()"


class NativeCpuKernels(TorchKernels):
    """The native CPU extension's kernels (same rounding as the reference, another summation order)."""

    def __init__(self, ext: ModuleType) -> None:
        self.ext = ext

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        if x.device.type != "cpu" or not x.is_contiguous():  # e.g. Qwen3's q/k norms over a qkv slice
            return super().add_rms_norm(x, residual, weight, eps)
        return self.ext.add_rms_norm(x, residual, weight, eps)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        if gate_up.device.type != "cpu" or not gate_up.is_contiguous():
            return super().silu_mul(gate_up)
        return self.ext.silu_mul(gate_up)

    def rope_cache(self, qkv, cos, sin_signed, slots, k_cache, v_cache, num_heads, num_kv_heads):
        if qkv.device.type != "cpu" or not qkv.is_contiguous():
            return super().rope_cache(qkv, cos, sin_signed, slots, k_cache, v_cache, num_heads, num_kv_heads)
        if isinstance(k_cache, QuantizedKV):  # kv_cache_dtype int8 / fp8_e4m3: codes + per-row scales
            q = self.ext.rope_cache_quant(qkv, cos, sin_signed, slots, k_cache.codes, k_cache.scales,
                                          v_cache.codes, v_cache.scales, num_heads, num_kv_heads)
        else:
            q = self.ext.rope_cache(qkv, cos, sin_signed, slots, k_cache, v_cache, num_heads, num_kv_heads)
        return q, None, None  # k and v are in the caches already

    def argmax_rows(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.device.type != "cpu":
            return super().argmax_rows(logits)
        return self.ext.argmax_rows(logits)


Kernels = TorchKernels  # the interface: every implementation subclasses the reference


def select_kernels(device: torch.device) -> Kernels:
    """The kernels a run on `device` uses: native on CPU when they build (compiled in the foreground on a
    first start) and NANOSERVE_DISABLE_NATIVE_KERNELS is not 1; Triton on CUDA when it can run and
    NANOSERVE_DISABLE_TRITON_KERNELS is not 1; else the PyTorch reference."""
    if device.type == "cuda" and os.environ.get("NANOSERVE_DISABLE_TRITON_KERNELS") != "1":
        from nanoserve.model.triton_support import triton_unusable_reason

        reason = triton_unusable_reason(device)
        if reason is None:
            from nanoserve.model.triton_kernels import TritonKernels

            return TritonKernels()
        log.info("Triton kernels off (%s); using the PyTorch paths", reason)
    if device.type != "cpu":
        return TorchKernels()
    from nanoserve.model import native_kernels

    ext = native_kernels.load_native_kernels()
    if ext is None:
        log.info("native CPU kernels off (%s); using the PyTorch paths", native_kernels.unavailable_reason())
        return TorchKernels()
    return NativeCpuKernels(ext)
