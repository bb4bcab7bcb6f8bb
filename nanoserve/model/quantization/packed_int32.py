"""Integer codes packed into int32 words, as GPTQ, AWQ and compressed-tensors checkpoints store them.

All three put 32 // bits codes in one word, the first code in the lowest bits ("sequential" order);
AWQ then permutes the codes within each word (awq.py undoes that). A word is stored as a signed int32,
so unpacking masks after the (arithmetic) shift.
"""

from __future__ import annotations

import torch

from nanoserve.errors import ModelLoadError


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words -> one int32 code (0 .. 2**bits - 1) per element, unpacked along `dim` (0 or 1).

    [R, C] words packed along dim 1 become [R, C * 32 // bits]; along dim 0, [R * 32 // bits, C]."""
    if packed.dtype != torch.int32:
        raise ModelLoadError(f"packed weights must be int32 (got {packed.dtype})")
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)  # [per_word]
    words = packed if dim == 1 else packed.t()
    codes = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [R, C, per_word]
    codes = codes.reshape(words.shape[0], words.shape[1] * per_word)
    return codes if dim == 1 else codes.t().contiguous()

