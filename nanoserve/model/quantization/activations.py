"""Dynamic per-token int8 activations (w8a8): each row of x gets its own scale at run time."""

from __future__ import annotations

import torch

INT8_MAX = 127
# Rows of int32 partial sums an fp32 matmul of int8 codes can add exactly: 127 · 127 · 1024 < 2^24.
EXACT_FP32_K = 1024


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float -> (codes [M, K] int8 in -127..127, scales [M, 1] float32), x ≈ codes · scales."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)  # [M, 1]
    scales = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    codes = torch.round(xf / scales).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)  # [M, K]
    return codes, scales


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] int8 @ b [N, K] int8 .T -> [M, N] int32, exact.

    torch._int_mm where it takes these shapes (CPU: any; CUDA: M > 16, K and N multiples of 8), else
    fp32 matmuls over K slices short enough to be exact, summed in int32."""
    if hasattr(torch, "_int_mm"):
        try:
            return torch._int_mm(a, b.t())
        except RuntimeError:
            pass
    acc = torch.zeros(a.shape[0], b.shape[0], dtype=torch.int32, device=a.device)  # [M, N]
    for k0 in range(0, a.shape[1], EXACT_FP32_K):
        part = a[:, k0 : k0 + EXACT_FP32_K].float() @ b[:, k0 : k0 + EXACT_FP32_K].float().t()
        acc += part.to(torch.int32)
    return acc
