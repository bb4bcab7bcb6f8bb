"""`nanoserve generate` on a tiny checkpoint."""

from __future__ import annotations

import json

from nanoserve.cli import main


def test_generate_prints_one_json_line_per_prompt(tiny_llama, capsys):
    rc = main(
        [
            "generate",
            "abc",
            "hello",
            "--model",
            str(tiny_llama),
            "--max-tokens",
            "3",
            "--ignore-eos",
            "--json",
            "--kv-cache-memory-bytes",
            str(1 << 20),
            "--num-cpu-threads",
            "1",
        ]
    )
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == ["abc", "hello"]
    assert all(len(line["completions"][0]["token_ids"]) == 3 for line in lines)
    assert all(line["completions"][0]["finish_reason"] == "length" for line in lines)


def test_generate_chat_and_n(tiny_llama, capsys):
    rc = main(
        [
            "generate",
            "hi",
            "--model",
            str(tiny_llama),
            "--chat",
            "-n",
            "2",
            "--temperature",
            "1.0",
            "--seed",
            "3",
            "--max-tokens",
            "4",
            "--kv-cache-memory-bytes",
            str(1 << 20),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "'hi' ->" in out and "[1]" in out  # the user's text, not the rendered template
    rc = main(["generate", "hi", "--model", str(tiny_llama), "--chat", "--json", "--max-tokens", "2",
               "--kv-cache-memory-bytes", str(1 << 20)])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and line["prompt"] == "hi" and line["rendered_prompt"] == "<user>hi\n<assistant>"


def test_generate_reports_a_bad_model_dir(tmp_path, capsys):
    assert main(["generate", "x", "--model", str(tmp_path)]) == 1
    assert "no config.json" in capsys.readouterr().err
