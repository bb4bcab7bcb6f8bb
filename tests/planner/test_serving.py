"""Serving bounds: prefill, decode (memory vs compute), crossover, batching, Little's law."""

from __future__ import annotations

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner import serving as s

W, BW, PEAK = 16e9, 2e12, 500e12  # 8B bf16 weights, ridge 250


def test_decode_is_memory_bound_then_compute_bound():
    x = s.decode_crossover_batch(PEAK, BW, bytes_per_param=2).value
    assert x == pytest.approx(250)
    below = s.decode_throughput(W, BW, batch=200, flops_per_token=16e9, peak_flops_per_s=PEAK)
    above = s.decode_throughput(W, BW, batch=300, flops_per_token=16e9, peak_flops_per_s=PEAK)
    assert below.inputs["bound"] == "memory" and below.value == pytest.approx(200 * BW / W)
    assert above.inputs["bound"] == "compute" and above.value == pytest.approx(PEAK / 16e9)


def test_kv_reads_slow_decode():
    w_only = s.decode_throughput(W, BW, batch=8).value
    with_kv = s.decode_throughput(W, BW, batch=8, kv_bytes_per_seq=2e9).value
    assert with_kv == pytest.approx(8 * BW / (W + 16e9)) and with_kv == pytest.approx(w_only / 2)


def test_prefill_time_and_ttft():
    t = s.prefill_time(2000, 8e9, PEAK, efficiency=0.5)
    assert t.value == pytest.approx(2 * 8e9 * 2000 / (0.5 * PEAK))
    thr = s.prefill_throughput(8e9, PEAK, 0.5).value
    assert s.ttft(2000, thr, queue_s=0.1).value == pytest.approx(0.1 + t.value)


def test_prefill_attention_term_adds_flops():
    base = s.prefill_throughput(8e9, PEAK).value
    more = s.prefill_throughput(8e9, PEAK, attn_flops_per_token=16e9).value
    assert more == pytest.approx(base / 2)


def test_littles_law_any_two():
    assert s.littles_law(arrival_rate_per_s=5, latency_s=4).value == 20
    assert s.littles_law(arrival_rate_per_s=5, concurrency=20).value == 4
    assert s.littles_law(latency_s=4, concurrency=20).value == 5
    with pytest.raises(InvalidRequestError, match="exactly two"):
        s.littles_law(arrival_rate_per_s=5)


def test_static_batching():
    assert s.static_batching_utilization(100, 100).value == 1
    with pytest.raises(InvalidRequestError):
        s.static_batching_utilization(200, 100)


def test_response_time_and_replicas():
    r = s.response_time(0.5, 101, 0.02)
    assert r.value == pytest.approx(2.5) and "50" in r.note
    rep = s.replicas_needed(1000, 300, headroom=0.5)
    assert rep.inputs["base"] == 4 and rep.value == 6
    assert s.replicas_needed(900, 300).value == 3  # exact division does not round up


def test_decode_step_adds_communication_and_rejects_fractional_batches():
    base = s.decode_step_time(W, BW, batch=1).value
    assert s.decode_step_time(W, BW, batch=1, comm_s=1e-3).value == pytest.approx(base + 1e-3)
    for bad in (1.7, 0, -1):
        with pytest.raises(InvalidRequestError):
            s.decode_throughput(W, BW, batch=bad)
    with pytest.raises(InvalidRequestError):
        s.decode_step_time(W, BW, comm_s=-1)


def test_prefill_attention_flops_per_token():
    # 70B, 4,096-token prompt: 4 · 80 · 8192 · 4097/2 ≈ 5.4 GFLOP per token beside 2N ≈ 141 GFLOP
    a = s.prefill_attention_flops_per_token("llama-3.1-70b", 4096)
    assert a.value == pytest.approx(4 * 80 * 8192 * 4097 / 2)
    with_attn = s.prefill_time(4096, 70e9, PEAK, attn_flops_per_token=a.value).value
    assert with_attn == pytest.approx(4096 * (140e9 + a.value) / PEAK)
    assert with_attn > s.prefill_time(4096, 70e9, PEAK).value  # the 2N default (the seeds') stays
    with pytest.raises(InvalidRequestError):
        s.prefill_attention_flops_per_token("llama-3.1-70b", 0)
