"""Workloads: bench serve's lengths and arrivals, or a JSONL trace."""

from __future__ import annotations

import json

import pytest

from nanoserve.bench.dataset import random_requests
from nanoserve.bench.serve import arrival_gaps_s
from nanoserve.errors import InvalidRequestError
from nanoserve.sim.workload import synthetic_workload, trace_workload


def test_synthetic_matches_bench_serve():
    w = synthetic_workload(20, 100, 30, range_ratio=0.5, request_rate=4.0, burstiness=0.5, seed=7)
    bench = random_requests(20, 100, 30, 32_000, 0.5, seed=7)
    assert [r.prompt_len for r in w] == [r.prompt_len for r in bench]
    assert [r.output_len for r in w] == [r.output_len for r in bench]
    gaps = arrival_gaps_s(20, 4.0, 0.5, 7)
    assert w[-1].arrival_s == pytest.approx(sum(gaps))
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(w, w[1:], strict=False))
    assert all(r.arrival_s == 0.0 for r in synthetic_workload(5, 10, 10))  # rate inf


def test_trace(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"arrival_s": 1.5, "prompt_len": 7, "output_len": 3},
        {"arrival_s": 0.2, "prompt_len": 4, "output_len": 2}]))
    w = trace_workload(p)
    assert [(r.arrival_s, r.prompt_len, r.output_len) for r in w] == [(0.2, 4, 2), (1.5, 7, 3)]
    p.write_text('{"arrival_s": 1}\n')
    with pytest.raises(InvalidRequestError):
        trace_workload(p)
