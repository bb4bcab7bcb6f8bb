"""Host lists -> device tensors without stalling the GPU: the per-step path's one way to make a tensor.

`torch.tensor(values, device="cuda")` copies from pageable memory and then waits for the whole CUDA
stream (a hidden host sync): in the sampler that sync lands right after the forward was queued, so the
host idles until the GPU is done. Through pinned memory the copy is queued behind the forward instead,
and the step keeps exactly one sync: the one that brings the sampled token ids back. On CPU this is
plain `torch.tensor` (same dtype inference, same values).
"""

from __future__ import annotations

from typing import Any

import torch


def host_tensor(
    values: Any, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """`torch.tensor(values, dtype=dtype)` on `device`; on CUDA an asynchronous copy from pinned memory."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    # The caching host allocator keeps the pinned block alive until the copy has run.
    return torch.tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)
