"""GPTQ checkpoints (AutoGPTQ, GPTQModel, optimum): one linear layer's tensors -> CheckpointLinear.

A GPTQ linear `<prefix>` is stored as (K input, N output features, b bits, G groups):

    <prefix>.qweight  int32 [K * b / 32, N]   codes packed along K, first code in the lowest bits
    <prefix>.qzeros   int32 [G, N * b / 32]   zero points packed along N, likewise
    <prefix>.scales   fp16  [G, N]
    <prefix>.g_idx    int32 [K]               the group of each input column (act-order scatters them)

    W[n, k] = scales[g, n] * (q[k, n] - zero[g, n]),   g = g_idx[k]

The original ("gptq", v1) format stores every zero point minus one (AutoGPTQ's pack does `zeros -= 1`),
so the reader adds it back; GPTQModel's "gptq_v2" stores them as they are.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.checkpoint_linear import (
    CheckpointLinear,
    group_columns,
    layer_tensors,
    require_tensor,
    unsigned_codes_weight,
)
from nanoserve.model.quantization.packed_int32 import unpack_int32

TENSOR_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")
SUPPORTED_BITS = (4, 8)
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")


@dataclass(frozen=True)
class GPTQConfig:
    bits: int
    group_size: int  # input columns per group; -1: one group per output channel
    desc_act: bool  # act-order: g_idx scatters groups over the input columns
    sym: bool
    checkpoint_format: str  # "gptq" (zero points stored minus one) or "gptq_v2"

    @classmethod
    def from_config(cls, qc: Mapping[str, Any]) -> GPTQConfig:
        """Validate config.json's `quantization_config` (quant_method "gptq")."""
        bits = int(qc.get("bits", 4))
        if bits not in SUPPORTED_BITS:
            raise ModelLoadError(f"GPTQ with bits={bits} is not supported; supported: 4 and 8")
        group_size = int(qc.get("group_size", 128))
        if group_size != -1 and group_size <= 0:
            raise ModelLoadError(f"GPTQ group_size={group_size} is not supported (a positive size or -1)")
        fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
        if fmt not in CHECKPOINT_FORMATS:
            raise ModelLoadError(f"GPTQ checkpoint_format={fmt!r} is not supported; supported: "
                                 f"{', '.join(CHECKPOINT_FORMATS)} (repack {fmt} checkpoints to gptq)")
        return cls(bits=bits, group_size=group_size, desc_act=bool(qc.get("desc_act", False)),
                   sym=bool(qc.get("sym", True)), checkpoint_format=fmt)


    def layer_tensors(self, names: Collection[str]) -> dict[str, tuple[str, ...]]:
        """{layer prefix: its tensor names} for every quantized layer in a checkpoint's tensor `names`."""
        return layer_tensors(names, "qweight", TENSOR_SUFFIXES)

    def read_linear(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> CheckpointLinear:
        return read_gptq_linear(self, prefix, tensors)


def read_gptq_linear(cfg: GPTQConfig, prefix: str, tensors: Mapping[str, torch.Tensor]) -> CheckpointLinear:
    """The linear `<prefix>` from its qweight/qzeros/scales (and g_idx, when stored)."""
    qweight, qzeros, scales = (require_tensor(tensors, prefix, s) for s in ("qweight", "qzeros", "scales"))
    per_word = 32 // cfg.bits
    k, n = qweight.shape[0] * per_word, qweight.shape[1]
    num_groups = scales.shape[0]
    if tuple(scales.shape) != (num_groups, n) or tuple(qzeros.shape) != (num_groups, n // per_word) \
            or n % per_word:
        raise ModelLoadError(
            f"{prefix}: GPTQ tensors do not fit together for {cfg.bits}-bit: qweight {list(qweight.shape)}, "
            f"qzeros {list(qzeros.shape)}, scales {list(scales.shape)} (N must be a multiple of {per_word})"
        )
    group_size = k if cfg.group_size == -1 else cfg.group_size
    if num_groups != -(-k // group_size):
        raise ModelLoadError(f"{prefix}: {num_groups} GPTQ groups for K={k} and group_size {group_size}; "
                             f"expected {-(-k // group_size)}")
    g_idx = tensors.get(f"{prefix}.g_idx")
    perm = None
    if g_idx is None and cfg.desc_act:
        raise ModelLoadError(f"missing tensor '{prefix}.g_idx': desc_act=true needs each column's group")
    if g_idx is not None:
        if g_idx.numel() != k:
            raise ModelLoadError(f"{prefix}: g_idx has {g_idx.numel()} entries for K={k} input columns "
                                 f"(qweight {list(qweight.shape)} holds {per_word} codes per word)")
        perm = group_columns(g_idx, group_size, prefix)
    codes = unpack_int32(qweight, cfg.bits, dim=0).t()  # [N, K] 0 .. 2**bits - 1
    if perm is not None:
        codes = codes[:, perm]
    zeros = unpack_int32(qzeros, cfg.bits, dim=1).t().float()  # [N, G]
    if cfg.checkpoint_format == "gptq":
        zeros = zeros + 1  # v1 stores zero - 1 (a 0 zero point wrapped to 2**bits - 1; kernels add 1 too)
    return CheckpointLinear(unsigned_codes_weight(codes, scales.t(), zeros, cfg.bits, group_size), perm)

