"""The attention backend interface and the backend-independent layout of a step it is built from.

Once per step the runner describes where the step's tokens sit (`StepLayout`, plain host lists) and
calls `build_metadata` on the one backend every layer shares; each layer then calls `forward` with
that metadata. What a backend precomputes (padded tables, masks, context lengths) is its own affair:
the runner never sees it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from nanoserve.model.attention.kv_cache import KVStore


@dataclass
class StepLayout:
    """A step's B sequences packed flat into T token rows (vLLM's layout), as host lists.

    Sequence i owns rows query_start[i]:query_start[i + 1] of q/k/v: its new tokens, which sit at
    positions context_lens[i] - query_len(i) .. context_lens[i] - 1 of the sequence.
    """

    query_start: list[int]  # [B + 1]: first row of each sequence, then T
    context_lens: list[int]  # [B]: tokens in the cache for each sequence once this step's K/V are written
    block_tables: list[list[int]]  # [B][its blocks]: the pool blocks holding each sequence, in order
    slot_mapping: list[int]  # [T]: cache slot (block * block_size + offset) of each new token
    block_size: int

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)

    def query_len(self, i: int) -> int:
        return self.query_start[i + 1] - self.query_start[i]


@dataclass
class AttentionMetadata:
    """What every backend's metadata has: the fused native rope_cache kernel writes K/V through it."""

    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token


class AttentionBackend(ABC):
    """Paged attention for one model: shared by all its layers, so it holds no per-layer state."""

    name: str  # what EngineArgs.attention_backend calls it

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.dtype = dtype  # of q and the caches
        self.device = torch.device(device)

    @abstractmethod
    def build_metadata(self, layout: StepLayout) -> AttentionMetadata:
        """Once per step: the tensors every layer's `forward` reads."""

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None,
        v: torch.Tensor | None,
        k_cache: KVStore,
        v_cache: KVStore,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """q [T, H, D], k/v [T, KVH, D], caches [KVH, num_blocks, block_size, D] -> out [T, H, D].

        A cache is a tensor in the model's dtype or a kv_cache.QuantizedKV (codes + scales; see
        kv_cache.py). Writes k/v to the caches at meta.slot_mapping first (kv_cache.write_kv); k/v None
        means the caller already did (the fused native rope_cache kernel).
        """

    def graph_metadata(self, max_batch: int, max_blocks: int, block_size: int) -> GraphMetadata:
        """Static buffers for CUDA-graph decode steps (engine/cuda_graph.py) of up to `max_batch` rows over
        block tables up to `max_blocks` wide. A backend without them runs every step eagerly."""
        raise NotImplementedError(f"the {self.name} attention backend has no CUDA-graph metadata")


class GraphMetadata(ABC):
    """A backend's attention metadata for pure-decode steps, in buffers whose addresses never change.

    A CUDA graph replays kernels on the addresses it was captured with, so each step's layout is copied
    into these buffers (`fill`) rather than built as new tensors. A graph of `batch` rows over tables
    `blocks` wide is captured with `view(batch, blocks)`; rows past the step's sequences are padding:
    they write their K/V to a scratch block no sequence owns and attend only to it, and their output is
    ignored.
    """

    # True: the backend's decode cost does not grow with the table width (it reads context lengths), so
    # one width (the widest) serves every step; False: widths are bucketed (engine/cuda_graph.py).
    fixed_width: bool = False

    @abstractmethod
    def view(self, batch: int, blocks: int) -> AttentionMetadata:
        """What a graph of `batch` decode rows over tables `blocks` wide reads: views of the buffers."""

    @abstractmethod
    def fill(self, layout: StepLayout, batch: int, blocks: int, scratch_block: int) -> None:
        """Copy a pure-decode step (one new token per sequence, at most `batch` sequences, contexts within
        `blocks` blocks) into the buffers `view(batch, blocks)` reads; pad the rest with `scratch_block`."""


class DecodeGraphBuffers(GraphMetadata):
    """The part of every backend's graph metadata that is the same: a pure-decode batch's slots, block
    tables and context lengths in static device buffers, refilled each step from pinned host twins (on
    CUDA the copies are asynchronous; the next fill waits for them before reusing the host side).
    Rows n..batch-1 are padding: their one token goes to the scratch block, which is also all they attend
    to (context 1: no all -inf row, no NaN). Subclasses add their own buffers in `_after_copy`."""

    def __init__(
        self, max_batch: int, max_blocks: int, block_size: int, device: torch.device, index_dtype: torch.dtype
    ) -> None:
        self.block_size = block_size
        self.device = torch.device(device)
        pin = self.device.type == "cuda"
        self.slots = torch.zeros(max_batch, dtype=torch.int64, device=device)  # [Bmax]
        self.tables = torch.zeros(max_batch, max_blocks, dtype=index_dtype, device=device)  # [Bmax, NBmax]
        self.context_lens = torch.ones(max_batch, dtype=index_dtype, device=device)  # [Bmax]
        self._slots_h = torch.zeros(max_batch, dtype=torch.int64, pin_memory=pin)
        self._tables_h = torch.zeros(max_batch, max_blocks, dtype=index_dtype, pin_memory=pin)
        self._ctx_h = torch.ones(max_batch, dtype=index_dtype, pin_memory=pin)
        self._copied: torch.cuda.Event | None = None

    def fill(self, layout: StepLayout, batch: int, blocks: int, scratch_block: int) -> None:
        n = layout.num_seqs
        assert len(layout.slot_mapping) == n <= batch, "a pure-decode step of at most `batch` sequences"
        if self._copied is not None:
            self._copied.synchronize()
        slots, tables, ctx = self._slots_h.numpy(), self._tables_h.numpy(), self._ctx_h.numpy()
        slots[:n] = layout.slot_mapping
        slots[n:batch] = scratch_block * self.block_size
        tables[:batch, :blocks] = 0  # eager pads its tables with block 0 too (never read past a context)
        for i, t in enumerate(layout.block_tables):
            t = t[:blocks]
            tables[i, : len(t)] = t
        tables[n:batch, :blocks] = scratch_block
        ctx[:n] = layout.context_lens
        ctx[n:batch] = 1
        copy = self.device.type == "cuda"
        self.slots[:batch].copy_(self._slots_h[:batch], non_blocking=copy)
        self.tables[:batch, :blocks].copy_(self._tables_h[:batch, :blocks], non_blocking=copy)
        self.context_lens[:batch].copy_(self._ctx_h[:batch], non_blocking=copy)
        self._after_copy(batch, blocks)
        if copy:
            self._copied = torch.cuda.Event()
            self._copied.record()

    def _after_copy(self, batch: int, blocks: int) -> None:
        """Device-side buffers derived from the copied ones (the reference backend's mask)."""
