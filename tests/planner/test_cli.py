"""`nanoserve plan`: every topic runs, --json is machine-readable, --plot writes a PNG, bad input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nanoserve.cli import main

CAPSTONE = [
    "plan",
    "plan",
    "--model",
    "llama-3.1-70b",
    "--params",
    "70e9",
    "--gpu",
    "h100",
    "--gpu-mem",
    "80GiB",
    "--price",
    "2.20",
    "--max-batch",
    "32",
]

TOPIC_ARGS = {
    "params": ["--model", "llama-3.1-8b"],
    "memory": ["--model", "qwen2.5-7b", "--context", "8192", "--batch", "4"],
    "weights": ["--model", "gpt2"],
    "kv": ["--model", "llama-3.1-70b", "--context", "4096", "--batch", "8", "--mean-len", "1000"],
    "tp": ["--model", "llama-3.1-70b", "--tp", "8"],
    "pp": ["--pp", "4", "--microbatches", "16"],
    "zero": ["--model", "llama-3.1-70b", "--dp", "64"],
    "fsdp": ["--params", "70e9", "--dp", "64"],
    "3d": ["--model", "llama-3.1-70b", "--gpus", "2048", "--tp", "8", "--pp", "4"],
    "activations": ["--model", "llama-3.1-8b", "--context", "2048"],
    "roofline": ["--m", "4096", "--k", "4096", "--n", "4096"],
    "decode": ["--model", "llama-3.1-70b", "--batch", "32", "--dtype", "int4"],
    "prefill": ["--model", "llama-3.1-70b", "--prompt", "4096"],
    "batching": ["--mean-len", "200", "--max-len", "500"],
    "littles-law": ["--rate", "10", "--latency", "3"],
    "spec": ["--alpha", "0.7", "--spec-k", "5"],
    "quant": ["--params", "70B"],
    "cost": ["--tok-s", "3000", "--gpus", "2", "--price", "3.5", "--spot", "2", "--reserved", "2.2"],
    "training": ["--model", "llama-3.1-70b", "--tokens", "15T", "--gpus", "2048"],
    "chinchilla": ["--compute", "1e22"],
    "plan": ["--model", "llama-3.1-8b", "--users", "1000"],
    "search": ["--model", "llama-3.1-8b", "--request-rate", "20", "--tpot-ms", "50"],
    "capstone": [],
}


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_topic_has_arguments_here():
    from nanoserve.planner.cli import TOPICS

    assert set(TOPICS) == set(TOPIC_ARGS)


@pytest.mark.parametrize("topic", sorted(TOPIC_ARGS))
def test_topic_runs_and_prints_json(capsys, topic):
    doc = _json(capsys, ["plan", topic, *TOPIC_ARGS[topic]])
    assert doc["topic"] == topic and doc["results"]
    for r in doc["results"]:
        assert {"name", "value", "unit", "formula", "substituted"} <= set(r)
        assert isinstance(r["value"], float)


def test_capstone_from_one_command(capsys):
    doc = _json(capsys, CAPSTONE)
    plan = doc["plan"]
    assert plan["required_tok_per_s"] == 90_000
    assert plan["gpus"] == 36 and plan["nodes"] == 5 and plan["requests_per_gpu"] == 32
    assert plan["prefill_s"] == pytest.approx(0.58, abs=1e-3)
    assert plan["monthly_usd"] == pytest.approx(57_024)
    assert plan["usd_per_million_tokens"] == pytest.approx(0.244, abs=5e-4)
    assert plan["binding"] == "max batch"


def test_table_output_shows_derivations(capsys):
    assert main(["plan", "spec"]) == 0
    out = capsys.readouterr().out
    assert "expected tokens per step (exact)" in out and "2.9412" in out
    assert "(1 − 0.7^6) / (1 − 0.7)" in out  # the substituted derivation
    assert main(["plan", "spec", "--brief"]) == 0
    assert "(1 − 0.7^6)" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        CAPSTONE,
        ["plan", "roofline", "--model", "llama-3.1-8b", "--batch", "8"],
        ["plan", "memory", "--model", "llama-3.1-8b", "--context", "4096"],
    ],
)
def test_plot_writes_png(tmp_path, capsys, argv):
    out = tmp_path / "chart.png"
    assert main(argv + ["--plot", str(out), "--brief"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_model_from_config_json(tmp_path, capsys):
    cfg = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "vocab_size": 100,
        "tie_word_embeddings": False,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    doc = _json(capsys, ["plan", "params", "--model", str(path)])
    attn = 64 * 64 + 2 * 64 * 32 + 64 * 64
    expected = 2 * 100 * 64 + 2 * (attn + 3 * 64 * 128 + 2 * 64) + 64
    assert doc["results"][0]["value"] == expected


def test_hardware_from_file(tmp_path, capsys):
    hw = tmp_path / "gpu.json"
    hw.write_text(json.dumps({"base": "h100", "hbm_gb_per_s": 6700}))
    doc = _json(capsys, ["plan", "decode", "--model", "llama-3.1-8b", "--gpu", str(hw)])
    ref = _json(capsys, ["plan", "decode", "--model", "llama-3.1-8b"])
    assert doc["results"][0]["value"] == pytest.approx(2 * ref["results"][0]["value"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "nope"], "unknown topic 'nope'"),
        (["plan", "plan", "--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["plan", "decode", "--model", "llama-3.1-8b", "--gpu", "h999"], "unknown hardware 'h999'"),
        (["plan", "decode"], "needs --model"),
        (["plan", "batching", "--mean-len", "600", "--max-len", "500"], "cannot exceed"),
        (["plan", "littles-law", "--rate", "3"], "exactly two"),
        (["plan", "spec", "--alpha", "1.5"], "alpha"),
        (["plan", "batching", "--mean-len", "1", "--max-len", "2", "--plot", "x.png"], "nothing to plot"),
        (
            ["plan", "cost", "--fleet", "a:1", "--requests-per-s", "9", "--output-tokens", "9"],
            "--fleet wants",
        ),
    ],
)
def test_errors_exit_2_without_traceback(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_number_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "plan", "--model", "llama-3.1-70b", "--users", "ten"])
    assert e.value.code == 2
    assert "not a number: 'ten'" in capsys.readouterr().err


def test_plan_cli_does_not_import_torch():
    code = (
        "import sys; from nanoserve.cli import main; main(['plan', 'plan', '--model', 'llama-3.1-8b', "
        "'--json']); assert 'torch' not in sys.modules, 'torch imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plan"]["gpus"] >= 1


def _value(doc: dict, name: str) -> float:
    return next(r["value"] for r in doc["results"] if r["name"] == name)


def test_decode_moe_batch_reads_the_experts_it_touches(capsys):
    # Mixtral batch 64 touches all 8 experts: 46.7B params read per step, not the 12.9B active
    # (before #15: 8,323 tok/s, 3.6x too fast)
    doc = _json(capsys, ["plan", "decode", "--model", "mixtral-8x7b", "--batch", "64"])
    total = 46_702_792_704
    assert _value(doc, "decode throughput") == pytest.approx(64 * 3.35e12 / (2 * total), rel=1e-4)


def test_decode_and_quant_agree_on_mixtral_batch_1(capsys):
    dec = _value(_json(capsys, ["plan", "decode", "--model", "mixtral-8x7b"]), "decode throughput")
    q = _json(capsys, ["plan", "quant", "--model", "mixtral-8x7b", "--dtypes", "bf16"])
    assert _value(q, "decode speed (bf16)") == pytest.approx(dec)
    assert _value(q, "GPUs for weights (bf16)") == 2  # the GPUs still hold every expert


def test_decode_tp_splits_weights_and_pays_allreduce_latency(capsys):
    doc = _json(capsys, ["plan", "decode", "--model", "llama-3.1-70b", "--tp", "8"])
    step = 1 / _value(doc, "decode throughput")
    weights_s = 70_553_706_496 * 2 / 8 / 3.35e12  # 5.27 ms: the seed's bandwidth-only figure
    beta_s = 2 * 7 / 8 * 8192 * 2 / 450e9  # 64 ns: a 16 KB message is all latency
    assert step == pytest.approx(weights_s + 160 * (8e-6 + beta_s), rel=1e-6)  # 6.56 ms
    argv = ["plan", "decode", "--model", "llama-3.1-70b", "--tp", "8", "--allreduce-latency-us", "0"]
    assert 1 / _value(_json(capsys, argv), "decode throughput") == pytest.approx(weights_s + 160 * beta_s)
    assert main(["plan", "decode", "--model", "llama-3.1-70b", "--tp", "16"]) == 2


def test_prefill_counts_attention_and_tp_allreduces(capsys):
    doc = _json(capsys, ["plan", "prefill", "--model", "llama-3.1-70b", "--prompt", "4096"])
    n, attn, peak = 70_553_706_496, 4 * 80 * 8192 * 4097 / 2, 989e12
    assert _value(doc, "prefill time") == pytest.approx(4096 * (2 * n + attn) / peak)
    assert _value(doc, "prefill time (2N only)") == pytest.approx(4096 * 2 * n / peak)
    doc = _json(capsys, ["plan", "prefill", "--model", "llama-3.1-70b", "--prompt", "4096", "--tp", "8"])
    comm = 160 * (8e-6 + 2 * 7 / 8 * 4096 * 8192 * 2 / 450e9)
    total = 4096 * (2 * n + attn) / (8 * peak) + comm
    assert _value(doc, "prefill time with all-reduces") == pytest.approx(total)
    assert _value(doc, "TTFT") == pytest.approx(total)
