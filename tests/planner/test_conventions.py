"""#15: one convention across API and CLI: "bytes" as the byte unit, seconds for durations (days beside)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nanoserve.cli import main
from nanoserve.planner import quantization, roofline

PLANNER = Path(__file__).resolve().parents[2] / "nanoserve" / "planner"


def test_no_calculator_labels_bytes_as_B():
    offenders = [
        f"{p.name}:{i}"
        for p in PLANNER.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.fullmatch(r'\s*"B",\s*', line)
    ]
    assert offenders == []
    assert roofline.matmul_bytes(4, 4, 4).unit == "bytes"
    assert quantization.quantized_weight_bytes(1e9, "int8").unit == "bytes"


def test_training_time_is_seconds_with_days_beside(capsys):
    argv = ["plan", "training", "--params", "70e9", "--tokens", "1.4e12", "--gpus", "1024", "--json"]
    assert main(argv) == 0
    res = {r["name"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    t, days = res["training time"], res["training time (days)"]
    assert t["unit"] == "s" and days["unit"] == "days"
    assert days["value"] == pytest.approx(t["value"] / 86400)
