"""`nanoserve simulate` end to end."""

from __future__ import annotations

import json

import pytest

from nanoserve.cli import main


def test_simulate_json(capsys, tmp_path):
    argv = ["simulate", "--model", "llama-3.1-8b", "--gpu", "h100", "--num-prompts", "30",
            "--input-len", "512",
            "--output-len", "64", "--range-ratio", "0.5", "--request-rate", "5", "--goodput", "ttft:500",
            "--json", "--save-result", str(tmp_path / "r.json")]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["completed"] == 30
    for key in ("request_throughput", "output_throughput", "mean_ttft_ms", "median_tpot_ms", "p99_itl_ms",
                "p90_e2el_ms", "request_goodput", "num_preemptions"):
        assert key in out, key
    assert 0 < out["mean_tpot_ms"] < 100
    assert json.loads((tmp_path / "r.json").read_text())["completed"] == 30


def test_simulate_static_and_small_pool(capsys):
    base = ["simulate", "--model", "llama-3.1-8b", "--gpu", "h100", "--num-prompts", "20",
            "--input-len", "256",
            "--output-len", "64", "--range-ratio", "0.9", "--json"]
    assert main(base + ["--num-gpu-blocks-override", "40", "--block-size", "16"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert small["num_gpu_blocks"] == 40 and small["num_preemptions"] > 0
    assert main(base + ["--batching", "static", "--max-num-seqs", "4"]) == 0
    static = json.loads(capsys.readouterr().out)
    assert main(base + ["--max-num-seqs", "4"]) == 0
    cont = json.loads(capsys.readouterr().out)
    assert static["batching"] == "static" and static["duration"] > cont["duration"]


def test_simulate_needs_a_step_model(capsys):
    assert main(["simulate", "--num-prompts", "2"]) == 2
    assert "--profile" in capsys.readouterr().err


def test_simulate_plot_writes_a_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "run.png"
    argv = ["simulate", "--model", "llama-3.1-8b", "--gpu", "h100", "--num-prompts", "20",
            "--input-len", "256", "--output-len", "64", "--range-ratio", "0.9",
            "--num-gpu-blocks-override", "40", "--json", "--plot", str(png)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert "timeline" not in out and out["num_preemptions"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plot_timeline_needs_matplotlib(monkeypatch, tmp_path):
    import importlib

    from nanoserve.extras import MissingExtraError
    from nanoserve.sim.plots import plot_timeline

    real = importlib.import_module

    def no_matplotlib(name, *a, **k):
        if name == "matplotlib":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_matplotlib)
    with pytest.raises(MissingExtraError, match="plots"):
        plot_timeline({"time_s": [0.0]}, tmp_path / "x.png")
