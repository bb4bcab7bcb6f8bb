"""TokenBitmask: which tokens each constrained row of a step may sample, and its application to logits.

xgrammar fills one packed row per constrained sequence: int32 words, bit j of word i allows token
32 * i + j. The sampler unpacks only the constrained rows, so a batch of mostly unconstrained
requests pays for a handful of rows, not [B, V].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_BITS = 32


@dataclass
class TokenBitmask:
    bitmask: torch.Tensor  # [R, ceil(V / 32)] int32 on CPU, one packed row per constrained row
    rows: list[int]  # R row indices into the step's logits, in bitmask order


def apply_token_bitmask(logits: torch.Tensor, mask: TokenBitmask) -> None:
    """Set logits [B, V] to -inf in place wherever mask forbids the token (and past the mask's width)."""
    vocab = logits.shape[1]
    device = logits.device
    words = mask.bitmask.to(device)  # [R, W]
    shifts = torch.arange(_BITS, dtype=torch.int32, device=device)  # [32]
    allowed = ((words.unsqueeze(-1) >> shifts) & 1).bool().reshape(len(mask.rows), -1)  # [R, W * 32]
    if allowed.shape[1] < vocab:  # tokens the mask does not describe are never allowed
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
    rows = torch.tensor(mask.rows, dtype=torch.int64, device=device)  # [R]
    logits[rows] = logits[rows].masked_fill(~allowed[:, :vocab], -torch.inf)
