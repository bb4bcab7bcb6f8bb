"""EngineArgs validation and the sizing of the KV pool and the scheduler."""

from __future__ import annotations

import pytest

from nanoserve.config import (
    CPU_KV_CAP_BYTES,
    EngineArgs,
    ModelConfig,
    SchedulerConfig,
    default_cpu_kv_budget_bytes,
    make_cache_config,
    make_scheduler_config,
)
from nanoserve.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dtype", "float64"),
        ("block_size", 0),
        ("max_num_seqs", 0),
        ("max_num_batched_tokens", -1),
        ("kv_cache_memory_bytes", 0),
        ("num_gpu_blocks_override", 0),
        ("max_model_len", 0),
        ("device", "tpu"),
        ("gpu_memory_utilization", 1.5),
        ("num_cpu_threads", 0),
    ],
)
def test_bad_engine_args_name_the_field(field, value):
    with pytest.raises(InvalidRequestError) as info:
        EngineArgs(model="m", **{field: value})
    assert info.value.param == field


def _model_config(**kw) -> ModelConfig:
    base = dict(
        model="m",
        tokenizer="m",
        architecture="LlamaForCausalLM",
        hf_config={},
        dtype="bfloat16",
        max_model_len=1024,
        num_layers=4,
        hidden_size=256,
        num_heads=8,
        num_kv_heads=2,
        head_dim=32,
        vocab_size=100,
    )
    base.update(kw)
    return ModelConfig(**base)


def test_kv_bytes_per_token_counts_k_and_v_of_every_layer_with_gqa():
    assert _model_config().kv_bytes_per_token() == 2 * 4 * 2 * 32 * 2
    assert _model_config(dtype="float32").kv_bytes_per_token() == 2 * 4 * 2 * 32 * 4


def test_pool_sizing_override_budget_and_default_cap():
    mc = _model_config()
    block_bytes = 16 * mc.kv_bytes_per_token()
    assert make_cache_config(EngineArgs(model="m", num_gpu_blocks_override=7), mc, 1 << 40).num_blocks == 7
    cc = make_cache_config(EngineArgs(model="m", kv_cache_memory_bytes=10 * block_bytes + 5), mc, 1 << 40)
    assert cc.num_blocks == 10 and cc.num_tokens == 160
    # the device default is capped at what max_num_seqs full-length sequences can use
    assert make_cache_config(EngineArgs(model="m"), mc, 1 << 40, max_num_seqs=4).num_blocks == 4 * 1024 // 16
    assert make_cache_config(EngineArgs(model="m"), mc, 3 * block_bytes).num_blocks == 3
    with pytest.raises(InvalidRequestError, match="no block"):
        make_cache_config(EngineArgs(model="m", kv_cache_memory_bytes=1), mc, 0)


def test_cpu_default_budget_is_bounded():
    assert 0 < default_cpu_kv_budget_bytes() <= CPU_KV_CAP_BYTES


def test_scheduler_defaults_and_chunked_prefill_off():
    cfg = make_scheduler_config(EngineArgs(model="m"), 4096)
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.enable_chunked_prefill) == (256, 2048, True)
    off = make_scheduler_config(EngineArgs(model="m", enable_chunked_prefill=False), 4096)
    assert off.max_num_batched_tokens == 4096  # a whole prompt must fit one step
    with pytest.raises(InvalidRequestError) as info:
        SchedulerConfig(max_num_batched_tokens=100, max_model_len=200, enable_chunked_prefill=False)
    assert info.value.param == "max_num_batched_tokens"
