"""The serving-plan solver: chain consistency, constraint selection, latency check, errors."""

from __future__ import annotations

import math

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.capacity import plan_serving
from nanoserve.planner.hardware import get_hardware


def test_chain_is_internally_consistent():
    p = plan_serving(
        "llama-3.1-8b", "h100", weight_dtype="bf16", users=2000, context_tokens=8192, usd_per_hour=3
    )
    s = p.steps
    assert p.required_tok_per_s == 2000 * 0.3 * 30
    assert p.batch_per_replica <= p.kv_concurrency_per_replica
    assert s["replica throughput"].value == pytest.approx(p.tok_per_s_per_gpu * p.tp)
    base = math.ceil(p.required_tok_per_s / s["replica throughput"].value)
    assert p.replicas == math.ceil(base * 1.2)
    assert p.gpus == p.replicas * p.tp and p.nodes == math.ceil(p.gpus / 8)
    assert p.monthly_usd == pytest.approx(p.gpus * 3 * 720)
    assert p.usd_per_million_tokens == pytest.approx(
        p.monthly_usd / (p.required_tok_per_s * 3600 * 720 / 1e6)
    )
    assert p.result().value == p.gpus and len(p.result().steps) == len(s)


def test_bf16_70b_needs_tensor_parallelism():
    with pytest.raises(InvalidRequestError, match="exceed"):
        plan_serving("llama-3.1-70b", "h100", weight_dtype="bf16", tp=1, usd_per_hour=3)
    p2 = plan_serving("llama-3.1-70b", "h100", weight_dtype="bf16", tp=2, usd_per_hour=3)
    assert p2.steps["KV budget per GPU"].value == pytest.approx(80e9 - p2.steps["weights"].value / 2 - 5e9)
    assert p2.gpus % 2 == 0
    comm = p2.steps["replica throughput"].steps[1]
    assert comm.name == "TP all-reduce time per step" and comm.value > 0


def test_auto_tp_picks_the_fewest_gpus():
    auto = plan_serving("llama-3.1-70b", "h100", weight_dtype="bf16", usd_per_hour=3)
    fixed = {
        t: plan_serving("llama-3.1-70b", "h100", weight_dtype="bf16", tp=t, usd_per_hour=3) for t in (2, 4, 8)
    }
    assert auto.gpus == min(p.gpus for p in fixed.values())
    assert auto.tp == min((p.gpus, t) for t, p in fixed.items())[1]
    choice = auto.steps["TP choice"]
    assert "TP=1: no fit" in choice.substituted and f"TP={auto.tp}: {auto.gpus} GPUs" in choice.substituted


def test_auto_tp_keeps_the_workbook_capstone_on_one_gpu():
    # with the seed's batch cap of 32, splitting the weights buys no batch, and TP's all-reduces cost time
    p = plan_serving(
        "llama-3.1-70b", "h100", n_params=70e9, max_batch=32, gpu_memory_bytes=80 * 2**30, usd_per_hour=2.2
    )
    assert p.tp == 1 and p.gpus == 36
    kw = {"n_params": 70e9, "max_batch": 32, "gpu_memory_bytes": 80 * 2**30, "usd_per_hour": 2.2}
    tp2 = plan_serving("llama-3.1-70b", "h100", tp=2, **kw)
    assert tp2.gpus > 36 and f"TP=2: {tp2.gpus} GPUs" in p.steps["TP choice"].substituted


def test_per_user_speed_can_bind():
    # 90 tok/s per user on a 70B int4 model: a step may take at most 11.1 ms, weights alone take 10.5
    p = plan_serving("llama-3.1-70b", "h100", tok_per_s_per_user=90, kv_read_fraction=0.5, usd_per_hour=3)
    assert p.binding.startswith("tok/s per user")
    step = p.steps["replica throughput"].steps[0].value
    assert 1 / step >= 90


def test_kv_reads_lower_throughput_and_raise_gpus():
    a = plan_serving("llama-3.1-70b", "h100", usd_per_hour=3, max_batch=32)
    b = plan_serving("llama-3.1-70b", "h100", usd_per_hour=3, max_batch=32, kv_read_fraction=0.5)
    assert b.tok_per_s_per_gpu < a.tok_per_s_per_gpu and b.gpus > a.gpus
    assert a.warnings and not b.warnings


def test_ttft_target_miss_is_reported():
    p = plan_serving(
        "llama-3.1-405b", "h100", weight_dtype="fp8", context_tokens=32768, ttft_target_s=1.0, usd_per_hour=3
    )
    assert not p.latency_ok
    assert any("TTFT" in w for w in p.warnings)
    assert p.tp >= 8


def test_moe_reads_all_experts_but_computes_active():
    p = plan_serving("mixtral-8x7b", "h100", weight_dtype="bf16", usd_per_hour=3)
    assert p.steps["weights"].value == pytest.approx(46.7e9 * 2, rel=0.01)
    pre = p.steps["prefill (TTFT floor)"]
    assert pre.steps[0].inputs["n_params"] == pytest.approx(12.9e9, rel=0.01)


def test_default_price_comes_from_the_preset():
    p = plan_serving("qwen2.5-7b", "l40s", weight_dtype="int8", users=100)
    assert p.monthly_usd == pytest.approx(p.gpus * get_hardware("l40s").usd_per_hour * 720)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tp": 1, "weight_dtype": "bf16"}, "exceed"),
        ({"context_tokens": 0}, "context_tokens"),
        ({"kv_read_fraction": 2}, "kv_read_fraction"),
        ({"weight_dtype": "int3"}, "dtype"),
        ({"tok_per_s_per_user": 500, "tp": 1}, "cannot give a user"),
        ({"tok_per_s_per_user": 50_000}, "no tensor-parallel degree up to 64 works"),
        ({"active_fraction": 0}, "active_fraction"),
    ],
)
def test_impossible_or_bad_requirements(kwargs, match):
    with pytest.raises(InvalidRequestError, match=match):
        plan_serving("llama-3.1-70b", "h100", **{"usd_per_hour": 3, **kwargs})
