"""AWQ checkpoints in the GEMM layout (AutoAWQ `WQLinear_GEMM`): one linear layer -> CheckpointLinear.

An AWQ linear `<prefix>` is stored as (K input, N output features, G = K / group_size groups):

    <prefix>.qweight  int32 [K, N / 8]   4-bit codes packed along N
    <prefix>.qzeros   int32 [G, N / 8]   zero points packed the same way
    <prefix>.scales   fp16  [G, N]

    W[n, k] = scales[g, n] * (q[k, n] - zero[g, n]),   g = k // group_size

Unlike GPTQ the eight codes of a word are interleaved: nibble i (bits 4i .. 4i+3) holds column
AWQ_PACK_ORDER[i] of its block of eight, an order the CUDA kernel's dequantization wants.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.checkpoint_linear import (
    CheckpointLinear,
    layer_tensors,
    require_tensor,
    unsigned_codes_weight,
)
from nanoserve.model.quantization.packed_int32 import unpack_int32

TENSOR_SUFFIXES = ("qweight", "qzeros", "scales")
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds column AWQ_PACK_ORDER[i]
SUPPORTED_VERSIONS = ("gemm",)


@dataclass(frozen=True)
class AWQConfig:
    bits: int
    group_size: int
    zero_point: bool
    version: str

    @classmethod
    def from_config(cls, qc: Mapping[str, Any]) -> AWQConfig:
        """Validate config.json's `quantization_config` (quant_method "awq")."""
        bits = int(qc.get("bits", qc.get("w_bit", 4)))
        if bits != 4:
            raise ModelLoadError(f"AWQ with bits={bits} is not supported; supported: 4")
        group_size = int(qc.get("group_size", qc.get("q_group_size", 128)))
        if group_size != -1 and group_size <= 0:
            raise ModelLoadError(f"AWQ group_size={group_size} is not supported (a positive size or -1)")
        version = str(qc.get("version", "gemm")).lower()
        if version not in SUPPORTED_VERSIONS:
            raise ModelLoadError(f"AWQ version={version!r} is not supported; supported: "
                                 f"{', '.join(SUPPORTED_VERSIONS)} (the GEMM layout; GEMV packs differently)")
        zero_point = bool(qc.get("zero_point", True))
        if not zero_point:
            raise ModelLoadError("AWQ with zero_point=false is not supported (GEMM stores zero points)")
        return cls(bits=bits, group_size=group_size, zero_point=zero_point, version=version)


    def layer_tensors(self, names: Collection[str]) -> dict[str, tuple[str, ...]]:
        """{layer prefix: its tensor names} for every quantized layer in a checkpoint's tensor `names`."""
        return layer_tensors(names, "qweight", TENSOR_SUFFIXES)

    def read_linear(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> CheckpointLinear:
        return read_awq_linear(self, prefix, tensors)


def read_awq_linear(cfg: AWQConfig, prefix: str, tensors: Mapping[str, torch.Tensor]) -> CheckpointLinear:
    """The linear `<prefix>` from its qweight/qzeros/scales."""
    qweight, qzeros, scales = (require_tensor(tensors, prefix, s) for s in TENSOR_SUFFIXES)
    per_word = 32 // cfg.bits
    k, n = qweight.shape[0], qweight.shape[1] * per_word
    num_groups = scales.shape[0]
    if tuple(scales.shape) != (num_groups, n) or tuple(qzeros.shape) != (num_groups, n // per_word):
        raise ModelLoadError(
            f"{prefix}: AWQ tensors do not fit together: qweight {list(qweight.shape)}, "
            f"qzeros {list(qzeros.shape)}, scales {list(scales.shape)} (expected qweight [K, N/8], "
            "qzeros [G, N/8], scales [G, N])"
        )
    group_size = k if cfg.group_size == -1 else cfg.group_size
    if num_groups != -(-k // group_size):
        raise ModelLoadError(f"{prefix}: {num_groups} AWQ groups for K={k} and group_size {group_size}; "
                             f"expected {-(-k // group_size)}")
    codes = _unpack_awq(qweight).t()  # [N, K]
    zeros = _unpack_awq(qzeros).t().float()  # [N, G]
    return CheckpointLinear(unsigned_codes_weight(codes, scales.t(), zeros, cfg.bits, group_size), None)


def _unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] -> codes [R, 8 C] in column order (undoing the interleave within each word)."""
    nibbles = unpack_int32(packed, 4, dim=1)  # [R, 8 C]: nibble order
    rows, cols = nibbles.shape
    column_of_nibble = torch.tensor(AWQ_PACK_ORDER, device=packed.device)
    nibble_of_column = torch.argsort(column_of_nibble)  # [8]: (0, 4, 1, 5, 2, 6, 3, 7)
    return nibbles.reshape(rows, cols // 8, 8)[:, :, nibble_of_column].reshape(rows, cols)
