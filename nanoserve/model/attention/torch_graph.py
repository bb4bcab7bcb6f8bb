"""The reference backend's CUDA-graph metadata: its decode batch (padded tables + additive mask) in
static buffers, refilled each step.

`view(batch, blocks)` is exactly the `TorchAttentionMetadata` `build_metadata` makes for a pure-decode
step (no prefill spans, every row a decode row), except that its tables are `blocks` wide whatever the
longest context is; the columns past a row's context are masked (-inf), as eager's padding is. The
reference decode gathers the whole table, so its cost grows with the width: `fixed_width` is False
and the graph runner buckets widths.

On CUDA the host side of each copy is pinned memory and the copies are asynchronous; the mask is
computed on the device from the context lengths (a few bytes cross the bus, not [B, L] of mask).
"""

from __future__ import annotations

import torch

from nanoserve.model.attention.backend import DecodeGraphBuffers
from nanoserve.model.attention.torch_backend import PagedBatch, TorchAttentionMetadata


class TorchGraphMetadata(DecodeGraphBuffers):
    fixed_width = False

    def __init__(
        self, max_batch: int, max_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__(max_batch, max_blocks, block_size, device, torch.int64)
        width = max_blocks * block_size
        self.bias = torch.zeros(max_batch, 1, width, dtype=dtype, device=device)  # [Bmax, 1, NBmax * bs]
        self.columns = torch.arange(width, device=device)  # [NBmax * bs]

    def view(self, batch: int, blocks: int) -> TorchAttentionMetadata:
        paged = PagedBatch(self.block_size, None, self.tables[:batch, :blocks], [], None)
        bias = self.bias[:batch, :, : blocks * self.block_size]  # [batch, 1, L]
        return TorchAttentionMetadata(self.slots[:batch], paged, bias)

    def _after_copy(self, batch: int, blocks: int) -> None:
        bias = self.bias[:batch, 0, : blocks * self.block_size]  # [batch, L]
        bias.zero_().masked_fill_(self.columns[None, : bias.shape[1]] >= self.context_lens[:batch, None],
                                  float("-inf"))


__all__ = ["TorchGraphMetadata"]
