"""Quantized decode speed: bandwidth-bound tok/s per dtype, group-scale overhead, GPUs for weights."""

from __future__ import annotations

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner import quantization as q


def test_speed_is_inverse_to_bytes_per_weight():
    rows = q.quantization_table(8e9, 1e12, ("fp32", "bf16", "int8", "int4"))
    assert [r["speedup"] for r in rows] == pytest.approx([1, 2, 4, 8])
    assert rows[1]["tok_per_s"] == pytest.approx(1e12 / 16e9)


def test_group_scales_cost_bandwidth():
    plain = q.quantized_decode_speed(8e9, "int4", 1e12).value
    grouped = q.quantized_decode_speed(8e9, "int4", 1e12, group_size=128).value
    assert plain / grouped == pytest.approx((0.5 + 2 / 128) / 0.5)


def test_batch_multiplies_while_bandwidth_bound():
    one = q.quantized_decode_speed(70e9, "int4", 3.35e12).value
    assert q.quantized_decode_speed(70e9, "int4", 3.35e12, batch=16).value == pytest.approx(16 * one)


def test_gpus_for_weights_rounds_up():
    assert q.gpus_for_weights(80e9, 80e9).value == 1
    assert q.gpus_for_weights(80.1e9, 80e9).value == 2
    assert q.gpus_for_weights(70e9, 80e9, usable_fraction=0.8).value == 2


def test_unknown_dtype():
    with pytest.raises(InvalidRequestError, match="unknown dtype"):
        q.quantized_decode_speed(1e9, "int3", 1e12)
