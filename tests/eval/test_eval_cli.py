"""`nanoserve eval perplexity` on a tiny checkpoint."""

from __future__ import annotations

import json
import math

from nanoserve.cli import main


def _argv(model, *extra: str) -> list[str]:
    return ["eval", "perplexity", "--model", str(model), "--max-tokens", "100", "--context", "32",
            "--dtype", "float32", "--kv-cache-memory-bytes", str(1 << 20), "--num-cpu-threads", "1",
            "--no-progress", *extra]


def test_eval_perplexity_json(tiny_llama, capsys):
    assert main(_argv(tiny_llama, "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    # windows [0,32) [32,64) [64,96) [96,100): 31 + 31 + 31 + 3 tokens scored
    assert out["windows"] == 4 and out["tokens_scored"] == 96 and out["text_tokens"] == 100
    assert out["perplexity"] == math.exp(out["mean_nll"]) > 1.0
    assert out["corpus"]["name"] == "pydoc_data.topics" and out["corpus"]["python_version"]
    assert out["engine"]["dtype"] == "float32" and out["engine"]["model"] == str(tiny_llama)


def test_eval_perplexity_text_and_stride(tiny_llama, capsys):
    assert main(_argv(tiny_llama, "--stride", "16")) == 0
    text = capsys.readouterr().out
    assert "perplexity = exp(" in text and "99 tokens" in text  # overlapping: every token but the first


def test_eval_perplexity_bad_stride_is_an_error(tiny_llama, capsys):
    assert main(_argv(tiny_llama, "--stride", "64")) == 1
    assert "stride" in capsys.readouterr().err


def test_eval_perplexity_takes_the_quantization_flag(tiny_llama, capsys):
    assert main(_argv(tiny_llama, "--json")) == 0
    ref = json.loads(capsys.readouterr().out)
    assert main(_argv(tiny_llama, "--json", "--quantization", "int4")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["engine"]["quantization"] == "int4" and ref["engine"]["quantization"] is None
    assert out["perplexity"] != ref["perplexity"]  # the quantized weights really served the windows
