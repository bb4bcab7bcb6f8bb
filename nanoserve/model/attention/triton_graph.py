"""The Triton backend's CUDA-graph metadata: a pure-decode batch (one row per sequence) in static
int32 buffers, refilled each step.

`view(batch, blocks)` is the `TritonAttentionMetadata` `build_metadata` makes for a pure-decode step,
with two differences a graph needs: its tables are `blocks` wide whatever the longest context is, and
its `max_row_ctx` (which sets the decode kernel's grid: how many split-K partitions) is the width of
those tables, not the step's longest context. The kernel skips partitions past a row's own context and
the reduce never reads them, so the results are the eager ones; the cost of a wide table is only the
skipped programs, which is why one width serves every step (`fixed_width`).
"""

from __future__ import annotations

import torch

from nanoserve.model.attention.backend import DecodeGraphBuffers
from nanoserve.model.attention.triton_backend import TritonAttentionMetadata


class TritonGraphMetadata(DecodeGraphBuffers):
    fixed_width = True

    def __init__(self, max_batch: int, max_blocks: int, block_size: int, device: torch.device) -> None:
        super().__init__(max_batch, max_blocks, block_size, device, torch.int32)
        self.row_ids = torch.arange(max_batch, dtype=torch.int32, device=device)  # [Bmax]: row i is q[i]

    def view(self, batch: int, blocks: int) -> TritonAttentionMetadata:
        return TritonAttentionMetadata(
            self.slots[:batch], self.row_ids[:batch], self.tables[:batch, :blocks], self.context_lens[:batch],
            blocks * self.block_size, None, None, None, None, None, None,
        )


__all__ = ["TritonGraphMetadata"]
