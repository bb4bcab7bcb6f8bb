"""Building blocks of the Llama-family decoder: RMSNorm, rotary embedding, gated SiLU MLP, packed linears.

Numerics follow transformers' reference implementations (norm in float32, rotary tables in
float32) so that greedy outputs are token-identical to it. Every block is a handful of large tensor
operations: a decode step runs them once per layer, so each extra small op costs ~24 × 5 µs a step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nanoserve.errors import ModelLoadError
from nanoserve.model import native_kernels
from nanoserve.model.cpu_linear import FastLinear

SUPPORTED_ROPE_TYPES = ("default", "llama3")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """norm(x), or with `residual`: x += residual in place (the new residual stream), then norm(x)."""
        native = native_kernels.loaded()
        if native is not None and x.device.type == "cpu" and x.is_contiguous():
            return native.add_rms_norm(x, residual, self.weight, self.eps)
        if residual is not None:
            x.add_(residual)
        # F.rms_norm in float32 is bit-identical to transformers' x * rsqrt(mean(x²) + eps), in one op.
        h = F.rms_norm(x.float(), (x.shape[-1],), None, self.eps)
        return self.weight * h.to(x.dtype)


class PackedLinear(nn.Module):
    """`y = x @ weight.T + bias` through `cpu_linear.FastLinear`, made once at load from loaded weights.

    Several projections of one input (q/k/v, gate/up) are concatenated into one weight, so one call
    streams all their rows; `sizes` says how to split the output. backend "torch" is the plain
    `F.linear` reference path; bf16 weights on CPU take the faster paths with any other backend. The
    weight is held by the FastLinear, not registered as a parameter (the oneDNN path keeps only its
    packed copy).
    """

    def __init__(
        self, weights: list[torch.Tensor], biases: list[torch.Tensor | None], backend: str = "auto"
    ) -> None:
        super().__init__()
        self.sizes = [w.shape[0] for w in weights]
        weight = weights[0].detach() if len(weights) == 1 else torch.cat([w.detach() for w in weights])
        bias = None
        if any(b is not None for b in biases):
            pairs = zip(biases, self.sizes, strict=True)
            bias = torch.cat([b.detach() if b is not None else weight.new_zeros(n) for b, n in pairs])
        self.linear = FastLinear(weight, bias, backend)
        self.backend = self.linear.backend

    @classmethod
    def merge(cls, linears: list[nn.Linear], backend: str = "auto") -> PackedLinear:
        return cls([m.weight for m in linears], [m.bias for m in linears], backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, backend={self.backend}"


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)

        self.gate_up_proj: PackedLinear | None = None  # made by pack()

    def pack(self, backend: str) -> None:
        """Replace gate/up by one concatenated projection (and down by a packed one)."""
        self.gate_up_proj = PackedLinear.merge([self.gate_proj, self.up_proj], backend)
        self.down_proj = PackedLinear.merge([self.down_proj], backend)
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2I]
        native = native_kernels.loaded()
        if native is not None and gate_up.device.type == "cpu":
            return self.down_proj(native.silu_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)  # [T, I] each
        return self.down_proj(F.silu(gate).mul_(up))


def rope_inv_freq(head_dim: int, rope: dict[str, Any]) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] (float32) for rope type "default" or "llama3"."""
    theta = float(rope.get("rope_theta", 10000.0))
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type == "default":
        return inv_freq
    if rope_type != "llama3":
        raise ModelLoadError(
            f"unsupported rope_scaling type {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}"
        )
    factor = float(rope["factor"])
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_len = float(rope["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Neox-style (rotate-half) rotary embedding with a precomputed cos/sin table."""

    def __init__(self, head_dim: int, max_positions: int, rope: dict[str, Any]) -> None:
        super().__init__()
        self.head_dim, self.max_positions, self.rope = head_dim, max_positions, rope
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.build()

    def build(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the float32 cos/sin tables, e.g. after the model was made on the meta device.

        Computed on the CPU even inside a `torch.device("meta")` block: meta-device arithmetic runs
        Python decompositions that import torch._dynamo (seconds of start-up)."""
        inv_freq = rope_inv_freq(self.head_dim, self.rope)
        positions = torch.arange(self.max_positions, dtype=torch.float32, device="cpu")
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_positions, head_dim]
        self.cos, self.sin = emb.cos().to(device), emb.sin().to(device)

        half = self.head_dim // 2
        # rotate_half(x) * sin == flip_halves(x) * sin_signed with sin_signed = [-sin_lo, sin_hi]: exact.
        self.sin_signed = torch.cat((-self.sin[:, :half], self.sin[:, half:]), dim=-1)

    def gather(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin_signed [T, 1, D] in `dtype` for the step's positions: once per step, for every layer."""
        cos = self.cos[positions].to(dtype).unsqueeze(1)
        sin = self.sin_signed[positions].to(dtype).unsqueeze(1)
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x [T, N, D] (any N heads, e.g. q and k side by side) -> rotated copy; bit-identical to
    transformers' `x * cos + rotate_half(x) * sin`."""
    t, n, d = x.shape
    flipped = x.view(t, n, 2, d // 2).flip(2).view(t, n, d)  # [x_hi, x_lo]
    return (x * cos).add_(flipped * sin_signed)
