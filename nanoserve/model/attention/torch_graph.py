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

from nanoserve.model.attention.backend import GraphMetadata, StepLayout, fill_decode_rows
from nanoserve.model.attention.torch_backend import PagedBatch, TorchAttentionMetadata


class TorchGraphMetadata(GraphMetadata):
    fixed_width = False

    def __init__(
        self, max_batch: int, max_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.block_size = block_size
        self.device = device
        pin = device.type == "cuda"
        width = max_blocks * block_size
        self.slots = torch.zeros(max_batch, dtype=torch.int64, device=device)  # [Bmax]
        self.tables = torch.zeros(max_batch, max_blocks, dtype=torch.int64, device=device)  # [Bmax, NBmax]
        self.context_lens = torch.ones(max_batch, dtype=torch.int64, device=device)  # [Bmax]
        self.bias = torch.zeros(max_batch, 1, width, dtype=dtype, device=device)  # [Bmax, 1, NBmax * bs]
        self.columns = torch.arange(width, device=device)  # [NBmax * bs]
        # Host twins of the index buffers, written through numpy views.
        self._slots_h = torch.zeros(max_batch, dtype=torch.int64, pin_memory=pin)
        self._tables_h = torch.zeros(max_batch, max_blocks, dtype=torch.int64, pin_memory=pin)
        self._ctx_h = torch.ones(max_batch, dtype=torch.int64, pin_memory=pin)
        # Recorded after a step's asynchronous copies: the next fill waits on it before reusing the host side.
        self._copied: torch.cuda.Event | None = None

    def view(self, batch: int, blocks: int) -> TorchAttentionMetadata:
        paged = PagedBatch(self.block_size, None, self.tables[:batch, :blocks], [], None)
        bias = self.bias[:batch, :, : blocks * self.block_size]  # [batch, 1, L]
        return TorchAttentionMetadata(self.slots[:batch], paged, bias)

    def fill(self, layout: StepLayout, batch: int, blocks: int, scratch_block: int) -> None:
        if self._copied is not None:
            self._copied.synchronize()
        fill_decode_rows(self._slots_h.numpy(), self._tables_h.numpy(), self._ctx_h.numpy(), layout, batch,
                         blocks, scratch_block)
        copy = self.device.type == "cuda"
        self.slots[:batch].copy_(self._slots_h[:batch], non_blocking=copy)
        self.tables[:batch, :blocks].copy_(self._tables_h[:batch, :blocks], non_blocking=copy)
        self.context_lens[:batch].copy_(self._ctx_h[:batch], non_blocking=copy)
        bias = self.bias[:batch, 0, : blocks * self.block_size]  # [batch, L]
        bias.zero_().masked_fill_(self.columns[None, : bias.shape[1]] >= self.context_lens[:batch, None],
                                  float("-inf"))
        if copy:
            self._copied = torch.cuda.Event()
            self._copied.record()


__all__ = ["TorchGraphMetadata"]
