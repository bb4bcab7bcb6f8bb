"""`nanoserve bench tp`: a TP=2 run reports its decode step's all-reduced bytes beside the planner's."""

from __future__ import annotations

from nanoserve.bench.tensor_parallel import measure


def test_tp2_rows_carry_the_measured_and_planned_bytes(tiny_model):
    rows = measure(str(tiny_model("llama")), 2, 1, [1, 3], input_len=6, output_len=3, dtype="float32")
    assert [r["batch"] for r in rows] == [1, 3]
    for r in rows:
        assert r["out_tok/s"] > 0 and 0 <= r["collectives_%"] <= 100
        assert r["layer_bytes_step"] == r["planner_bytes_step"] > 0
    assert rows[1]["layer_bytes_step"] == 3 * rows[0]["layer_bytes_step"]  # bytes grow with the batch


def test_tp1_rows_have_no_collectives(tiny_model):
    (row,) = measure(str(tiny_model("llama")), 1, 1, [2], input_len=6, output_len=2, dtype="float32")
    assert row["collectives_s"] == 0 and "layer_bytes_step" not in row
