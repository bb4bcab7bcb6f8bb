"""Building blocks of the Llama-family decoder: RMSNorm, rotary embedding, gated SiLU MLP.

Numerics follow transformers' reference implementations (norm in float32, rotary tables in
float32) so that greedy outputs are token-identical to it. Every block is a handful of large tensor
operations: a decode step runs them once per layer, so each extra small op costs its fixed overhead
once per layer per step. The non-matmul ops go through the `kernels` object the runner binds to every
layer (kernels.py); the linears are cpu_linear.FastLinear.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nanoserve.errors import ModelLoadError
from nanoserve.model.cpu_linear import FastLinear
from nanoserve.model.kernels import Kernels, TorchKernels

SUPPORTED_ROPE_TYPES = ("default", "llama3")
REFERENCE_KERNELS = TorchKernels()  # what a layer runs until the runner binds its chosen kernels


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.kernels: Kernels = REFERENCE_KERNELS

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """norm(x), or with `residual`: x += residual in place (the new residual stream), then norm(x)."""
        return self.kernels.add_rms_norm(x, residual, self.weight, self.eps)


# Most bytes of the [rows, 2I] gate/up activation one MLP call makes at once. glibc's malloc serves
# blocks above its mmap threshold (at most 32 MiB, engine/host_malloc.py) with fresh pages, faulted
# in and zeroed on every call: a 2048-token Qwen2.5-0.5B prompt step made a 40 MB one per layer,
# ~233k page faults a step. Longer steps go through the MLP in row chunks that stay below it.
MLP_CHUNK_BYTES = 16 << 20


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), gate and up stacked in one projection."""

    def __init__(self, hidden: int, intermediate: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_up_proj = FastLinear(hidden, [intermediate, intermediate], bias)
        self.down_proj = FastLinear(intermediate, hidden, bias)
        self.intermediate = intermediate  # this rank's share under tensor parallelism
        self.kernels: Kernels = REFERENCE_KERNELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = max(1, MLP_CHUNK_BYTES // (2 * self.intermediate * x.element_size()))
        if x.shape[0] <= rows:
            return self._forward(x)
        # Each row's result is the same alone or among others (the linear kernels are batch invariant).
        return torch.cat([self._forward(c) for c in x.split(rows)])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2I]
        return self.down_proj(self.kernels.silu_mul(gate_up))


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

