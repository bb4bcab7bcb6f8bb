"""#15: training memory per GPU adds the activations in flight to the ZeRO / 3D model state."""

from __future__ import annotations

import math

import pytest

from nanoserve.cli import main
from nanoserve.planner import memory, parallel
from nanoserve.planner.training_memory import training_memory_per_gpu


def test_total_is_model_state_plus_activations_of_the_first_stage():
    r = training_memory_per_gpu("llama-3.1-70b", tp=8, pp=4, dp=4, zero_stage=1, seq_len=4096, micro_batch=1,
                                microbatches=16)
    state = parallel.memory_per_gpu_3d("llama-3.1-70b", 8, 4, 4, 1).value
    act = memory.activation_memory("llama-3.1-70b", 4096, 1, "full", True, 8, layers=math.ceil(80 / 4)).value
    assert r.value == pytest.approx(state + 4 * act)  # 1F1B: PP microbatches in flight on stage 0
    assert r.value > state and r.unit == "bytes"
    few = training_memory_per_gpu("llama-3.1-70b", 8, 4, 4, microbatches=2).value
    assert few == pytest.approx(state + 2 * act)


def test_one_zero_stage_default_across_api_and_cli():
    assert parallel.ZERO_STAGE_DEFAULT == 1
    assert parallel.zero_memory_per_gpu(1e9, 8).value == parallel.zero_memory_per_gpu(1e9, 8, 1).value
    est = memory.memory_estimate("llama-3.1-8b", "h100", mode="training", n_gpu=8, overhead_bytes=0)
    assert est.per_gpu.value == pytest.approx(parallel.zero_memory_per_gpu("llama-3.1-8b", 8, 1).value)


def test_cli_3d_reports_the_total_with_activations(capsys):
    import json

    assert main(["plan", "3d", "--model", "llama-3.1-70b", "--gpus", "64", "--tp", "8", "--pp", "2",
                 "--context", "4096", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    names = {r["name"]: r["value"] for r in doc["results"]}
    total = next(v for k, v in names.items() if k.startswith("training memory per GPU"))
    state = next(v for k, v in names.items() if k.startswith("3D-parallel model state"))
    assert total > state and "ZeRO-1" in next(k for k in names if k.startswith("3D-parallel"))
