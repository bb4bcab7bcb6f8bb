"""Offline throughput and the step profiler, end to end on a tiny model (no timing thresholds)."""

import json

import pytest

from nanoserve.bench.profile import PHASES
from nanoserve.cli import main


def test_throughput_all_backends_write_complete_result(tiny_model, tmp_path, capsys):
    model = tiny_model("qwen2")
    out = tmp_path / "tp.json"
    rc = main(
        [
            "bench",
            "throughput",
            "--model",
            str(model),
            "--backend",
            "nanoserve,hf,hf-batched",
            "--num-prompts",
            "5",
            "--input-len",
            "12",
            "--output-len",
            "6",
            "--range-ratio",
            "0.5",
            "--hf-batch-size",
            "2",
            "--profile",
            "--save-result",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    results = {r["backend"]: r for r in data["results"]}
    assert set(results) == {"nanoserve", "hf", "hf-batched"}
    requested = None
    for r in results.values():
        assert r["num_requests"] == 5 and r["elapsed_s"] > 0
        assert r["output_tok_per_s"] > 0 and r["total_tok_per_s"] > r["output_tok_per_s"]
        # ignore_eos: every backend returns exactly the tokens that were asked for, the same count
        requested = requested or r["output_tokens"]
        assert r["output_tokens"] == requested
        assert r["requests_per_s"] == r["num_requests"] / r["elapsed_s"]
    assert 3 * 5 <= requested <= 9 * 5
    assert set(data["ratios"]) == {"nanoserve/hf", "nanoserve/hf-batched"}
    profile = {p["label"]: p for p in data["profile"]}
    assert "all steps" in profile and "decode-only steps" in profile
    allp = profile["all steps"]
    assert allp["num_steps"] >= 5  # at least output_len - 1 decode steps
    assert set(PHASES) <= set(allp["mean_ms"])
    assert allp["mean_ms"]["forward"] > 0 and allp["mean_ms"]["sample"] > 0
    assert abs(sum(allp["share"][p] for p in PHASES) - 1.0) < 1e-6
    text = capsys.readouterr().out
    assert "nanoserve/hf (output tok/s)" in text and "engine step profile" in text


def test_profiler_detach_restores_engine(tiny_model):
    from nanoserve import LLM, SamplingParams
    from nanoserve.bench.profile import StepProfiler

    llm = LLM(model=str(tiny_model("llama")), kv_cache_memory_bytes=1 << 22)
    engine = llm.llm_engine
    fused_before = engine.runner.model.model.fused_decode
    prof = StepProfiler().attach(engine)
    assert "step" in vars(engine)
    outs = llm.generate(
        [{"prompt_token_ids": [5, 6, 7, 8]}, {"prompt_token_ids": [9, 10, 11]}],
        SamplingParams(max_tokens=4, ignore_eos=True),
        use_tqdm=False,
    )
    prof.detach()
    assert all(len(o.outputs[0].token_ids) == 4 for o in outs)
    assert "step" not in vars(engine) and "schedule" not in vars(engine.scheduler)
    assert "forward" not in vars(engine.runner.model)
    n = len(prof.records)
    assert n == 4  # one prefill step for both, then 3 decode steps
    rec = prof.records[0]
    assert rec.num_seqs == 2 and rec.num_prefill_seqs == 2 and rec.num_tokens == 7
    # fp32 decode rows (and prompts of at most DECODE_ROWS_MAX_CONTEXT tokens) take the fused native
    # step, timed whole under "fused"; the op-by-op path is split into linear and attention
    assert fused_before is not None and engine.runner.model.model.fused_decode is fused_before
    assert all(r.times_s.get("fused", 0) > 0 for r in prof.records)
    assert all(r.times_s["forward"] <= r.total_s for r in prof.records)
    llm.generate([{"prompt_token_ids": [5, 6]}], SamplingParams(max_tokens=2), use_tqdm=False)
    assert len(prof.records) == n  # detached: nothing more recorded


def test_profiler_splits_the_op_by_op_forward(tiny_model):
    from nanoserve import LLM, SamplingParams
    from nanoserve.bench.profile import StepProfiler, summarize_records

    llm = LLM(model=str(tiny_model("llama")), kv_cache_memory_bytes=1 << 22)
    engine = llm.llm_engine
    engine.runner.model.model.fused_decode = None  # every step op by op
    prof = StepProfiler().attach(engine)
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    llm.generate([{"prompt_token_ids": [5, 6, 7, 8]}], params, use_tqdm=False)
    prof.detach()
    assert len(prof.records) == 3
    assert all(r.times_s.get("linear", 0) > 0 and r.times_s.get("attention", 0) > 0 for r in prof.records)
    assert all("fused" not in r.times_s for r in prof.records)
    s = summarize_records("all", prof.records)
    parts = s.mean_ms["linear"] + s.mean_ms["attention"] + s.mean_ms["other"]
    assert abs(parts - s.mean_ms["forward"]) < 1e-6  # the split adds up to the forward pass


def test_cpu_linear_choice_reaches_the_engine(tiny_model, tmp_path):
    model = tiny_model("qwen2", dtype="bfloat16")
    paths = {}
    for choice in ("torch", "auto"):
        out = tmp_path / f"{choice}.json"
        rc = main(
            [
                "bench",
                "throughput",
                "--model",
                str(model),
                "--backend",
                "nanoserve",
                "--num-prompts",
                "2",
                "--input-len",
                "6",
                "--output-len",
                "3",
                "--cpu-linear",
                choice,
                "--save-result",
                str(out),
            ]
        )
        assert rc == 0
        res = json.loads(out.read_text())["results"][0]
        assert res["output_tokens"] == 6
        paths[choice] = res["extra"]["linear_paths"]
    assert paths["torch"] == {"torch": sum(paths["torch"].values())} and sum(paths["torch"].values()) >= 3
    assert sum(paths["auto"].values()) == sum(paths["torch"].values())


def test_quantization_reaches_the_engine_and_the_report(tiny_model, tmp_path, capsys):
    model = tiny_model("qwen2", dtype="bfloat16")
    weights = {}
    for method in (None, "int4"):
        out = tmp_path / f"{method}.json"
        flags = ["--quantization", method] if method else []
        rc = main(["bench", "throughput", "--model", str(model), "--backend", "nanoserve",
                   "--num-prompts", "2", "--input-len", "6", "--output-len", "3", *flags,
                   "--save-result", str(out)])
        assert rc == 0
        extra = json.loads(out.read_text())["results"][0]["extra"]
        assert extra["quantization"] == method and extra["dtype"] == "bfloat16"
        weights[method] = extra["weight_bytes"]
    assert weights["int4"] < weights[None]
    printed = capsys.readouterr().out
    assert "nanoserve weights: int4 decoder linears, bfloat16 rest" in printed
    assert "nanoserve weights: bfloat16," in printed


def test_bench_takes_a_named_model_like_serve_does(tmp_path, monkeypatch):
    """`nanoserve fetch smollm2` then `bench throughput --model smollm2`: the name is the cached folder."""
    from nanoserve.bench.models import resolve_model
    from nanoserve.errors import ModelLoadError

    monkeypatch.setenv("NANOSERVE_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="nanoserve fetch"):
        resolve_model("smollm2", None)
    folder = tmp_path / "models" / "smollm2-135m-instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert resolve_model("smollm2", None) == str(folder)


def test_speculative_config_compares_on_and_off_on_the_same_requests(tiny_model, capsys):
    # per-request output lengths (a list of SamplingParams) reach the on/off comparison intact
    rc = main(["bench", "throughput", "--model", str(tiny_model("llama")), "--backend", "nanoserve",
               "--num-prompts", "4", "--input-len", "12", "--output-len", "6",
               "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}'])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "speculative decoding: measured vs planner" in printed
    row = next(line for line in printed.splitlines() if line.startswith("throughput") and "ngram" in line)
    assert row.split()[-1] == "yes"  # the same output with speculation on and off
