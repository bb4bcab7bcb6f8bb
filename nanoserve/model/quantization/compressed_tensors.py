"""compressed-tensors checkpoints (llm-compressor): config groups and one linear layer -> CheckpointLinear.

Two formats, each a layer `<prefix>` of K input and N output features:

- `pack-quantized` (W4A16, W8A16): signed b-bit codes plus 2**(b-1), packed 32 // b per int32 word,
  first code in the lowest bits, along K (rows padded to whole words):
      <prefix>.weight_packed      int32 [N, ceil(K b / 32)]
      <prefix>.weight_shape       int   [2] = (N, K)
      <prefix>.weight_scale       float [N, G] (group), [N, 1] (channel)
      <prefix>.weight_zero_point  int32 [ceil(N b / 32), G]  asymmetric only; packed along N
      <prefix>.weight_g_idx       int   [K]                  act-order "group" only
- `int-quantized` / `naive-quantized` (W8A8, W8A16): <prefix>.weight int8 [N, K],
  <prefix>.weight_scale [N, 1] (or [1], [N, G]), <prefix>.weight_zero_point int8 like the scale.

    W[n, k] = weight_scale[n, g] * (q[n, k] - zero_point[n, g]),  g = k // group_size

Which layers carry which scheme: `config_groups` (each with `targets`: "Linear", an exact layer name or
"re:<regex>"), minus the `ignore` list; W8A8's input_activations say quantize activations per token.
"""

from __future__ import annotations

import re
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
from nanoserve.model.quantization.quantized_weight import QuantizedWeight

PACKED_SUFFIXES = ("weight_packed", "weight_shape", "weight_scale", "weight_zero_point", "weight_g_idx")
INT_SUFFIXES = ("weight", "weight_scale", "weight_zero_point")
PACKED_FORMATS = ("pack-quantized",)
INT_FORMATS = ("int-quantized", "naive-quantized")
WEIGHT_STRATEGIES = ("group", "channel", "tensor")


@dataclass(frozen=True)
class CTScheme:
    """One config group: the layers it targets and how their weights (and activations) are stored."""
    targets: tuple[str, ...]
    format: str  # one of PACKED_FORMATS + INT_FORMATS
    bits: int
    strategy: str  # one of WEIGHT_STRATEGIES
    group_size: int | None  # strategy "group" only
    symmetric: bool
    act_quant: bool  # dynamic per-token symmetric int8 activations (W8A8)

    @classmethod
    def from_config(cls, name: str, group: Mapping[str, Any], default_format: str | None) -> CTScheme:
        fmt = group.get("format") or default_format
        if fmt not in PACKED_FORMATS + INT_FORMATS:
            raise ModelLoadError(f"compressed-tensors format {fmt!r} ({name}) is not supported; supported: "
                                 f"{', '.join(PACKED_FORMATS + INT_FORMATS)}")
        w = group.get("weights") or {}
        bits, wtype, strategy = int(w.get("num_bits", 8)), w.get("type", "int"), w.get("strategy")
        if wtype != "int":
            raise ModelLoadError(f"compressed-tensors {wtype} weights ({name}) are not supported; "
                                 "supported: int")
        if bits not in ((4, 8) if fmt in PACKED_FORMATS else (8,)):
            raise ModelLoadError(f"compressed-tensors {fmt} with {bits}-bit weights ({name}) is not "
                                 "supported; supported: 4 and 8 bits packed, 8 bits int-quantized")
        if strategy not in WEIGHT_STRATEGIES:
            raise ModelLoadError(f"compressed-tensors weight strategy {strategy!r} ({name}) is not "
                                 f"supported; supported: {', '.join(WEIGHT_STRATEGIES)}")
        if w.get("dynamic"):
            raise ModelLoadError(f"compressed-tensors dynamic weight quantization ({name}) is not supported")
        group_size = int(w["group_size"]) if strategy == "group" else None
        if group_size is not None and group_size <= 0:
            raise ModelLoadError(f"compressed-tensors group_size={group_size} ({name}) is not supported")
        if group.get("output_activations"):
            raise ModelLoadError(f"compressed-tensors output_activations ({name}) are not supported")
        act = group.get("input_activations")
        if act:
            wanted = {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True, "symmetric": True}
            have = {key: act.get(key) for key in wanted}
            if have != wanted or fmt not in INT_FORMATS:
                raise ModelLoadError(
                    f"compressed-tensors input_activations {have} with {bits}-bit {fmt} weights ({name}) are "
                    "not supported; supported: none (weight-only) or dynamic symmetric int8 per token with "
                    "int8 weights (W8A8)"
                )
        return cls(targets=tuple(group.get("targets") or ("Linear",)), format=fmt, bits=bits,
                   strategy=strategy, group_size=group_size, symmetric=bool(w.get("symmetric", True)),
                   act_quant=bool(act))


