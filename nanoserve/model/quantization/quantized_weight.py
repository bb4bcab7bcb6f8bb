"""A linear layer's weight in integer form: the one format every quantization path meets in.

Methods that quantize at load (int8, int4, w8a8), the checkpoint readers (GPTQ, AWQ,
compressed-tensors, GGUF) and the kernels all speak this format, so a reader never needs to know a
kernel's packed layout and a kernel never needs to know a checkpoint's:

    W[n, k] ≈ (q[n, k] - zero[n, g]) * scale[n, g],   g = k // group_size

with one integer code per byte (unpacked). Kernels pack it into their own layout once at load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedWeight:
    qweight: torch.Tensor  # [N, K] int8 for bits=8 (-128..127), uint8 codes 0..15 for bits=4
    scales: torch.Tensor  # [N, G] float32, G = ceil(K / group_size); per output channel: G = 1
    zeros: torch.Tensor | None  # [N, G] float32 code that means 0.0; None: 0 (int8) or 8 (int4)
    bits: int  # 8 or 4
    group_size: int  # input columns per scale; K (or more) means one scale per output channel
    act_quant: bool = False  # w8a8: activations are quantized per token at run time too

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8 (got {self.bits})")
        n, k = self.qweight.shape
        g = -(-k // self.group_size)
        if tuple(self.scales.shape) != (n, g):
            raise ValueError(f"scales must be [{n}, {g}] for qweight [{n}, {k}] and group_size "
                             f"{self.group_size} (got {list(self.scales.shape)})")
        if self.zeros is not None and tuple(self.zeros.shape) != (n, g):
            raise ValueError(f"zeros must be [{n}, {g}] (got {list(self.zeros.shape)})")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.qweight.shape)  # type: ignore[return-value]

    def zero_points(self) -> torch.Tensor:
        """[N, G] float32: the code that dequantizes to 0.0 in each group."""
        if self.zeros is not None:
            return self.zeros.float()
        default = 8.0 if self.bits == 4 else 0.0
        return torch.full_like(self.scales, default, dtype=torch.float32)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The [N, K] weight this stands for (the oracle of every kernel and reader test)."""
        n, k = self.qweight.shape
        cols = torch.arange(k, device=self.qweight.device) // self.group_size  # [K] group of each column
        scale = self.scales.float()[:, cols]  # [N, K]
        zero = self.zero_points()[:, cols]  # [N, K]
        return ((self.qweight.float() - zero) * scale).to(dtype)

    def nbytes(self) -> int:
        """Bytes this weight takes when stored packed: bits/8 per weight plus fp32 scales (and zeros).

        The figure the planner's `quantized_weight_bytes` predicts; kernel layouts add only padding."""
        n, k = self.qweight.shape
        per_group = 4 * self.scales.numel() + (4 * self.zeros.numel() if self.zeros is not None else 0)
        return n * k * self.bits // 8 + per_group
