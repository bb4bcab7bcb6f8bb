"""Step-time models against hand computations."""

from __future__ import annotations

import json
import math

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.hardware import Hardware
from nanoserve.planner.models import ModelSpec
from nanoserve.sim.step_model import COLD_TAU_S, AnalyticStepModel, CalibratedStepModel, StepShape

# 2 layers, hidden 8, 2 query heads and 1 KV head of 4, SwiGLU 16, vocab 10, untied.
TINY = ModelSpec("tiny", layers=2, hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10)
# params: embed 80 + 2 · (q 64 + k 32 + v 32 + o 64 + mlp 384 + 2 norms 16) + final norm 8 + lm_head 80 = 1352
# matmul params (one token's linear weights, lm_head included): 2 · (192 + 384) + 80 = 1232
# KV per token: 2 · 2 layers · 1 head · 4 · 2 bytes = 32
CHIP = Hardware("chip", bf16_flops_per_s=1e6, fp8_flops_per_s=None, int8_ops_per_s=None, hbm_bytes=1e9,
                hbm_bytes_per_s=1e4, intra_node_bytes_per_s=2e3, inter_node_bytes_per_s=1e3, usd_per_hour=1.0)


def _model(**kw) -> AnalyticStepModel:
    args = dict(memory_efficiency=0.5, compute_efficiency=0.5, allreduce_latency_s=1e-3, overhead_s=0.01)
    return AnalyticStepModel(TINY, CHIP, **(args | kw))


def test_one_decode_step_by_hand():
    shape = StepShape.of([(99, 1, True)])  # one sequence: 99 tokens cached, computes its 100th
    assert shape == StepShape(num_decode_seqs=1, num_prefill_tokens=0, context_tokens=100,
                              attention_pairs=100, num_seqs=1)
    t = _model().terms_s(shape)
    assert t["memory_s"] == pytest.approx((2 * 1352 + 100 * 32) / (1e4 * 0.5))  # 1.1808 s
    assert t["compute_s"] == pytest.approx((2 * 1232 + 4 * 2 * 8 * 100) / (1e6 * 0.5))
    assert t["allreduce_s"] == 0.0
    assert _model().step_time_s(shape) == pytest.approx(1.1808 + 0.01)


def test_prefill_counts_attention_and_tp_adds_allreduces():
    shape = StepShape.of([(0, 10, False)])  # a 10-token prompt: 1+2+...+10 = 55 query-key pairs
    assert shape.attention_pairs == 55 and shape.num_prefill_tokens == 10
    m = _model(tp=2)
    t = m.terms_s(shape)
    # weights split over 2 GPUs; the single KV head is replicated, so every rank reads all 10 tokens' KV
    assert t["memory_s"] == pytest.approx((2 * 1352 / 2 + 10 * 32) / (1e4 * 0.5))
    assert t["compute_s"] == pytest.approx((2 * 1232 * 10 + 4 * 2 * 8 * 55) / 2 / (1e6 * 0.5))
    # 2 all-reduces per layer of [10, 8] bf16 = 160 bytes; ring 2·(2−1)/2 = 1; link 1e3 B/s one way
    assert t["allreduce_s"] == pytest.approx(2 * 2 * (1e-3 + 160 / 1e3))


def test_planner_preset_names_work_and_bad_efficiency_is_refused():
    m = AnalyticStepModel("llama-3.1-8b", "h100", tp=1)
    assert 0.005 < m.step_time_s(StepShape.of([(1000, 1, True)])) < 0.02  # ~16 GB at ~2.7 TB/s + overhead
    with pytest.raises(InvalidRequestError):
        AnalyticStepModel("llama-3.1-8b", "h100", memory_efficiency=1.5)


def test_calibrated_fit_recovers_a_linear_profile(tmp_path):
    def truth(d, p, c):
        return 0.002 + 1e-4 * d + 3e-5 * p + 2e-7 * c

    samples = [{"decode_batch": d, "prefill_tokens": p, "context_tokens": c, "step_s": truth(d, p, c)}
               for d, p, c in [(1, 0, 100), (8, 0, 4000), (0, 512, 512), (4, 256, 3000), (16, 0, 9000),
                               (0, 2048, 2048)]]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"samples": samples}))
    m = CalibratedStepModel.from_file(path)
    assert m.intercept_s == pytest.approx(0.002)
    assert m.step_time_s(StepShape(3, 100, 5000, 0)) == pytest.approx(truth(3, 100, 5000))
    with pytest.raises(InvalidRequestError):
        CalibratedStepModel.fit(samples[:2])


def _bent(d, p, c, cold=0.0):
    """A decode curve that bends at 4 and 16 (the second row costs more than the tenth) and a cold start."""
    return (3e-4 + 2e-4 * d - 1e-4 * max(0, d - 4) - 5e-5 * max(0, d - 16) + 3e-5 * p + 1e-8 * c
            + 1e-3 * (p > 0) + 1e-3 * cold)


