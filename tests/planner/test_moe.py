"""MoE at a batch: experts touched, weights a decode step reads, expert-parallel all-to-all (#15)."""

from __future__ import annotations

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner import moe
from nanoserve.planner.params import param_breakdown


def test_experts_touched_rises_from_top_k_to_all():
    assert moe.expected_experts_touched(8, 2, 1).value == pytest.approx(2)
    assert moe.expected_experts_touched(8, 2, 8).value == pytest.approx(8 * (1 - 0.75**8))
    assert moe.expected_experts_touched(8, 2, 64).value == pytest.approx(8, abs=1e-6)
    r = moe.expected_experts_touched(8, 2, 4)
    assert r.formula == "E · (1 − (1 − k/E)^B)" and "(1 − 2/8)^4" in r.substituted


def test_mixtral_decode_reads_active_at_batch_1_and_all_experts_at_batch_64():
    pb = param_breakdown("mixtral-8x7b")
    assert moe.decode_weight_params("mixtral-8x7b", 1).value == pytest.approx(pb.active)
    assert moe.decode_weight_params("mixtral-8x7b", 64).value == pytest.approx(pb.total, rel=1e-6)
    # a dense model reads everything at any batch
    assert moe.decode_weight_params("llama-3.1-8b", 1).value == param_breakdown("llama-3.1-8b").total


def test_expert_parallel_all_to_all_bytes():
    # Mixtral, 64 tokens on a GPU, EP=8: 32 layers · 2 · 64 · 2 · 4096 · 2 B · 7/8
    r = moe.expert_parallel_all_to_all_bytes("mixtral-8x7b", 64, 8)
    assert r.value == pytest.approx(32 * 2 * 64 * 2 * 4096 * 2 * 7 / 8) and r.unit == "bytes"
    assert moe.expert_parallel_all_to_all_bytes("mixtral-8x7b", 64, 1).value == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: moe.expected_experts_touched(8, 2, 1.7),
        lambda: moe.expected_experts_touched(8, 9, 1),
        lambda: moe.decode_weight_params("mixtral-8x7b", 0),
        lambda: moe.expert_parallel_all_to_all_bytes("llama-3.1-8b", 1, 2),
        lambda: moe.expert_parallel_all_to_all_bytes("mixtral-8x7b", 1, 16),
    ],
)
def test_bad_moe_arguments_are_invalid_requests(call):
    with pytest.raises(InvalidRequestError):
        call()
