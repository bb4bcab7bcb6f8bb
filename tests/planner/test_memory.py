"""Memory calculators: weights per dtype, KV cache and pages, activations, the fit estimate."""

from __future__ import annotations

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.memory import (
    FLOAT_FORMATS,
    activation_memory,
    bytes_per_param,
    dtype_bytes,
    expected_fragmentation,
    internal_fragmentation,
    kv_cache_bytes,
    kv_cache_per_token,
    kv_pages,
    memory_estimate,
    mixed_precision_bytes_per_param,
    paged_savings,
    preallocation_waste,
    quantize_symmetric,
    quick_fit,
    weight_memory,
)
from nanoserve.planner.models import get_model
from nanoserve.planner.params import param_breakdown


@pytest.mark.parametrize("dtype,nbytes", [("fp32", 4), ("bf16", 2), ("fp16", 2), ("fp8", 1), ("int8", 1),
                                          ("int4", 0.5), ("nf4", 0.5), ("torch.bfloat16", 2), ("awq", 0.5)])
def test_dtype_bytes(dtype: str, nbytes: float) -> None:
    assert dtype_bytes(dtype) == nbytes


def test_unknown_dtype_is_typed_error() -> None:
    with pytest.raises(InvalidRequestError) as e:
        dtype_bytes("int3")
    assert e.value.param == "dtype"


def test_group_scale_overhead() -> None:
    assert bytes_per_param("int4", group_size=128).value == 0.5 + 2 / 128       # fp16 scale per 128
    assert bytes_per_param("int4", group_size=128, zero_point=True).value == 0.5 + 4 / 128
    assert bytes_per_param("int8", group_size=64, scale_dtype="fp32").value == 1 + 4 / 64
    with pytest.raises(InvalidRequestError):
        bytes_per_param("int4", group_size=0)


def test_weight_memory_model_and_plain_count() -> None:
    n = param_breakdown("llama-3.1-8b").total
    assert weight_memory("llama-3.1-8b", "bf16").value == 2 * n
    assert weight_memory(8e9, "int8").value == 8e9
    # real int4 checkpoints keep embedding, lm_head and norms in bf16: more than the naive N/2
    m = get_model("llama-3.1-8b")
    b = param_breakdown(m)
    kept = b.embedding + b.lm_head + b.norms
    mixed = weight_memory(m, "int4", group_size=128, quantize_embeddings=False)
    assert mixed.value == pytest.approx((n - kept) * (0.5 + 2 / 128) + kept * 2)
    assert mixed.value > weight_memory(m, "int4", group_size=128).value


def test_kv_per_token_is_gqa_correct() -> None:
    llama8 = kv_cache_per_token("llama-3.1-8b")
    assert llama8.value == 2 * 32 * 8 * 128 * 2 == 131072
    # gpu_poor's 2·2·layers·hidden ignores GQA: 4× too large for Llama-3-8B
    assert (2 * 2 * 32 * 4096) / llama8.value == 4
    assert kv_cache_per_token("llama-3.1-8b", kv_dtype="fp8").value == llama8.value / 2
    assert kv_cache_per_token("qwen2.5-7b").value == 2 * 28 * 4 * 128 * 2
    with pytest.raises(InvalidRequestError):
        kv_cache_per_token(layers=32, kv_heads=8)  # head_dim missing


def test_kv_cache_per_request_and_batch() -> None:
    per = kv_cache_per_token("llama-3.1-70b").value
    req = kv_cache_bytes("llama-3.1-70b", seq_len=1000)
    assert req.value == per * 1000 and req.steps[0].value == per
    assert kv_cache_bytes("llama-3.1-70b", seq_len=1000, batch=7).value == 7 * req.value
    with pytest.raises(InvalidRequestError):
        kv_cache_bytes("gpt2", seq_len=10, batch=0)


def test_pages_and_fragmentation() -> None:
    assert kv_pages(0).value == 0
    assert kv_pages(16).value == 1 and kv_pages(17).value == 2
    assert kv_pages([1, 16, 33], block_size=16).value == 1 + 1 + 3
    f = internal_fragmentation(33, 16, bytes_per_token=100)
    assert f.value == 15 / 16 and f.steps[-1].value == 1500
    assert internal_fragmentation(32, 16).value == 0
    assert expected_fragmentation(16, 100, 10).value == 7.5 * 100 * 10
    with pytest.raises(InvalidRequestError):
        kv_pages(5, block_size=0)


