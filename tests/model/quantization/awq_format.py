"""AWQ's GEMM on-disk layout, written as AutoAWQ writes it (pseudo_quantize_tensor and
WQLinear_GEMM.from_linear's packing): shared by the reader tests and the engine tests."""

from __future__ import annotations

import torch

ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ's WQLinear_GEMM.from_linear


def awq_quantize(w: torch.Tensor, group_size: int):
    """AutoAWQ's pseudo_quantize_tensor (zero_point=True, 4 bits) -> codes [K, N], scales fp16 [G, N],
    zeros [G, N]; the codes are made against the fp16 scales the checkpoint keeps, as from_linear does."""
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"AutoAWQ groups need K % group_size == 0 (K={k}, group_size={group_size})")
    groups = w.reshape(-1, group_size)  # [N * G, group_size]
    max_val, min_val = groups.amax(1), groups.amin(1)
    scales = ((max_val - min_val).clamp(min=1e-5) / 15).half().float()
    zeros = (-torch.round(min_val / scales)).clamp(0, 15)
    codes = torch.clamp(torch.round(groups / scales[:, None]) + zeros[:, None], 0, 15)
    codes = codes.reshape(n, k).t().to(torch.int32)  # [K, N]
    return codes, scales.reshape(n, -1).t().half(), zeros.reshape(n, -1).t()


def awq_pack(codes: torch.Tensor, zeros: torch.Tensor):
    """WQLinear_GEMM.from_linear's packing, loop for loop: [K, N] codes -> qweight [K, N/8] and
    [G, N] zeros -> qzeros [G, N/8], column ORDER_MAP[i] of each eight in nibble i."""
    k, n = codes.shape
    if n % 32:
        raise ValueError(f"AutoAWQ packs N that is a multiple of 32 (got N={n})")
    qweight = torch.zeros(k, n // 32 * 4, dtype=torch.int32)
    for col in range(n // 8):
        for i in range(8):
            qweight[:, col] |= codes[:, col * 8 + ORDER_MAP[i]] << (i * 4)
    zeros = zeros.to(torch.int32)
    qzeros = torch.zeros(zeros.shape[0], n // 32 * 4, dtype=torch.int32)
    for col in range(n // 8):
        for i in range(8):
            qzeros[:, col] |= zeros[:, col * 8 + ORDER_MAP[i]] << (i * 4)
    return qweight, qzeros


def awq_config(**extra) -> dict:
    """The quantization_config an AutoAWQ checkpoint carries."""
    return {"quant_method": "awq", "zero_point": True, "group_size": 128, "bits": 4, "version": "gemm",
            "modules_to_not_convert": None, **extra}
