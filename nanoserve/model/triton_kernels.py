"""The model's small non-matmul ops as Triton kernels, for CUDA (and Triton's CPU interpreter in tests).

`TritonKernels` is the third implementation of the kernel interface (kernels.py): one launch per op
instead of the reference path's several PyTorch ops, each with its own trip through memory.

- `add_rms_norm`: residual add (in place, the new residual stream) and RMSNorm of a row in one pass.
- `silu_mul`: silu(gate) * up from the stacked gate_up rows.
- `rope_cache`: rotary on q and k read straight from the fused qkv rows, and k, v stored into the
  paged caches at the step's slots; returns q and (None, None), as the native CPU kernel does.

Every kernel loads in the tensor's dtype, computes in float32 and rounds where the reference path
rounds (e.g. the sum x + residual is rounded before it is normed), so results equal the reference
within one rounding of the model's dtype. Inputs a kernel does not cover (a quantized KV cache, a
non-contiguous row, a tensor Triton cannot reach) take the reference path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nanoserve.model.attention.kv_cache import QuantizedKV
from nanoserve.model.kernels import TorchKernels
from nanoserve.model.triton_support import interpreter_on

SILU_BLOCK = 1024  # elements of one row per program in silu_mul (rows longer than this span programs)


@triton.jit
def _round(x, dtype: tl.constexpr):
    """float32 x -> dtype, rounded to nearest even. For bf16 the rounding is done on the bits: the GPU's
    own cast does the same, but Triton's CPU interpreter truncates, which the tests would see."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, x_row_stride, res_row_stride, n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x_row = x_ptr + row * x_row_stride
    x = tl.load(x_row + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * res_row_stride + cols, mask=mask, other=0.0)
        x = _round(x.to(tl.float32) + r.to(tl.float32), x_ptr.dtype.element_ty)  # as x.add_ stores it
        tl.store(x_row + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    h = _round(xf * inv_rms, x_ptr.dtype.element_ty).to(tl.float32)  # the reference rounds before the weight
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, _round(h * w, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, row_stride, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(gate_up_ptr + row * row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * row_stride + inter + cols, mask=mask, other=0.0).to(tl.float32)
    silu = _round(gate / (1.0 + tl.exp(-gate)), out_ptr.dtype.element_ty).to(tl.float32)  # F.silu rounds
    tl.store(out_ptr + row * inter + cols, _round(silu * up, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_cache_kernel(
    qkv_ptr, cos_ptr, sin_ptr, slots_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
    qkv_row_stride, cos_row_stride, sin_row_stride,
    cache_head_stride, cache_block_stride, cache_slot_stride, block_size,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One (token, head) per program; heads [0, H) are q, [H, H + KVH) k, [H + KVH, H + 2 KVH) v."""
    t = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    mask = d < HEAD_DIM
    src = qkv_ptr + t * qkv_row_stride + head * HEAD_DIM
    x = tl.load(src + d, mask=mask, other=0.0)
    if head < NUM_HEADS + NUM_KV_HEADS:  # q or k: rotate
        # rotate_half as a flip of the halves; the sign lives in sin_signed = [-sin_lo, sin_hi]
        flipped = tl.load(src + (d + HEAD_DIM // 2) % HEAD_DIM, mask=mask, other=0.0).to(tl.float32)
        cos = tl.load(cos_ptr + t * cos_row_stride + d, mask=mask, other=0.0).to(tl.float32)
        sin = tl.load(sin_ptr + t * sin_row_stride + d, mask=mask, other=0.0).to(tl.float32)
        # The reference rounds both products to the dtype before adding them.
        a = _round(x.to(tl.float32) * cos, qkv_ptr.dtype.element_ty).to(tl.float32)
        b = _round(flipped * sin, qkv_ptr.dtype.element_ty).to(tl.float32)
        x = _round(a + b, qkv_ptr.dtype.element_ty)
    if head < NUM_HEADS:
        tl.store(q_ptr + (t * NUM_HEADS + head) * HEAD_DIM + d, x, mask=mask)
    else:
        slot = tl.load(slots_ptr + t).to(tl.int64)
        kv_head = (head - NUM_HEADS) % NUM_KV_HEADS
        dst = (kv_head * cache_head_stride + (slot // block_size) * cache_block_stride
               + (slot % block_size) * cache_slot_stride)
        keep = mask & ((d * 0 + slot) >= 0)  # a negative slot (padding) writes nothing
        if head < NUM_HEADS + NUM_KV_HEADS:
            tl.store(k_cache_ptr + dst + d, x, mask=keep)
        else:
            tl.store(v_cache_ptr + dst + d, x, mask=keep)


def _reachable(*tensors: torch.Tensor) -> bool:
    """Triton runs on CUDA tensors, or on any tensor under its CPU interpreter."""
    return all(t.is_cuda for t in tensors) or interpreter_on()


def _rows_ok(x: torch.Tensor) -> bool:
    """A 2-D tensor whose rows are contiguous (any row stride)."""
    return x.dim() == 2 and x.stride(-1) == 1


class TritonKernels(TorchKernels):
    """Triton kernels for add_rms_norm, silu_mul and rope_cache; argmax_rows stays the reference."""

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        n = x.shape[-1]
        tensors = (x, weight) if residual is None else (x, residual, weight)
        # Qwen3's per-head q/k norms pass views over qkv slices: not rows, so the reference path.
        if not (x.is_contiguous() and weight.is_contiguous() and _reachable(*tensors)) or (
            residual is not None and (residual.shape != x.shape or not residual.is_contiguous())
        ):
            return super().add_rms_norm(x, residual, weight, eps)
        x2 = x.view(-1, n)  # [R, N]
        out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
        if x2.shape[0] == 0:
            return out
        res2 = x2 if residual is None else residual.view(-1, n)
        block = triton.next_power_of_2(n)
        _add_rms_norm_kernel[(x2.shape[0],)](
            x2, res2, weight, out, x2.stride(0), res2.stride(0), n, eps,
            HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=min(16, max(1, block // 256)),
        )
        return out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        if not (_rows_ok(gate_up) and _reachable(gate_up)):
            return super().silu_mul(gate_up)
        t, inter = gate_up.shape[0], gate_up.shape[1] // 2
        out = torch.empty(t, inter, dtype=gate_up.dtype, device=gate_up.device)  # [T, I]
        if t == 0:
            return out
        block = min(SILU_BLOCK, triton.next_power_of_2(inter))
        _silu_mul_kernel[(t, triton.cdiv(inter, block))](
            gate_up, out, gate_up.stride(0), inter, BLOCK=block, num_warps=4,
        )
        return out

    def rope_cache(self, qkv, cos, sin_signed, slots, k_cache, v_cache, num_heads, num_kv_heads):
        covered = (
            not isinstance(k_cache, QuantizedKV)  # quantized caches: quantize_rows on the reference path
            and _rows_ok(qkv)
            and k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
            and k_cache.dtype == qkv.dtype == v_cache.dtype
            and cos.shape[-1] == sin_signed.shape[-1] == k_cache.shape[-1]  # rotary over the whole head
            and cos.stride(-1) == 1 and sin_signed.stride(-1) == 1
            and _reachable(qkv, cos, sin_signed, slots, k_cache, v_cache)
        )
        if not covered:
            return super().rope_cache(qkv, cos, sin_signed, slots, k_cache, v_cache, num_heads, num_kv_heads)
        t, d = qkv.shape[0], k_cache.shape[-1]
        q = torch.empty(t, num_heads, d, dtype=qkv.dtype, device=qkv.device)  # [T, H, D]
        if t == 0:
            return q, None, None
        cos2, sin2 = cos.reshape(t, d), sin_signed.reshape(t, d)  # [T, 1, D] -> [T, D], views
        _rope_cache_kernel[(t, num_heads + 2 * num_kv_heads)](
            qkv, cos2, sin2, slots, q, k_cache, v_cache,
            qkv.stride(0), cos2.stride(0), sin2.stride(0),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.shape[2],
            NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=d,
            BLOCK_D=triton.next_power_of_2(d), num_warps=1 if d <= 64 else 2,
        )
        return q, None, None  # k and v are in the caches already
