"""GPTQ's on-disk layout, written as AutoGPTQ writes it (its quantizer's grouping and its pack, loop for
loop): shared by the reader tests and the engine tests."""

from __future__ import annotations

import numpy as np
import torch


def gptq_quantize(w: torch.Tensor, bits: int, group_size: int, sym: bool, desc_act: bool, seed: int):
    """AutoGPTQ's min-max grouping (its Quantizer.find_params) with act-order's g_idx; the Hessian update
    changes values, not the layout, so it is left out. -> codes [K, N], scales fp16 [G, N], zeros [G, N]
    (true zero points), g_idx [K]."""
    n, k = w.shape
    gs = k if group_size == -1 else group_size
    maxq = 2**bits - 1
    # act-order processes columns by decreasing Hessian diagonal; any permutation stands in for it
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed)) if desc_act else torch.arange(k)
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = (torch.arange(k) // gs).to(torch.int32)  # AutoGPTQ: g_idx[invperm]
    num_groups = -(-k // gs)
    scales = torch.empty(num_groups, n)
    zeros = torch.empty(num_groups, n)
    for g in range(num_groups):
        x = w[:, g_idx == g]  # [N, columns of group g]
        xmin = torch.clamp(x.min(1).values, max=0)
        xmax = torch.clamp(x.max(1).values, min=0)
        if sym:
            xmax = torch.maximum(xmin.abs(), xmax)
            xmin = torch.where(xmin < 0, -xmax, xmin)
        scale = (xmax - xmin) / maxq
        scales[g] = scale.half().float()  # the checkpoint keeps fp16 scales; codes are made against them
        zeros[g] = torch.full_like(scale, (maxq + 1) // 2) if sym else torch.round(-xmin / scale)
    cols_scale, cols_zero = scales[g_idx.long()], zeros[g_idx.long()]  # [K, N]
    codes = torch.clamp(torch.round(w.t() / cols_scale) + cols_zero, 0, maxq).to(torch.int32)  # [K, N]
    return codes, scales.half(), zeros, g_idx


def gptq_pack(codes: torch.Tensor, zeros: torch.Tensor, bits: int, v1: bool = True):
    """AutoGPTQ's QuantLinear.pack, loop for loop: codes [K, N] -> qweight [K*b/32, N]; zeros [G, N] ->
    qzeros [G, N*b/32], minus one in the v1 ("gptq") format."""
    k, n = codes.shape
    if k % 32 or n % 32:
        raise ValueError(f"AutoGPTQ packs only K and N that are multiples of 32 (got K={k}, N={n})")
    intweight = codes.numpy().astype(np.uint32)
    qweight = np.zeros((k // 32 * bits, n), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        for j in range(i, i + 32 // bits):
            qweight[row] |= intweight[j] << (bits * (j - i))
        i += 32 // bits
        row += 1
    stored = zeros - 1 if v1 else zeros
    assert (stored >= 0).all(), "v1 cannot store a zero point of 0 (AutoGPTQ's uint32 wraps)"
    stored = stored.numpy().astype(np.uint32)
    qzeros = np.zeros((stored.shape[0], n // 32 * bits), dtype=np.uint32)
    i = col = 0
    while col < qzeros.shape[1]:
        for j in range(i, i + 32 // bits):
            qzeros[:, col] |= stored[:, j] << (bits * (j - i))
        i += 32 // bits
        col += 1
    return torch.from_numpy(qweight.astype(np.int32)), torch.from_numpy(qzeros.astype(np.int32))


def gptq_dequantize(codes, scales, zeros, g_idx) -> torch.Tensor:
    """GPTQ's own dequantization, W[n, k] = scales[g, n] * (q[k, n] - zero[g, n]) with g = g_idx[k]."""
    g = g_idx.long()
    return (scales.float()[g] * (codes.float() - zeros[g])).t()  # [N, K]


def gptq_config(bits=4, group_size=128, desc_act=False, sym=True, **extra) -> dict:
    """The quantization_config a TheBloke/...-GPTQ checkpoint carries."""
    return {"bits": bits, "group_size": group_size, "damp_percent": 0.1, "desc_act": desc_act,
            "static_groups": False, "sym": sym, "true_sequential": True, "model_name_or_path": None,
            "model_file_base_name": "model", "quant_method": "gptq", **extra}
