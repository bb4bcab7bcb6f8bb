"""Step-time models against hand computations."""

from __future__ import annotations

import json

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.hardware import Hardware
from nanoserve.planner.models import ModelSpec
from nanoserve.sim.step_model import AnalyticStepModel, CalibratedStepModel, StepShape

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