def test_paged_savings_counts_whole_pages() -> None:
    assert paged_savings(4096, 800, 16).value == 4096 / 800          # 800 = 50 whole pages
    assert paged_savings(4096, 801, 16).value == 4096 / 816          # 801 needs 51 pages
    assert preallocation_waste(4096, 200, 10).value == 38960
    with pytest.raises(InvalidRequestError):
        paged_savings(100, 200)


def test_activation_memory_formula_and_orderings() -> None:
    m = get_model("llama-3.1-8b")
    s, b, h, a, L = 2048, 1, m.hidden, m.heads, m.layers
    none = activation_memory(m, s, b)
    assert none.value == L * s * b * h * (34 + 5 * a * s / h)
    flash = activation_memory(m, s, b, flash_attention=True)
    assert flash.value == L * 34 * s * b * h
    assert activation_memory(m, s, b, recompute="selective").value == flash.value
    full = activation_memory(m, s, b, recompute="full")
    assert full.value == L * 2 * s * b * h
    tp8 = activation_memory(m, s, b, flash_attention=True, tp=8)
    assert tp8.value == L * s * b * h * (10 + 24 / 8)
    sp8 = activation_memory(m, s, b, flash_attention=True, tp=8, sequence_parallel=True)
    assert sp8.value == flash.value / 8
    with pytest.raises(InvalidRequestError):
        activation_memory(m, s, b, recompute="some")


def test_memory_estimate_inference_fit() -> None:
    one = memory_estimate("llama-3.1-70b", "h100", seq_len=4096, batch=8)
    assert not one.fits and one.headroom_bytes < 0
    eight = memory_estimate("llama-3.1-70b", "h100", seq_len=4096, batch=8, n_gpu=8)
    assert eight.fits
    w = 2 * param_breakdown("llama-3.1-70b").total
    assert eight.breakdown["weights"] == pytest.approx(w / 8)
    # 16-way TP of 8 KV heads replicates each head on 2 GPUs: KV per GPU stops shrinking at 8
    sixteen = memory_estimate("llama-3.1-70b", "h100", seq_len=4096, batch=8, n_gpu=16)
    assert sixteen.breakdown["kv cache"] == eight.breakdown["kv cache"]
    assert sum(eight.breakdown.values()) == eight.per_gpu.value
    assert eight.to_dict()["fits"] is True


def test_memory_estimate_training_shards_state() -> None:
    n = param_breakdown("llama-3.1-8b").total
    t = memory_estimate("llama-3.1-8b", "h100", mode="training", n_gpu=8, zero_stage=3, overhead_bytes=0)
    assert t.per_gpu.value == pytest.approx(16 * n / 8)
    with_act = memory_estimate("llama-3.1-8b", "h100", mode="training", n_gpu=8, seq_len=4096,
                               overhead_bytes=0)
    assert with_act.breakdown["activations"] == activation_memory("llama-3.1-8b", 4096, 1,
                                                                  recompute="full").value
    with pytest.raises(InvalidRequestError):
        memory_estimate("gpt2", mode="serving")


def test_quick_fit() -> None:
    r = quick_fit(1e9, 2, gpu_bytes=4e9, overhead_bytes=2e9)
    assert r.per_gpu.value == 4e9 and r.fits
    assert not quick_fit(1e9, 2.001, gpu_bytes=4e9, overhead_bytes=2e9).fits


def test_float_formats() -> None:
    assert FLOAT_FORMATS["fp16"].max_finite == 65504
    assert FLOAT_FORMATS["bf16"].max_finite == pytest.approx(3.39e38, rel=1e-3)
    assert FLOAT_FORMATS["fp32"].max_finite == pytest.approx(3.4028235e38)
    assert FLOAT_FORMATS["fp8_e5m2"].max_finite == 57344
    assert FLOAT_FORMATS["fp8_e4m3"].max_finite == 448
    assert FLOAT_FORMATS["bf16"].epsilon == 2**-7 and FLOAT_FORMATS["fp16"].epsilon == 2**-10
    assert mixed_precision_bytes_per_param().value == 16
    assert mixed_precision_bytes_per_param(optimizer="sgd", master_weights=False).value == 4


def test_quantize_symmetric_roundtrip() -> None:
    q = quantize_symmetric([1.0, -0.5, 0.25], bits=8)
    assert q.codes == [127, -64, 32] and q.scale == 1 / 127
    assert q.max_abs_error <= q.scale / 2
    q4 = quantize_symmetric([1.0, -0.5, 0.25], bits=4)
    assert max(abs(c) for c in q4.codes) == 7 and q4.max_abs_error > q.max_abs_error
    with pytest.raises(InvalidRequestError):
        quantize_symmetric([])