def _bent_samples():
    samples = []
    for d in (1, 2, 4, 8, 16, 64):
        for c in (32, 96):
            samples.append({"decode_batch": d, "prefill_tokens": 0, "context_tokens": d * c, "step_s": 0})
    for p, d in ((8, 0), (32, 0), (96, 0), (16, 1), (64, 8)):
        samples.append({"decode_batch": d, "prefill_tokens": p, "context_tokens": p + 64 * d, "step_s": 0})
    for p in (8, 32):  # after idle: cold
        samples.append({"decode_batch": 0, "prefill_tokens": p, "context_tokens": p, "step_s": 0,
                        "cold_start": 1.0})
    for s in samples:
        s.setdefault("cold_start", 0.0)
        s.update(attention_pairs=0, prefill_seqs=int(s["prefill_tokens"] > 0),
                 prefill_step=int(s["prefill_tokens"] > 0))
        s["step_s"] = _bent(s["decode_batch"], s["prefill_tokens"], s["context_tokens"], s["cold_start"])
    return samples


def test_calibrated_decode_hinges_follow_a_bent_curve_at_the_measured_batches(tmp_path):
    m = CalibratedStepModel.fit(_bent_samples())
    # knots at the inner decode batches of the profile (not 1, not 64)
    assert sorted(k for k in m.coefficients if k.startswith("decode_batch_over_")) == [
        "decode_batch_over_16", "decode_batch_over_2", "decode_batch_over_4", "decode_batch_over_8"]
    for d in (2, 3, 12, 40):  # between the knots too: a straight line through 1 and 64 misses these
        shape = StepShape(d, 0, d * 50, d * 50, d)
        assert m.step_time_s(shape) == pytest.approx(_bent(d, 0, d * 50), rel=1e-6)
    # the fit survives the round trip through its coefficients
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"coefficients": {"intercept_s": m.intercept_s, **m.coefficients}}))
    again = CalibratedStepModel.from_file(path)
    assert again.step_time_s(StepShape(3, 0, 150, 150, 3)) == pytest.approx(_bent(3, 0, 150), rel=1e-6)


def test_calibrated_cold_start_costs_a_step_after_idle():
    m = CalibratedStepModel.fit(_bent_samples())
    warm = StepShape(0, 16, 16, 136, 1)
    cold = StepShape(0, 16, 16, 136, 1, idle_s=1.0)
    assert m.step_time_s(warm) == pytest.approx(_bent(0, 16, 16), rel=1e-6)
    assert m.step_time_s(cold) - m.step_time_s(warm) == pytest.approx(1e-3, rel=1e-6)
    # a short gap costs part of it: 1 - exp(-idle / tau)
    half = StepShape(0, 16, 16, 136, 1, idle_s=COLD_TAU_S * math.log(2))
    assert m.step_time_s(half) - m.step_time_s(warm) == pytest.approx(0.5e-3, rel=1e-6)
    # without idle points in the profile the term is not fitted (it would be a column of zeros)
    warm_only = [s for s in _bent_samples() if not s["cold_start"]]
    assert "cold_start" not in CalibratedStepModel.fit(warm_only).coefficients


def test_calibrated_cold_start_has_a_slow_part_when_three_gaps_tell_it_apart():
    from nanoserve.sim.step_model import COLD_SLOW_TAU_S, cold_start, shape_features

    def cold_start_slow(idle_s):
        return cold_start(idle_s, COLD_SLOW_TAU_S)

    def cold_cost(idle_s):  # +0.3 ms within ~10 ms, then another +0.6 ms over ~100 ms
        return 3e-4 * cold_start(idle_s) + 6e-4 * cold_start_slow(idle_s)

    samples = [s for s in _bent_samples() if not s["cold_start"]]
    for s in samples:
        s["cold_start_slow"] = 0.0
    for gap in (0.005, 0.02, 0.1, 0.2):
        for p in (8, 32):
            f = shape_features(StepShape(0, p, p, p * (p + 1) // 2, 1, idle_s=gap))
            f["step_s"] = _bent(0, p, p) + cold_cost(gap)
            samples.append(f)
    m = CalibratedStepModel.fit(samples)
    assert m.coefficients["cold_start_slow"] == pytest.approx(6e-4, rel=1e-6)
    warm = StepShape(0, 16, 16, 136, 1)
    for gap in (0.05, 0.5):  # gaps the profile did not measure
        cold = StepShape(0, 16, 16, 136, 1, idle_s=gap)
        assert m.step_time_s(cold) - m.step_time_s(warm) == pytest.approx(cold_cost(gap), rel=1e-6)
    # two gaps only: one cold term (the slow one is not fitted)
    two = [s for s in samples if not s["cold_start"] or s["cold_start_slow"] > cold_start_slow(0.05)]
    assert "cold_start_slow" not in CalibratedStepModel.fit(two).coefficients


def test_profile_wake_s_is_read_and_checked(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"samples": _bent_samples(), "wake_s": 1.2e-4}))
    assert CalibratedStepModel.from_file(path).wake_s == pytest.approx(1.2e-4)
    path.write_text(json.dumps({"coefficients": {"intercept_s": 1e-3}}))
    assert CalibratedStepModel.from_file(path).wake_s == 0.0  # older profiles: no wake-up term
    for bad in (-1.0, 5.0, "soon"):
        path.write_text(json.dumps({"coefficients": {"intercept_s": 1e-3}, "wake_s": bad}))
        with pytest.raises(InvalidRequestError, match="wake_s"):
            CalibratedStepModel.from_file(path)


