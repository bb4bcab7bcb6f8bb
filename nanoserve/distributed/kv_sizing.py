"""How many KV blocks a tensor-parallel pool gets from a byte budget.

Every rank holds the same number of blocks (the scheduler's block ids are global) but only its own KV
heads (model/parallel_layers.shard_heads). With fewer KV heads than ranks, heads are replicated, so the
ranks together hold more than the full model's KV heads; with a count not divisible by the ranks, or q
heads split unevenly (3 q heads on 2 ranks: 2 + 1), ranks hold different numbers of KV heads and one
holds more than its 1/N. Sizing by the full model's bytes per token would then overrun the budget.
The budget is for all ranks together (CPU: one RAM; CUDA: one GPU's free memory × N), so the pool is
sized as if every rank held as many KV heads as the largest one: N × max over ranks of local KV heads.
"""

from __future__ import annotations

import dataclasses

from nanoserve.config import ModelConfig


def local_kv_heads(model_config: ModelConfig, tp_size: int) -> list[int]:
    """The KV heads each rank holds (its share, replicated heads counted on every rank holding them)."""
    from nanoserve.model.parallel_layers import shard_heads

    return [len(shard_heads(model_config.num_heads, model_config.num_kv_heads, tp_size, rank)[2])
            for rank in range(tp_size)]


def kv_sizing_config(model_config: ModelConfig, tp_size: int) -> ModelConfig:
    """`model_config` with num_kv_heads = tp_size × the largest rank's KV heads: make_cache_config then
    divides a budget for all ranks by what all ranks really allocate per token (or a bound on it)."""
    if tp_size == 1:
        return model_config
    largest = max(local_kv_heads(model_config, tp_size))
    return dataclasses.replace(model_config, num_kv_heads=tp_size * largest)
