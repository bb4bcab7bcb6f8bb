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

from nanoserve.model.attention.backend import GraphMetadata, StepLayout, fill_decode_rows
from nanoserve.model.attention.triton_backend import TritonAttentionMetadata


class TritonGraphMetadata(GraphMetadata):
    fixed_width = True

    def __init__(self, max_batch: int, max_blocks: int, block_size: int, device: torch.device) -> None:
        self.block_size = block_size
        self.device = device
        pin = device.type == "cuda"
        self.slots = torch.zeros(max_batch, dtype=torch.int64, device=device)  # [Bmax]
        self.row_ids = torch.arange(max_batch, dtype=torch.int32, device=device)  # [Bmax]: row i is q[i]
        self.tables = torch.zeros(max_batch, max_blocks, dtype=torch.int32, device=device)  # [Bmax, NBmax]
        self.row_ctx = torch.ones(max_batch, dtype=torch.int32, device=device)  # [Bmax]
        # Host twins, written through numpy views and copied asynchronously on CUDA.
        self._slots_h = torch.zeros(max_batch, dtype=torch.int64, pin_memory=pin)
        self._tables_h = torch.zeros(max_batch, max_blocks, dtype=torch.int32, pin_memory=pin)
        self._ctx_h = torch.ones(max_batch, dtype=torch.int32, pin_memory=pin)
        self._copied: torch.cuda.Event | None = None  # the next fill waits on it before reusing the host side

    def view(self, batch: int, blocks: int) -> TritonAttentionMetadata:
        return TritonAttentionMetadata(
            self.slots[:batch], self.row_ids[:batch], self.tables[:batch, :blocks], self.row_ctx[:batch],
            blocks * self.block_size, None, None, None, None, None, None,
        )

    def fill(self, layout: StepLayout, batch: int, blocks: int, scratch_block: int) -> None:
        if self._copied is not None:
            self._copied.synchronize()
        fill_decode_rows(self._slots_h.numpy(), self._tables_h.numpy(), self._ctx_h.numpy(), layout, batch,
                         blocks, scratch_block)
        copy = self.device.type == "cuda"
        self.slots[:batch].copy_(self._slots_h[:batch], non_blocking=copy)
        self.tables[:batch, :blocks].copy_(self._tables_h[:batch, :blocks], non_blocking=copy)
        self.row_ctx[:batch].copy_(self._ctx_h[:batch], non_blocking=copy)
        if copy:
            self._copied = torch.cuda.Event()
            self._copied.record()


__all__ = ["TritonGraphMetadata"]
