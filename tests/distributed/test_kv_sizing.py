"""A tensor-parallel KV pool is sized by what each rank really holds, so the byte budget holds even
when KV heads are replicated (fewer KV heads than ranks) or split unevenly."""

from __future__ import annotations

import pytest

from nanoserve.config import EngineArgs, ModelConfig, make_cache_config
from nanoserve.distributed.kv_sizing import kv_sizing_config, local_kv_heads

BLOCK_SIZE = 16


def model_config(num_heads: int, num_kv_heads: int) -> ModelConfig:
    return ModelConfig(model="m", tokenizer="m", architecture="LlamaForCausalLM", hf_config={},
                       dtype="float32", max_model_len=4096, num_layers=2, hidden_size=64,
                       num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=16, vocab_size=128)


@pytest.mark.parametrize(("heads", "kv_heads", "tp", "per_rank"), [
    (4, 2, 2, [1, 1]),  # sharded evenly: the full model's bytes per token
    (4, 1, 2, [1, 1]),  # one KV head, replicated on both ranks: twice the full model's
    (6, 3, 2, [3, 3]),  # 3 q heads a rank straddle KV groups: one KV slot per q head (shard_heads)
    (8, 2, 4, [1, 1, 1, 1]),
    (3, 1, 2, [1, 1]),  # q heads split 2 + 1, the one KV head on both ranks
    (3, 3, 2, [2, 1]),  # q heads split 2 + 1: ranks hold different KV heads
    (5, 5, 2, [3, 2]),
    (12, 2, 3, [1, 2, 1]),  # only the middle rank's q heads straddle a KV group
])
def test_the_pool_fits_the_budget_with_what_every_rank_allocates(heads, kv_heads, tp, per_rank):
    mc = model_config(heads, kv_heads)
    assert local_kv_heads(mc, tp) == per_rank
    budget = 1 << 20
    args = EngineArgs(model="m", kv_cache_memory_bytes=budget, block_size=BLOCK_SIZE)
    blocks = make_cache_config(args, kv_sizing_config(mc, tp), budget).num_blocks
    per_head_token_bytes = 2 * mc.num_layers * mc.head_dim * mc.dtype_bytes  # K and V of every layer
    allocated = sum(blocks * BLOCK_SIZE * h * per_head_token_bytes for h in per_rank)
    assert allocated <= budget
    # Sized as if every rank held the largest rank's KV heads: that bound uses the budget (all of it
    # when the ranks hold the same number, as with q heads split evenly).
    bound = blocks * BLOCK_SIZE * tp * max(per_rank) * per_head_token_bytes
    assert allocated <= bound <= budget
    assert bound > budget - tp * BLOCK_SIZE * max(per_rank) * per_head_token_bytes
    if len(set(per_rank)) == 1:
        assert allocated == bound
    full_model_blocks = make_cache_config(args, mc, budget).num_blocks
    if sum(per_rank) > kv_heads:  # the full model's bytes per token would have overrun the budget
        assert sum(full_model_blocks * BLOCK_SIZE * h * per_head_token_bytes for h in per_rank) > budget


def test_one_rank_is_sized_as_before():
    mc = model_config(4, 1)
    assert kv_sizing_config(mc, 1) is mc


def test_a_replicated_kv_head_engine_allocates_within_the_budget(tiny_model, make_llm):
    path = tiny_model("llama", num_key_value_heads=1)
    budget = 256 * 1024
    llm = make_llm(path, 2, kv_cache_memory_bytes=budget, max_model_len=256)
    runner = llm.llm_engine.runner
    assert runner.model.attention_layers()[0].num_kv_heads == 1  # the one KV head, on this rank too
    rank0_bytes = runner.kv_caches[0][0].untyped_storage().nbytes()  # the whole pool is one tensor
    assert 2 * rank0_bytes <= budget  # rank 1 holds as much as rank 0
    assert 2 * rank0_bytes > budget // 2
