"""Seed 004 (solutions appendix of "Chapter 27 — Inference Optimization"): exercises 4, 6 and 11."""

from __future__ import annotations

import pytest

from nanoserve.planner import quantization, speculative
from nanoserve.planner.memory import bytes_per_param, kv_cache_bytes, weight_memory

GiB = 2**30


def test_004_ex4_kv_cache_7b_8k_batch32():
    # 2 × 32 layers × 32 heads × 128 × 8192 tokens × 32 requests × 2 bytes
    mha = kv_cache_bytes(seq_len=8192, batch=32, layers=32, kv_heads=32, head_dim=128, kv_dtype="fp16")
    assert mha.value == 137_438_953_472 == 128 * GiB
    assert round(mha.value / 1e9) == 137  # "≈ 1.37×10¹¹ bytes ≈ 137 GB"
    # "With GQA using 8 KV heads … shrinks by 4×, to ≈ 34 GB"
    gqa = kv_cache_bytes(seq_len=8192, batch=32, layers=32, kv_heads=8, head_dim=128, kv_dtype="fp16")
    assert mha.value / gqa.value == 4
    assert round(gqa.value / 1e9) == 34


def test_004_ex6_weight_memory_per_dtype():
    assert weight_memory(7e9, "fp16").value == 14e9
    assert weight_memory(7e9, "int8").value == 7e9
    assert weight_memory(7e9, "int4").value == 3.5e9


def test_004_ex6_per_group_int8_storage():
    # "each weight as an 8-bit integer plus a shared fp16 scale (and zero-point) per group … the dominant
    # cost is ~1 byte/weight": with groups of 128, 1 + 4/128 = 1.03 bytes, 3% over the 1-byte figure.
    per = bytes_per_param("int8", group_size=128, scale_dtype="fp16", zero_point=True)
    assert per.value == pytest.approx(1.03125)
    grouped = weight_memory(7e9, "int8", group_size=128, zero_point=True)
    assert grouped.value / 1e9 == pytest.approx(7.22, abs=0.01)


def test_004_ex6_decode_speedup():
    # bandwidth-bound decode speeds up in proportion to bytes read: ~2× (int8), ~4× (int4)
    bw = 3.35e12
    fp16 = quantization.quantized_decode_speed(7e9, "fp16", bw).value
    assert quantization.quantized_decode_speed(7e9, "int8", bw).value / fp16 == pytest.approx(2)
    assert quantization.quantized_decode_speed(7e9, "int4", bw).value / fp16 == pytest.approx(4)
    # group scales eat a little of it ("minus … overhead"): int4 with fp16 scales per 128 → 3.88×
    grouped = quantization.quantized_decode_speed(7e9, "int4", bw, group_size=128).value
    assert grouped / fp16 == pytest.approx(2 / (0.5 + 2 / 128), abs=1e-9)
    assert grouped / fp16 < 4


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.6, 0.8, 0.95])
@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_004_ex11_expected_tokens_per_pass(alpha: float, k: int):
    # the seed's form: E = 1 + α(1−α^k)/(1−α) — the same as (1 − α^(k+1))/(1 − α)
    seed_form = 1 + alpha * (1 - alpha**k) / (1 - alpha)
    e = speculative.expected_tokens(alpha, k)
    assert e.value == pytest.approx(seed_form, rel=1e-12)
    # and the direct sum Σ_{i=0..k} α^i (bonus token + accepted prefix)
    assert e.value == pytest.approx(sum(alpha**i for i in range(k + 1)), rel=1e-12)


def test_004_ex11_limits():
    assert speculative.expected_tokens(1.0, 5).value == 6  # every draft accepted + the bonus token
    assert speculative.expected_tokens(0.0, 5).value == 1  # nothing accepted: the target's own token