@dataclass(frozen=True)
class CompressedTensorsConfig:
    schemes: tuple[CTScheme, ...]
    ignore: tuple[str, ...]

    @classmethod
    def from_config(cls, qc: Mapping[str, Any]) -> CompressedTensorsConfig:
        """Validate config.json's `quantization_config` (quant_method "compressed-tensors")."""
        if qc.get("kv_cache_scheme"):
            raise ModelLoadError("compressed-tensors kv_cache_scheme is not supported (use kv_cache_dtype)")
        sparsity = qc.get("sparsity_config") or {}
        if sparsity.get("format") not in (None, "dense"):
            raise ModelLoadError(f"compressed-tensors sparsity format {sparsity['format']!r} is not "
                                 "supported; supported: dense")
        groups = qc.get("config_groups") or {}
        if not groups:
            raise ModelLoadError("compressed-tensors quantization_config has no config_groups")
        schemes = tuple(CTScheme.from_config(name, g, qc.get("format")) for name, g in groups.items())
        return cls(schemes=schemes, ignore=tuple(qc.get("ignore") or ()))

    def scheme_for(self, layer: str) -> CTScheme | None:
        """The scheme of the linear `layer` (None: left in float by the `ignore` list or no target)."""
        if any(_matches(target, layer) for target in self.ignore):
            return None
        return next((s for s in self.schemes if any(_matches(t, layer) for t in s.targets)), None)

    def layer_tensors(self, names: Collection[str]) -> dict[str, tuple[str, ...]]:
        """{layer prefix: its tensor names} for every quantized layer in a checkpoint's tensor `names`."""
        layers = layer_tensors(names, "weight_packed", PACKED_SUFFIXES)
        for prefix, members in layer_tensors(names, "weight_scale", INT_SUFFIXES).items():
            if prefix not in layers:
                layers[prefix] = members
        return layers

    def read_linear(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> CheckpointLinear:
        return read_compressed_tensors_linear(self, prefix, tensors)


def read_compressed_tensors_linear(cfg: CompressedTensorsConfig, prefix: str,
                                   tensors: Mapping[str, torch.Tensor]) -> CheckpointLinear:
    """The linear `<prefix>` from its weight_packed/weight (+ scale, zero point, shape, g_idx)."""
    scheme = cfg.scheme_for(prefix)
    if scheme is None:
        raise ModelLoadError(f"{prefix} has quantized tensors but no config_groups target it (or it is "
                             "in ignore)")
    scale = require_tensor(tensors, prefix, "weight_scale")
    zero_point = tensors.get(f"{prefix}.weight_zero_point")
    if not scheme.symmetric and zero_point is None:
        raise ModelLoadError(f"missing tensor '{prefix}.weight_zero_point' of an asymmetric layer")
    if scheme.format in PACKED_FORMATS:
        n, k = (int(v) for v in require_tensor(tensors, prefix, "weight_shape").tolist())
        offset = 1 << (scheme.bits - 1)  # stored code = signed code + offset
        codes = unpack_int32(require_tensor(tensors, prefix, "weight_packed"), scheme.bits, dim=1)[:, :k]
        if codes.shape[0] != n or codes.shape[1] != k:
            raise ModelLoadError(f"{prefix}: weight_packed {list(tensors[f'{prefix}.weight_packed'].shape)} "
                                 f"does not hold weight_shape [{n}, {k}] in {scheme.bits}-bit codes")
    else:
        weight = require_tensor(tensors, prefix, "weight")
        if weight.dtype != torch.int8:
            raise ModelLoadError(f"{prefix}.weight is {weight.dtype}, expected int8 ({scheme.format})")
        n, k = weight.shape
        offset = 0
        codes = weight.to(torch.int32)
    group_size = scheme.group_size if scheme.strategy == "group" else k
    num_groups = -(-k // group_size)
    scales = _per_group(scale, n, num_groups, f"{prefix}.weight_scale")  # [N, G]
    if zero_point is None:
        zeros = torch.full((n, num_groups), float(offset))
    elif scheme.format in PACKED_FORMATS:  # packed along N, offset like the codes
        zeros = unpack_int32(zero_point, scheme.bits, dim=0)[:n].float()
        zeros = _per_group(zeros, n, num_groups, f"{prefix}.weight_zero_point")
    else:
        zeros = _per_group(zero_point.float(), n, num_groups, f"{prefix}.weight_zero_point")
    perm = None
    g_idx = tensors.get(f"{prefix}.weight_g_idx")
    if g_idx is not None:
        if g_idx.numel() != k:
            raise ModelLoadError(f"{prefix}: weight_g_idx has {g_idx.numel()} entries for K={k}")
        perm = group_columns(g_idx, group_size, prefix)
        if perm is not None:
            codes = codes[:, perm]
    if scheme.format in PACKED_FORMATS:  # unsigned codes, as GPTQ and AWQ store them
        weight_q = unsigned_codes_weight(codes, scales, zeros, scheme.bits, group_size)
    else:  # int8 codes as they are
        weight_q = QuantizedWeight(qweight=codes.to(torch.int8).contiguous(), scales=scales, bits=8,
                                   zeros=None if bool((zeros == 0).all()) else zeros, group_size=group_size,
                                   act_quant=scheme.act_quant)
    return CheckpointLinear(weight_q, perm)


def _per_group(values: torch.Tensor, n: int, num_groups: int, name: str) -> torch.Tensor:
    """A scale or zero point as [N, G] float32; a per-tensor one ([1] or [1, 1]) repeats over N."""
    if values.numel() == 1:
        return values.float().reshape(1, 1).expand(n, num_groups).contiguous()
    if tuple(values.shape) != (n, num_groups):
        raise ModelLoadError(f"{name} is {list(values.shape)}, expected [{n}, {num_groups}]")
    return values.float().contiguous()


def _matches(target: str, layer: str) -> bool:
    if target == "Linear":  # a class name: only linear layers reach here
        return True
    if target.startswith("re:"):
        return re.match(target[3:], layer) is not None
    return target == layer
