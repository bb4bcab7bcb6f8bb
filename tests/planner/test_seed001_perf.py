"""Seed 001 ("Chapter 30 — AI Infrastructure & Efficient Inference"): the worked numbers of the
performance sections — §30.1 (roofline), §30.4e/f (batching, speculative decoding) and §30.5 (TTFT,
tokens/s, cost). (§30.2–30.4d and §30.7, memory, are in test_seed001.py.)
"""

from __future__ import annotations

import pytest

from nanoserve.planner import cost, roofline, serving, speculative
from nanoserve.planner.params import param_count


def test_001_s30_1_matmul_flops():
    assert roofline.matmul_flops(64, 128, 32).value == 2 * 64 * 128 * 32


def test_001_s30_1_break_even_intensity():
    # "312 TFLOP/s (fp16) and 2 TB/s bandwidth. Break-even intensity = 156 FLOPs per byte"
    assert roofline.ridge_point(312e12, 2e12).value == 156


def test_001_s30_1_achievable_is_the_lower_ceiling():
    # rate = min(P, I·B): memory-bound below 156, the compute roof above it
    assert roofline.achievable_flops(100, 312e12, 2e12).value == pytest.approx(200e12)
    assert roofline.achievable_flops(100, 312e12, 2e12).inputs["bound"] == "memory"
    assert roofline.achievable_flops(1000, 312e12, 2e12).value == pytest.approx(312e12)


def test_001_s30_1_big_matmul_vs_decode_intensity():
    # "A big matmul … intensity in the hundreds → compute-bound"; decode "(intensity ≈ 1–2)"
    big = roofline.analyze_matmul(4096, 4096, 4096, 312e12, 2e12)
    assert big.intensity.value > 156 and big.bound == "compute"
    decode = roofline.analyze_matmul(1, 4096, 4096, 312e12, 2e12)
    assert 0.99 < decode.intensity.value < 2 and decode.bound == "memory"
    # with int8 weights the same vector-matrix product reaches ~2 FLOP/B
    int8 = roofline.matmul_intensity(1, 4096, 4096, weight_bytes_per_element=1)
    assert int8.value == pytest.approx(2, rel=1e-3)


def test_001_s30_4e_batching_amortises_weight_reads():
    # "each weight load serves many tokens, multiplying throughput nearly for free" (memory-bound)
    w = param_count("llama-3.1-8b").value * 2
    one = serving.decode_throughput(w, 2e12).value
    assert serving.decode_throughput(w, 2e12, batch=32).value == pytest.approx(32 * one)
    # … until the batch reaches the ridge point (156 sequences at bf16 on this GPU)
    assert serving.decode_crossover_batch(312e12, 2e12, bytes_per_param=2).value == 156


def test_001_s30_4e_continuous_batching_keeps_slots_full():
    # static: a batch waits for its slowest member; continuous backfills, so useful work per slot-step → 1
    static = serving.static_batching_utilization(mean_output_tokens=128, max_output_tokens=512)
    assert static.value == 0.25
    assert serving.continuous_batching_gain(128, 512).value == 4


def test_001_s30_4f_speculative_tokens_per_round():
    # "α=0.8, k=4 gives ≈ 3.36 tokens per round versus 1 without speculation"
    assert speculative.expected_tokens(0.8, 4).value == pytest.approx(3.36, abs=0.005)
    assert speculative.expected_tokens(0.0, 4).value == 1


def test_001_s30_5_cost_per_million_output_tokens():
    # "$2/hour … 2500 output tokens/sec … 9,000,000 tokens/hour … ≈ $0.22 per million"
    c = cost.cost_per_million_tokens(2.0, 2500)
    assert c.steps[1].value == 9_000_000
    assert c.value == pytest.approx(0.22, abs=0.005)
    # "halve the weights with int8: decode speed roughly doubles to 5000 tok/s … ~$0.11"
    assert cost.cost_per_million_tokens(2.0, 5000).value == pytest.approx(0.11, abs=0.005)


def test_001_s30_5_total_time_and_streaming_speed():
    # T_total ≈ TTFT + (N_out − 1)·TPOT; tokens/sec = 1 / TPOT
    r = serving.response_time(ttft_s=0.4, output_tokens=201, tpot_s=0.04)
    assert r.value == pytest.approx(0.4 + 200 * 0.04)
    assert "25" in r.note  # 1 / 40 ms = 25 tok/s, inside the "20–30 tokens/sec" people notice


def test_001_s30_5_ttft_is_prefill():
    # TTFT is dominated by prefill, which scales with prompt length and is compute-bound
    short = serving.prefill_time(512, 7e9, 312e12).value
    long = serving.prefill_time(4096, 7e9, 312e12).value
    assert long == pytest.approx(8 * short)
    assert serving.ttft(4096, serving.prefill_throughput(7e9, 312e12).value).value == pytest.approx(long)
