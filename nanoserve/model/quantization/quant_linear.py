"""QuantLinear: a linear layer over a QuantizedWeight, with a PyTorch reference path on every device and a
hook for native kernels.

Schemes (from the weight): ``w8a16`` (int8 weight, activations in the model dtype), ``w4a16`` (int4
weight) and ``w8a8`` (int8 weight, activations quantized per token at run time).

Reference path (the oracle of every kernel test, and what runs where no kernel does):
- w8a16 / w4a16: ``F.linear(x, dequantize(W), bias)``, the weight dequantized in float32 per call and
  cast to x's dtype. Nothing float is cached, so the layer holds only the integer codes (int4 two per
  byte), the float32 scales (and zeros) and the bias: the memory the quantization promised.
- w8a8: x quantized per token to int8 (activations.py), an exact int32 matmul of the codes per weight
  group, times the outer product of the token scales and the weight scales.

Native kernels plug in through `prepare(backend)`: unless backend is "torch" (or the layer is not on
the CPU), it imports nanoserve/model/quant_kernels.py, calls its `load_quant_kernels()`, then
``pack_<scheme>(QuantizedWeight)`` once and ``linear_<scheme>(x, packed, bias)`` per call. A missing
module, a failed load or a pack that raises leaves the reference path in place (`self.backend` says
which). The packed object replaces the reference tensors, so it should be a tensor or a tuple/list/dict
of tensors for `weight_bytes` to count it.

`input_perm` (GPTQ act-order, checkpoint_linear.py): the weight's columns are stored in that order of
the input's, so both paths gather `x.index_select(-1, input_perm)` before the product; None: identity.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nanoserve.model.quantization.activations import int8_matmul, quantize_per_token
from nanoserve.model.quantization.int4_packing import pack_int4, unpack_int4
from nanoserve.model.quantization.quantized_weight import QuantizedWeight

log = logging.getLogger(__name__)

_kernels: ModuleType | None = None
_kernels_tried = False
_kernels_lock = threading.Lock()


def native_quant_kernels() -> ModuleType | None:
    """nanoserve.model.quant_kernels when it imports and its `load_quant_kernels()` succeeds, else None."""
    global _kernels, _kernels_tried
    with _kernels_lock:
        if not _kernels_tried:
            _kernels_tried = True
            try:
                from nanoserve.model import quant_kernels

                if quant_kernels.load_quant_kernels():
                    _kernels = quant_kernels
            except Exception as e:  # not written yet, no compiler, CPU without the instructions...
                log.info("quantization: native kernels unavailable (%s: %s)", type(e).__name__, e)
        return _kernels


def scheme_of(qw: QuantizedWeight) -> str:
    if qw.act_quant:
        if qw.bits != 8 or qw.zeros is not None:
            raise ValueError("w8a8 needs symmetric 8-bit weights (bits=8, zeros None)")
        return "w8a8"
    return "w8a16" if qw.bits == 8 else "w4a16"


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in obj (a tensor, a tuple/list/dict of them, a dataclass of them)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(o) for o in obj.values())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(tensor_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


class QuantLinear(nn.Module):
    """`y = x @ W.T + bias` for a quantized W; callable on any leading shape, like FastLinear.

    output_sizes: the widths of the stacked projections in its rows (q/k/v, gate/up), as FastLinear's.
    Build it with `from_quantized(qw, bias)` (checkpoint readers) or `from_linear(linear, config)`
    (quantize at load); `set_quantized` swaps the weight of an existing one."""

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None = None,
                 output_sizes: list[int] | None = None, input_perm: torch.Tensor | None = None) -> None:
        super().__init__()
        self.set_quantized(qw, bias, output_sizes, input_perm)

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None,
                       output_sizes: list[int] | None = None,
                       input_perm: torch.Tensor | None = None) -> QuantLinear:
        return cls(qw, bias, output_sizes, input_perm)

    @classmethod
    def from_linear(
        cls, linear: nn.Module, quantize: Callable[[torch.Tensor], QuantizedWeight]
    ) -> QuantLinear:
        """A loaded, unprepared FastLinear (plain `weight`) quantized by `quantize`; the bias kept as is."""
        if getattr(linear, "weight", None) is None:
            raise ValueError(f"{linear!r} has no plain weight to quantize (prepared already?)")
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls(quantize(linear.weight.detach()), bias, getattr(linear, "output_sizes", None))

    def set_quantized(self, qw: QuantizedWeight, bias: torch.Tensor | None = None,
                      output_sizes: list[int] | None = None, input_perm: torch.Tensor | None = None) -> None:
        """Hold `qw` (and `bias`, kept in its dtype) on the reference path; drops any native packing.

        input_perm [K]: the input column each of qw's columns reads (None: the identity)."""
        self.scheme = scheme_of(qw)
        n, k = qw.shape
        if input_perm is not None and tuple(input_perm.shape) != (k,):
            raise ValueError(f"input_perm must be [{k}] for a weight of {k} columns "
                             f"(got {list(input_perm.shape)})")
        self.out_features, self.in_features = n, k
        self.output_sizes = list(output_sizes) if output_sizes is not None else [n]
        if sum(self.output_sizes) != n:
            raise ValueError(f"output_sizes {self.output_sizes} do not add up to the weight's {n} rows")
        self.bits, self.group_size, self.act_quant = qw.bits, qw.group_size, qw.act_quant
        self.zero_point = qw.zeros is not None
        codes = pack_int4(qw.qweight) if qw.bits == 4 else qw.qweight.to(torch.int8)
        self.register_buffer("qweight", codes.contiguous(), persistent=False)  # [N, K] int8 | [N, K/2] uint8
        self.register_buffer("scales", qw.scales.float().contiguous(), persistent=False)  # [N, G]
        zeros = qw.zeros.float().contiguous() if qw.zeros is not None else None
        self.register_buffer("zeros", zeros, persistent=False)  # [N, G] or None
        self.register_buffer("bias", bias.detach() if bias is not None else None, persistent=False)  # [N]
        perm = input_perm.to(torch.int64).contiguous() if input_perm is not None else None
        self.register_buffer("input_perm", perm, persistent=False)  # [K] or None
        self.backend = "torch"
        self._packed: Any = None
        self._kernel: Callable[..., torch.Tensor] | None = None

    def quantized_weight(self) -> QuantizedWeight:
        """The QuantizedWeight this layer holds (codes unpacked: one per byte)."""
        if self.qweight is None:
            raise RuntimeError(f"{self!r} keeps only its native kernel's layout")
        codes = unpack_int4(self.qweight, self.in_features) if self.bits == 4 else self.qweight
        return QuantizedWeight(codes, self.scales, self.zeros, self.bits, self.group_size, self.act_quant)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[N, K] float weight, computed as QuantizedWeight.dequantize does (bit for bit)."""
        n, k = self.out_features, self.in_features
        codes = unpack_int4(self.qweight, k) if self.bits == 4 else self.qweight
        gs = min(self.group_size, k)
        g = self.scales.shape[1]
        q = codes.float()  # [N, K]
        if g * gs != k:
            q = F.pad(q, (0, g * gs - k))  # [N, G * gs]
        q = q.view(n, g, gs)
        if self.zeros is not None:
            q = q - self.zeros[..., None]
        elif self.bits == 4:
            q = q - 8.0
        w = (q * self.scales[..., None]).view(n, g * gs)[:, :k]  # [N, K]
        return w.to(dtype)

    def prepare(self, backend: str = "auto", dtype: torch.dtype = torch.bfloat16) -> None:
        """After load: use the native kernel of this scheme unless backend is "torch" or none loads.

        dtype: the model's compute dtype. The kernels compute in bf16, so a float32 model stays on the
        reference path (exact in fp32), as FastLinear keeps fp32 weights on F.linear."""
        if backend == "torch" or self.qweight is None or self.qweight.device.type != "cpu":
            return
        if dtype != torch.bfloat16:
            return
        kernels = native_quant_kernels()
        if kernels is None:
            return
        try:
            packed = getattr(kernels, f"pack_{self.scheme}")(self.quantized_weight())
            kernel = getattr(kernels, f"linear_{self.scheme}")
        except Exception as e:  # a shape or layout the kernel does not take: the reference serves it
            log.info("quantization: %s stays on the reference path (%s: %s)", self, type(e).__name__, e)
            return
        self._packed, self._kernel, self.backend = packed, kernel, "native"
        self.qweight = self.scales = self.zeros = None  # the packed layout replaces them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_perm is not None:
            x = x.index_select(-1, self.input_perm)  # [..., K] in the weight's column order
        if self._kernel is not None:
            return self._kernel(x, self._packed, self.bias)
        lead = x.shape[:-1]
        if self.scheme == "w8a8":
            y = self._forward_w8a8(x.reshape(-1, self.in_features))  # [M, N] float32
            if self.bias is not None:
                y = y + self.bias.float()
            return y.to(x.dtype).reshape(*lead, self.out_features)
        return F.linear(x, self.dequantize(x.dtype), self.bias)

    def _forward_w8a8(self, x: torch.Tensor) -> torch.Tensor:
        codes, x_scales = quantize_per_token(x)  # [M, K] int8, [M, 1]
        k, gs = self.in_features, min(self.group_size, self.in_features)
        y = None
        for g in range(self.scales.shape[1]):  # one group per output channel unless grouped
            cols = slice(g * gs, min(k, (g + 1) * gs))
            acc = int8_matmul(codes[:, cols].contiguous(), self.qweight[:, cols].contiguous())  # [M, N] int32
            part = acc.float() * x_scales * self.scales[:, g]
            y = part if y is None else y + part
        return y

    def weight_bytes(self) -> int:
        """Bytes held for weight and bias: packed codes, scales, zeros (or the kernel's layout), bias."""
        held = [self.qweight, self.scales, self.zeros, self.bias, self.input_perm, self._packed]
        return sum(tensor_bytes(t) for t in held if t is not None)

    def extra_repr(self) -> str:
        return (f"{self.in_features}→{self.output_sizes}, {self.scheme}, group_size={self.group_size}, "
                f"zero_point={self.zero_point}, bias={self.bias is not None}, "
                f"act_order={self.input_perm is not None}, backend={self.backend}")
