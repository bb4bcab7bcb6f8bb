"""Latency sweep, roofline report and linear-layer benchmark, end to end at a tiny scale."""

import json
import statistics

import pytest

from nanoserve.bench.roofline import Probe, decode_row, model_costs, prefill_row
from nanoserve.cli import main


def test_latency_sweep_writes_points_and_png(tiny_model, tmp_path):
    model = tiny_model("qwen2")
    png, out = tmp_path / "lat.png", tmp_path / "lat.json"
    rc = main(
        [
            "bench",
            "latency",
            "--model",
            str(model),
            "--backend",
            "nanoserve,hf",
            "--input-lens",
            "8,32",
            "--output-len",
            "4",
            "--num-iters",
            "2",
            "--plot",
            str(png),
            "--save-result",
            str(out),
        ]
    )
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = json.loads(out.read_text())["points"]
    assert [(p["backend"], p["prompt_len"]) for p in points] == [
        ("nanoserve", 8),
        ("hf", 8),
        ("nanoserve", 32),
        ("hf", 32),
    ]
    for p in points:
        assert len(p["ttft_all_ms"]) == 2 and p["ttft_ms"] > 0 and p["tpot_ms"] > 0
    for first, other in (points[0:2], points[2:4]):  # hf's TPOT over nanoserve's, prompt by prompt
        assert first["tpot_vs_first"] == 1.0
        ratios = [t / t0 for t, t0 in zip(other["tpot_all_ms"], first["tpot_all_ms"], strict=True)]
        assert other["tpot_vs_first"] == pytest.approx(statistics.median(ratios))


def test_backends_alternate_prompt_by_prompt(tiny_model, monkeypatch):
    """Each prompt goes to every backend before the next prompt, the first backend rotating."""
    from nanoserve.bench import latency

    calls = []

    def fake(name):
        def fn(runner, ids, n):
            calls.append((name, tuple(ids)))
            return 0.1, {"a": 0.01, "b": 0.02}[name]
        return latency._Backend(name, None, fn, None)

    monkeypatch.setattr(latency, "_load_backend", lambda backend, *a: fake(backend))
    points = latency.measure(str(tiny_model("llama")), ["a", "b"], [8], 4, 3, {})
    prompts = list(dict.fromkeys(ids for _, ids in calls[2:]))  # after the two warm-up calls
    assert [name for name, _ in calls[2:]] == ["a", "b", "b", "a", "a", "b"]
    assert [ids for _, ids in calls[2:]] == [prompts[0]] * 2 + [prompts[1]] * 2 + [prompts[2]] * 2
    assert [p.tpot_vs_first for p in points] == [1.0, pytest.approx(2.0)]


def test_roofline_rows_follow_the_definitions(tiny_model):
    model = str(tiny_model("qwen2", dtype="bfloat16"))
    spec, weight_bytes, kv_tok, elem = model_costs(model)
    assert elem == 2 and kv_tok == 2 * spec.layers * spec.kv_dim * 2
    probe = Probe(read_gb_s_best=10.0, read_gb_s_median=8.0, bf16_gflop_s=100.0, fp32_gflop_s=50.0, threads=2)
    row = decode_row(model, probe, batch=4, context_len=20, step_s=0.01)
    moved = weight_bytes + 4 * 20 * kv_tok
    assert row.bytes_read == moved
    assert row.mbu == pytest.approx(moved / 0.01 / 10e9)
    assert row.mfu == pytest.approx(row.flops / 0.01 / 100e9)
    assert row.tok_per_s == pytest.approx(400.0)
    assert row.bound_ms == pytest.approx(max(moved / 10e9, row.flops / 100e9) * 1e3)
    pre = prefill_row(model, probe, 64, 0.05)
    assert pre.tokens == 64 and pre.mfu == pytest.approx(pre.flops / 0.05 / 100e9)
    assert pre.flops > 64 * 2 * (weight_bytes / 2) * 0.5  # ~2N FLOPs per prompt token


def test_roofline_end_to_end(tiny_model, tmp_path):
    out = tmp_path / "roof.json"
    rc = main(
        [
            "bench",
            "roofline",
            "--model",
            str(tiny_model("qwen2")),
            "--batch-sizes",
            "1,3",
            "--input-len",
            "8",
            "--output-len",
            "5",
            "--prefill-len",
            "32",
            "--save-result",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["probe"]["read_gb_s_best"] > 0 and data["probe"]["bf16_gflop_s"] > 0
    assert [(r["phase"], r["batch"]) for r in data["rows"]] == [("decode", 1), ("decode", 3), ("prefill", 1)]
    assert all(r["measured_ms"] > 0 and r["mbu"] > 0 and r["mfu"] > 0 for r in data["rows"])


def test_linear_bench_reports_every_backend(tmp_path):
    out = tmp_path / "lin.json"
    rc = main(
        [
            "bench",
            "linear",
            "--layers",
            "1",
            "--batch-sizes",
            "1,5",
            "--backends",
            "torch,mkldnn",
            "--repeats",
            "2",
            "--save-result",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())["results"]
    assert [(r["backend"], r["batch"]) for r in res] == [
        ("torch", 1),
        ("torch", 5),
        ("mkldnn", 1),
        ("mkldnn", 5),
    ]
    # 1 layer of Qwen2.5-0.5B + lm_head, bf16
    assert res[0]["weight_bytes"] == 2 * (1152 * 896 + 896 * 896 + 9728 * 896 + 896 * 4864 + 151936 * 896)
    assert all(r["step_ms"] > 0 and r["bandwidth_gb_s"] > 0 for r in res)


def test_bench_cli_rejects_unknown_benchmark(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "nonsense"])
    assert "invalid choice" in capsys.readouterr().err


def test_latency_reports_the_quantization(tiny_model, tmp_path, capsys):
    out = tmp_path / "lat.json"
    rc = main(["bench", "latency", "--model", str(tiny_model("qwen2", dtype="bfloat16")), "--input-lens", "8",
               "--output-len", "3", "--num-iters", "1", "--plot", "", "--quantization", "w8a8",
               "--save-result", str(out)])
    assert rc == 0
    (point,) = json.loads(out.read_text())["points"]
    assert point["weights"]["quantization"] == "w8a8" and point["weights"]["weight_bytes"] > 0
    assert "nanoserve weights: w8a8 decoder linears, bfloat16 rest" in capsys.readouterr().out
