"""Roofline calculators: intensity, ridge, bound, time, efficiency, kernel-level helpers."""

from __future__ import annotations

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner import roofline

P, B = 1000e12, 4e12  # ridge 250 FLOP/B


def test_square_matmul_intensity_is_n_over_3_in_bf16():
    for n in (256, 1024, 8192):
        assert roofline.matmul_intensity(n, n, n).value == pytest.approx(n / 3)


def test_int4_weights_raise_matvec_intensity_fourfold():
    bf16 = roofline.matmul_intensity(1, 8192, 8192).value
    int4 = roofline.matmul_intensity(1, 8192, 8192, weight_bytes_per_element=0.5).value
    assert int4 / bf16 == pytest.approx(4, rel=1e-3)


def test_bound_switches_at_the_ridge():
    assert roofline.ridge_point(P, B).value == 250
    below = roofline.analyze(249 * 1e9, 1e9, P, B)
    above = roofline.analyze(251 * 1e9, 1e9, P, B)
    assert (below.bound, above.bound) == ("memory", "compute")
    assert below.achievable.value == pytest.approx(249 * B)
    assert above.achievable.value == pytest.approx(P)


def test_time_is_the_larger_of_compute_and_memory():
    t = roofline.op_time(1e12, 1e9, P, B)
    assert t.value == pytest.approx(1e12 / P)
    assert t.inputs["memory_s"] == pytest.approx(1e9 / B)
    t = roofline.op_time(1e9, 1e12, P, B)
    assert t.value == pytest.approx(1e12 / B) and t.inputs["bound"] == "memory"


def test_efficiency_reports_achievable_below_peak():
    peak = roofline.analyze_matmul(4096, 4096, 4096, P, B)
    real = roofline.analyze_matmul(4096, 4096, 4096, P, B, efficiency=0.8)
    assert real.time.value == pytest.approx(peak.time.value / 0.8)
    assert real.achievable.value == pytest.approx(0.8 * P)


def test_flash_attention_keeps_scores_off_hbm():
    naive = roofline.attention_intensity(4096, 128)
    flash = roofline.attention_intensity(4096, 128, materialize_scores=False)
    assert flash.value == pytest.approx(4096 / 2)  # 4·s²·d / (4·s·d·2) = s / 2
    assert naive.value < flash.value / 10


def test_occupancy_picks_the_tightest_limit():
    o = roofline.sm_occupancy(256, 0)
    assert o.value == 1.0 and o.inputs["binding"] == "threads"
    o = roofline.sm_occupancy(128, 0, regs_per_thread=255)
    assert o.inputs["binding"] == "registers" and o.inputs["blocks_per_sm"] == 2


def test_amdahl_and_overlap():
    assert roofline.amdahl_speedup(10, 5).value == 2.0
    h = roofline.overlap_hidden_fraction(1.0, 0.25)
    assert h.value == 0.25 and "exposed" in h.note


@pytest.mark.parametrize(
    "call",
    [
        lambda: roofline.matmul_flops(0, 1, 1),
        lambda: roofline.ridge_point(-1, 1),
        lambda: roofline.achievable_flops(1, 1, 1, efficiency=1.5),
        lambda: roofline.amdahl_speedup(1, 1),
        lambda: roofline.analyze(float("inf"), 1, 1, 1),
    ],
)
def test_bad_input_is_a_typed_error(call):
    with pytest.raises(InvalidRequestError):
        call()


def test_results_carry_their_derivation():
    r = roofline.matmul_intensity(2, 3, 4)
    assert r.steps[0].substituted == "2 × 2 × 3 × 4" and r.steps[0].value == 48
    assert "FLOPs / bytes" in r.explain()
