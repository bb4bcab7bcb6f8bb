"""The CPU backend: decode rows through the native extension's `decode_attention`, one call per layer.

For each (sequence, kv head) the kernel walks the sequence's blocks up to its context length, so
it needs no mask: the metadata carries the context lengths instead. Quantized caches (kv_cache.py)
go through `decode_attention_quant`, which dequantizes each K/V row as it streams past. Decode rows are
one-token decodes and the queries of short chunks (torch_backend.paged_batch: a speculative verify runs
as k + 1 rows, each with its own context length); longer prefill chunks run as in the reference backend
(inherited), with the mask and softmax between its two batched matmuls in one native call,
`causal_softmax_` (csrc/prefill_softmax.cpp).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nanoserve.model.attention.backend import AttentionMetadata, StepLayout
from nanoserve.model.attention.kv_cache import KVStore, QuantizedKV
from nanoserve.model.attention.torch_backend import PagedBatch, TorchAttentionBackend, paged_batch


@dataclass
class CpuNativeAttentionMetadata(AttentionMetadata):
    batch: PagedBatch
    decode_ctx_lens: torch.Tensor | None  # [Bd] int64 (CPU) context length of each decode row


class CpuNativeAttentionBackend(TorchAttentionBackend):
    name = "cpu_native"

    def __init__(self, *args: Any, native_ext: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.native_ext = native_ext  # native_kernels' extension

    def build_metadata(self, layout: StepLayout) -> CpuNativeAttentionMetadata:
        batch, decode_ctx = paged_batch(layout, self.device)
        ctx_lens = None if decode_ctx is None else torch.from_numpy(decode_ctx)
        return CpuNativeAttentionMetadata(self._slots(layout), batch, ctx_lens)

    def _causal_softmax(self, scores: torch.Tensor, m: int) -> torch.Tensor:
        return self.native_ext.causal_softmax_(scores, m)  # in place; the masked keys get weight 0

    def _decode(
        self, q: torch.Tensor, k_cache: KVStore, v_cache: KVStore, meta: CpuNativeAttentionMetadata
    ) -> torch.Tensor:
        """q [Bd, H, D] (one query per decode row) -> [Bd, H, D] over each row's cached tokens."""
        if isinstance(k_cache, QuantizedKV):
            return self.native_ext.decode_attention_quant(
                q, k_cache.codes, k_cache.scales, v_cache.codes, v_cache.scales,
                meta.batch.decode_tables, meta.decode_ctx_lens, self.scale,
            )
        return self.native_ext.decode_attention(
            q, k_cache, v_cache, meta.batch.decode_tables, meta.decode_ctx_lens, self.scale
        )
