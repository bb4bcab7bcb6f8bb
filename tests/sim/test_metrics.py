"""A tiny synthetic run's vLLM-named metrics against hand computation; static vs continuous batching."""

from __future__ import annotations

import pytest

from nanoserve.sim.metrics import serve_metrics, timeline
from nanoserve.sim.simulator import SimConfig, Simulator
from nanoserve.sim.step_model import ConstantStepModel
from nanoserve.sim.workload import SimRequest, synthetic_workload


def test_metrics_by_hand():
    # Steps of 1 s. a arrives at 0: prompt step ends at 1 (token 1), then tokens at 2, 3.
    # b arrives at 0.5, joins step 2 (start 1): its prompt runs beside a's decode → token at 2, then 3.
    work = [SimRequest("a", 0.0, [1, 2, 3], 3), SimRequest("b", 0.5, [4, 5], 2)]
    res = Simulator(SimConfig(50, block_size=4, max_num_batched_tokens=64), ConstantStepModel(1.0)).run(work)
    assert [r.token_times_s for r in res.requests] == [[1.0, 2.0, 3.0], [2.0, 3.0]]
    m = serve_metrics(res, slos_s={"ttft": 1.2})
    assert m["duration"] == 3.0
    assert m["completed"] == 2 and m["total_input_tokens"] == 5 and m["total_output_tokens"] == 5
    assert m["request_throughput"] == pytest.approx(2 / 3)
    assert m["output_throughput"] == pytest.approx(5 / 3)
    assert m["mean_ttft_ms"] == pytest.approx((1000 + 1500) / 2)  # a: 1 − 0, b: 2 − 0.5
    assert m["median_ttft_ms"] == pytest.approx(1250)
    assert m["mean_tpot_ms"] == pytest.approx(1000)  # a: (3 − 1)/2, b: (3 − 2)/1
    assert m["mean_itl_ms"] == pytest.approx(1000)
    assert m["mean_e2el_ms"] == pytest.approx((3000 + 2500) / 2)
    assert m["p99_e2el_ms"] == pytest.approx(2500 + 0.99 * 500)
    assert m["request_goodput"] == pytest.approx(1 / 3)  # only a meets TTFT ≤ 1.2 s
    tl = timeline(res)
    assert tl["time_s"] == [1.0, 2.0, 3.0] and tl["num_running"] == [1, 2, 0]


def test_static_batching_is_slower_than_continuous_on_mixed_lengths():
    work = synthetic_workload(64, input_len=64, output_len=64, range_ratio=0.9, request_rate=20.0, seed=1)

    def run(batching):
        cfg = SimConfig(4096, block_size=16, max_num_seqs=16, max_num_batched_tokens=512, batching=batching)
        return serve_metrics(Simulator(cfg, ConstantStepModel(0.01)).run(work))

    static, cont = run("static"), run("continuous")
    assert static["output_throughput"] < cont["output_throughput"]
    assert static["mean_e2el_ms"] > cont["mean_e2el_ms"]
    assert static["total_output_tokens"] == cont["total_output_tokens"]
