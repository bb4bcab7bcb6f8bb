"""Two int4 codes per byte: how QuantLinear's reference path stores an int4 weight (half of a byte per code).

Column 2j sits in the low nibble and column 2j + 1 in the high nibble of byte j of its row; an odd K
leaves the last high nibble zero. Native kernels pack into their own layouts from the QuantizedWeight.
"""

from __future__ import annotations

import torch


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """codes [N, K] uint8 in 0..15 -> [N, ceil(K / 2)] uint8."""
    n, k = codes.shape
    c = codes.to(torch.uint8)
    if k % 2:
        c = torch.nn.functional.pad(c, (0, 1))
    return (c[:, 0::2] | (c[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """[N, ceil(K / 2)] uint8 -> codes [N, K] uint8."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)[:, :k]
