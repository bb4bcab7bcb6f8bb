"""One linear layer read from a pre-quantized checkpoint: a QuantizedWeight and the input column order.

GPTQ with act-order (`desc_act`) quantizes input columns in order of decreasing activation energy, so a
group's columns are scattered over K (`g_idx[k]` names column k's group). QuantizedWeight wants each group
to be contiguous columns; rather than store scattered groups we reorder the columns once at load:

    y = x @ W.T = x[..., perm] @ W[:, perm].T

so the layer keeps W[:, perm] (groups contiguous) and gathers its input with `perm` first
(`x.index_select(-1, input_perm)`). Without act-order the order is the identity and input_perm is None.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.common_form import common_form
from nanoserve.model.quantization.quantized_weight import QuantizedWeight


@dataclass
class CheckpointLinear:
    weight: QuantizedWeight  # [N, K] in input_perm's column order
    input_perm: torch.Tensor | None  # [K] int64: the input column each weight column reads; None: identity

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The [N, K] weight in the checkpoint's own column order (what a float linear would hold)."""
        permuted = self.weight.dequantize(dtype)
        if self.input_perm is None:
            return permuted
        weight = torch.empty_like(permuted)
        weight[:, self.input_perm] = permuted
        return weight

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The reference forward, x [..., K] -> [..., N] (dequantized; the oracle, not a fast path)."""
        if self.input_perm is not None:
            x = x.index_select(-1, self.input_perm)
        return x @ self.weight.dequantize(x.dtype).t()


def group_columns(g_idx: torch.Tensor, group_size: int, layer: str) -> torch.Tensor | None:
    """The column order that makes `g_idx`'s groups contiguous, or None when they already are.

    g_idx [K]: the group of each input column. After sorting, group g must be exactly columns
    g * group_size .. (g + 1) * group_size - 1, as GPTQ assigns them; anything else cannot be one
    QuantizedWeight and is refused."""
    k = g_idx.numel()
    expected = torch.arange(k, device=g_idx.device) // group_size  # [K]
    g_idx = g_idx.to(torch.int64)
    if torch.equal(g_idx, expected):
        return None
    perm = torch.argsort(g_idx, stable=True)  # [K]
    if not torch.equal(g_idx[perm], expected):
        raise ModelLoadError(
            f"{layer}: g_idx does not give every group exactly {group_size} input columns; "
            "this checkpoint's act-order grouping is not supported"
        )
    return perm


def stack_linears(parts: list[CheckpointLinear], layer: str) -> CheckpointLinear:
    """Projections that share an input (q/k/v, gate/up) as one linear: their rows stacked along N.

    They must agree on activation quantization and input order (GPTQ's act-order gives q, k and v the
    same order because they see the same inputs); parts of different bits or group sizes (a GGUF's Q4_K
    q/k beside a Q6_K v) are first brought to one form that dequantizes identically (common_form.py)."""
    first = parts[0]
    for part in parts[1:]:
        w, f = part.weight, first.weight
        if (w.act_quant, w.shape[1]) != (f.act_quant, f.shape[1]):
            raise ModelLoadError(f"{layer}: the stacked projections are quantized differently "
                                 f"({w.bits}-bit group {w.group_size} vs {f.bits}-bit group {f.group_size})")
        same_perm = (part.input_perm is None and first.input_perm is None) or (
            part.input_perm is not None and first.input_perm is not None
            and torch.equal(part.input_perm, first.input_perm)
        )
        if not same_perm:
            raise ModelLoadError(f"{layer}: the stacked projections have different act-order (g_idx) "
                                 "column orders; they cannot share one input")
    try:
        weights = common_form([p.weight for p in parts])
    except ValueError as e:
        raise ModelLoadError(f"{layer}: the stacked projections are quantized differently: {e}") from e
    if all(w.zeros is None for w in weights):
        zeros = None
    else:  # one explicit zero point for all: parts without one use the default code
        zeros = torch.cat([w.zero_points() for w in weights])
    stacked = QuantizedWeight(
        qweight=torch.cat([w.qweight for w in weights]),  # [sum N, K]
        scales=torch.cat([w.scales for w in weights]),  # [sum N, G]
        zeros=zeros,
        bits=weights[0].bits,
        group_size=weights[0].group_size,
        act_quant=weights[0].act_quant,
    )
    return CheckpointLinear(stacked, first.input_perm)


def unsigned_codes_weight(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                          group_size: int) -> QuantizedWeight:
    """Unsigned codes [N, K] (0 .. 2**bits - 1) with scales and zero points [N, G] -> QuantizedWeight,
    whose int8 codes are signed (shifted by 128); all-default zero points become None."""
    offset = 128 if bits == 8 else 0
    qweight = (codes - offset).to(torch.int8 if bits == 8 else torch.uint8).contiguous()
    zeros = zeros - offset
    default = 8.0 if bits == 4 else 0.0
    symmetric = bool((zeros == default).all())  # sym checkpoints: drop the zeros, kernels go faster
    return QuantizedWeight(qweight=qweight, scales=scales.float().contiguous(),
                           zeros=None if symmetric else zeros.contiguous(), bits=bits, group_size=group_size)


def require_tensor(tensors: Mapping[str, torch.Tensor], prefix: str, suffix: str) -> torch.Tensor:
    name = f"{prefix}.{suffix}"
    if name not in tensors:
        raise ModelLoadError(f"missing tensor {name!r} of a quantized linear layer")
    return tensors[name]


def layer_tensors(
    names: Collection[str], marker: str, suffixes: tuple[str, ...]
) -> dict[str, tuple[str, ...]]:
    """{layer prefix: its tensor names} for every `<prefix>.<marker>` in `names`; a layer's tensors are
    those `<prefix>.<suffix>` of `suffixes` that the checkpoint has."""
    layers: dict[str, tuple[str, ...]] = {}
    for name in names:
        prefix, _, leaf = name.rpartition(".")
        if leaf == marker:
            layers[prefix] = tuple(f"{prefix}.{s}" for s in suffixes if f"{prefix}.{s}" in names)
    return layers