def test_decode_points_a_few_sequences_apart_share_one_knot():
    samples = _bent_samples()
    extra = dict(samples[-3], decode_batch=62, prefill_tokens=0, context_tokens=62 * 96, cold_start=0.0)
    extra.update(prefill_seqs=0, prefill_step=0, step_s=_bent(62, 0, 62 * 96))
    knots = [k for k in CalibratedStepModel.fit([*samples, extra]).coefficients if "_over_" in k]
    assert "decode_batch_over_62" not in knots and len(knots) == 4


def _decode_sample(batch: int, ctx_per_seq: int, step_s: float, warming: float = 0.0) -> dict:
    return {"decode_batch": batch, "prefill_tokens": 0, "context_tokens": batch * ctx_per_seq,
            "attention_pairs": batch * ctx_per_seq, "prefill_seqs": 0, "prefill_step": 0, "cold_start": 0.0,
            "cold_start_slow": 0.0, "warming": warming, "step_s": step_s}


def test_decode_table_reads_steps_off_the_measured_points():
    from nanoserve.sim.decode_table import DecodeTable

    # two contexts (20 and 100 a sequence), a curve bent at batch 4, and a prefill sample it ignores
    curve = {1: 1.0, 2: 1.2, 4: 1.4, 16: 4.0}
    samples = [_decode_sample(b, c, t + 0.01 * c) for c in (20, 100) for b, t in curve.items()]
    samples.append({**_decode_sample(1, 20, 9.0), "prefill_tokens": 16})
    table = DecodeTable.from_samples(samples)
    assert [lv.context for lv in table.levels] == [20, 100]
    assert table.predict_s(1, 20) == pytest.approx(1.2)  # a measured point is its measurement
    assert table.predict_s(3, 3 * 20) == pytest.approx(1.5)  # halfway between batches 2 and 4
    assert table.predict_s(4, 4 * 60) == pytest.approx(2.0)  # halfway between the contexts
    assert table.predict_s(32, 32 * 20) == pytest.approx(4.2 + 16 * 2.6 / 12)  # the last segment, extended
    # one context: the slope given carries it to the others
    one = DecodeTable.from_samples(samples[:4], context_slope_s=0.001)
    assert one.predict_s(2, 2 * 70) == pytest.approx(1.4 + 0.001 * 2 * 50)
    assert DecodeTable.from_samples(samples[:1]) is None  # one batch: nothing to interpolate


def test_decode_steps_come_from_the_table_and_the_warming_term_from_steps_after_a_wake_up():
    from nanoserve.sim.step_model import shape_features

    # the decode curve is not linear in the batch at B = 1 (a fit of all the points misses it there)
    samples = [_decode_sample(b, 32, t) for b, t in ((1, 0.20), (2, 0.21), (4, 0.25), (8, 0.34), (16, 0.55),
                                                     (64, 2.0), (256, 9.0))]
    samples += [{**_decode_sample(0, 0, 0.3 + 0.01 * p), "prefill_tokens": p, "context_tokens": p,
                 "attention_pairs": p * (p + 1) // 2, "prefill_seqs": 1, "prefill_step": 1}
                for p in (8, 16, 32, 64)]
    # decode steps after a wake-up: 0.1 s per unit of warming over the table's warm B = 1
    samples += [_decode_sample(1, 32, 0.20 + 0.1 * w, warming=w) for w in (0.6, 0.37, 0.22, 0.14)]
    m = CalibratedStepModel.fit(samples)
    assert m.decode_table.warming_s == pytest.approx(0.1, rel=1e-6)
    assert m.step_time_s(StepShape(1, 0, 32, 32, 1)) == pytest.approx(0.20)
    assert m.step_time_s(StepShape(256, 0, 256 * 32, 256 * 32, 256)) == pytest.approx(9.0)
    after = StepShape(1, 0, 32, 32, 1, wake_idle_s=1.0, steps_since_wake=2)
    assert shape_features(after)["warming"] == pytest.approx(math.exp(-1.0), rel=1e-6)
    assert m.step_time_s(after) == pytest.approx(0.20 + 0.1 * math.exp(-1.0), rel=1e-6)
    # the wake-up step itself (idle_s > 0) is cold_start's, not warming's
    assert shape_features(StepShape(0, 8, 8, 36, 1, idle_s=1.0, wake_idle_s=1.0))["warming"] == 0.0
