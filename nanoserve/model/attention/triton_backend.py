"""The Triton attention backend: paged decode and prefill kernels, for CUDA (and the CPU interpreter).

A step is split as the reference backend splits it (torch_backend.split_decode_rows): one-token
decodes and the queries of short chunks (a speculative verify) are decode rows, each with its own
context length, through triton_decode (split-K when a row's context is longer than
`partition_tokens`); longer chunks go through triton_prefill in one launch. A mixed step launches both,
each writing its own rows of one output tensor, so nothing is gathered or scattered.

Quantized KV caches (kv_cache_dtype int8 / fp8_e4m3, kv_cache.QuantizedKV) are supported: the kernels
read the 8-bit codes and dequantize each token with its float32 scale as they load it.

Dots run in float32 (exact-precision, no TF32) for a float32 model, in the model's 16-bit dtype with
float32 accumulation otherwise; under the interpreter (TRITON_INTERPRET=1) always in float32, because
its 16-bit dots are wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nanoserve.errors import InvalidRequestError
from nanoserve.model.attention.backend import AttentionBackend, AttentionMetadata, GraphMetadata, StepLayout
from nanoserve.model.attention.kv_cache import KVStore, QuantizedKV, write_kv
from nanoserve.model.attention.torch_backend import split_decode_rows
from nanoserve.model.triton_support import interpreter_on, triton_unusable_reason

# Decode contexts longer than this are split over partitions of this many tokens (split-K), so a small
# batch with long contexts still fills the GPU.
DEFAULT_PARTITION_TOKENS = 512


@dataclass
class TritonAttentionMetadata(AttentionMetadata):
    # Decode rows (None when the step has none): int32 tensors on the device.
    row_ids: torch.Tensor | None  # [Bd] row of q of each decode row
    row_tables: torch.Tensor | None  # [Bd, nb] blocks of its sequence, padded with block 0
    row_ctx: torch.Tensor | None  # [Bd] tokens it attends to (up to and including its own position)
    max_row_ctx: int  # host: the largest of row_ctx (how many partitions), 0 with no rows
    # Prefill chunks (None when the step has none): int32 tensors on the device.
    tile_chunk: torch.Tensor | None  # [NT] chunk of each query tile
    tile_first: torch.Tensor | None  # [NT] its first query within the chunk
    chunk_q_start: torch.Tensor | None  # [P] first row of q of each chunk
    chunk_q_len: torch.Tensor | None  # [P] its queries
    chunk_ctx: torch.Tensor | None  # [P] its sequence's tokens, its own included
    chunk_tables: torch.Tensor | None  # [P, nb] its blocks, padded with block 0


class TritonAttentionBackend(AttentionBackend):
    """Paged attention through Triton kernels; int8/fp8 KV caches supported (see the module docstring)."""

    name = "triton"

    def __init__(self, *args: Any, partition_tokens: int = DEFAULT_PARTITION_TOKENS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        why = triton_unusable_reason(self.device)
        if why is not None:
            raise InvalidRequestError(f"attention_backend triton {why}", "attention_backend")
        if partition_tokens < 1:
            raise InvalidRequestError(
                f"partition_tokens must be positive, got {partition_tokens}", "attention_backend"
            )
        if self.num_heads % self.num_kv_heads:
            raise InvalidRequestError(
                f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}",
                "attention_backend",
            )
        self.partition_tokens = partition_tokens
        self.dot_fp32 = self.dtype == torch.float32 or interpreter_on()
        # Imported here: triton stays optional until this backend is chosen.
        from nanoserve.model.attention import triton_decode, triton_prefill

        self._decode = triton_decode
        self._prefill = triton_prefill

    def build_metadata(self, layout: StepLayout) -> TritonAttentionMetadata:
        bs, starts, ctx = layout.block_size, layout.query_start, layout.context_lens
        rows, row_seqs, row_ctx, chunks = split_decode_rows(layout)
        slots = torch.tensor(layout.slot_mapping, dtype=torch.int64, device=self.device)  # [T]
        meta = TritonAttentionMetadata(slots, None, None, None, 0, None, None, None, None, None, None)
        if rows:
            meta.row_ids = self._ints(rows)
            meta.row_tables = self._tables([layout.block_tables[i] for i in row_seqs], max(row_ctx), bs)
            meta.row_ctx = self._ints(row_ctx)
            meta.max_row_ctx = max(row_ctx)
        if chunks:
            q_lens = [layout.query_len(i) for i in chunks]
            tile_chunk, tile_first = self._prefill.prefill_tiles(q_lens)
            meta.tile_chunk = self._ints(tile_chunk)
            meta.tile_first = self._ints(tile_first)
            meta.chunk_q_start = self._ints([starts[i] for i in chunks])
            meta.chunk_q_len = self._ints(q_lens)
            meta.chunk_ctx = self._ints([ctx[i] for i in chunks])
            widest = max(ctx[i] for i in chunks)
            meta.chunk_tables = self._tables([layout.block_tables[i] for i in chunks], widest, bs)
        return meta

    def graph_metadata(self, max_batch: int, max_blocks: int, block_size: int) -> GraphMetadata:
        from nanoserve.model.attention.triton_graph import TritonGraphMetadata

        return TritonGraphMetadata(max_batch, max_blocks, block_size, self.device)

    def _ints(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32, device=self.device)

    def _tables(self, tables: list[list[int]], max_ctx: int, block_size: int) -> torch.Tensor:
        """[len(tables), blocks for max_ctx] int32: each table's first blocks, padded with block 0."""
        width = -(-max_ctx // block_size)
        arr = np.zeros((len(tables), width), dtype=np.int32)
        for i, t in enumerate(tables):
            t = t[:width]
            arr[i, : len(t)] = t
        return torch.from_numpy(arr).to(self.device)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None,
        v: torch.Tensor | None,
        k_cache: KVStore,
        v_cache: KVStore,
        meta: TritonAttentionMetadata,
    ) -> torch.Tensor:
        if k is not None:
            write_kv(k_cache, k, meta.slot_mapping)
            write_kv(v_cache, v, meta.slot_mapping)
        if q.stride(-1) != 1:
            q = q.contiguous()
        if isinstance(k_cache, QuantizedKV):
            k_codes, k_scales = k_cache.codes, k_cache.scales
            v_codes, v_scales = v_cache.codes, v_cache.scales
        else:
            k_codes, k_scales, v_codes, v_scales = k_cache, None, v_cache, None
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [T, H, D]
        if meta.row_ids is not None:
            self._decode.paged_decode_attention(
                out, q, k_codes, v_codes, k_scales, v_scales,
                meta.row_ids, meta.row_tables, meta.row_ctx, meta.max_row_ctx,
                self.scale, self.partition_tokens, self.dot_fp32,
            )
        if meta.tile_chunk is not None:
            self._prefill.paged_prefill_attention(
                out, q, k_codes, v_codes, k_scales, v_scales,
                meta.tile_chunk, meta.tile_first, meta.chunk_q_start, meta.chunk_q_len, meta.chunk_ctx,
                meta.chunk_tables, self.scale, self.dot_fp32,
            )
        return out
