"""`bench spec --model CHAT_MODEL --prompt-set quote|open`: prompt sets, chat rendering, end to end."""

from __future__ import annotations

import json

import pytest

from nanoserve.bench import spec as spec_bench
from nanoserve.bench.spec_analysis import first_differences
from nanoserve.bench.spec_prompts import MISSPELT, PASSAGES, prompt_set, render_chat_prompts
from nanoserve.cli import main
from nanoserve.errors import InvalidRequestError


def test_prompt_sets_load():
    quote, open_ = prompt_set("quote"), prompt_set("open")
    assert len(quote) == 12 and len(open_) >= 4
    assert all(30 <= len(p.split()) <= 80 for p in PASSAGES + MISSPELT)
    # Every quote prompt carries the text its answer repeats.
    assert sum(p.startswith("Repeat this text exactly") for p in quote) == 3
    assert all("reverse order" in p for p in quote[6:9]) and all("```python" in p for p in quote[9:])
    with pytest.raises(ValueError, match="unknown prompt set"):
        prompt_set("nope")


def test_prompt_sets_render_through_the_chat_template(tiny_llama):
    prompts = render_chat_prompts(str(tiny_llama), prompt_set("quote"))
    assert len(prompts) == 12
    first = prompts[0]
    # tests/tiny_models.py's template: "<user>" + content + "\n" then the generation prompt.
    assert first["prompt"] == f"<user>{prompt_set('quote')[0]}\n<assistant>"
    # One token a character, no BOS added on top of the template.
    assert len(first["prompt_token_ids"]) == len(first["prompt"])


def test_render_without_a_chat_template_is_refused(tiny_model):
    with pytest.raises(InvalidRequestError, match="no chat template"):
        render_chat_prompts(str(tiny_model("llama", chat_template=None)), ["hi"])


def _run(model, tmp_path, *extra):
    out, md = tmp_path / "spec.json", tmp_path / "spec.md"
    rc = main(["bench", "spec", "--model", str(model), "--prompt-set", "quote", "--methods", "ngram",
               "--ks", "1,2", "--num-prompts", "3", "--output-len", "12", "--save-result", str(out),
               "--markdown", str(md), *extra])
    return rc, out, md


def test_bench_spec_quote_end_to_end(tiny_llama, tmp_path, capsys):
    rc, out, md = _run(tiny_llama, tmp_path)
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["prompt_set"] == "quote" and res["greedy_mismatches"] == []
    rows = res["results"]
    assert [(r["label"], r["method"], r["k"]) for r in rows] == [("quote", "ngram", 1), ("quote", "ngram", 2)]
    assert all(r["identical"] is True for r in rows)
    assert all(r["off_tok_s"] > 0 and r["on_tok_s"] > 0 and r["predicted"] > 0 for r in rows)
    table = md.read_text()
    assert "| quote | ngram | 1 |" in table and "| quote | ngram | 2 |" in table
    assert table.count("| yes |") == 2
    assert "ERROR" not in capsys.readouterr().out


def test_bench_spec_reports_a_greedy_mismatch_as_an_error(tiny_llama, tmp_path, capsys, monkeypatch):
    real_measure = spec_bench.measure_run
    calls = []

    def one_token_off(llm, prompts, params):  # k=1 off, k=1 on, k=2 off, k=2 on: break the last
        measure, ids = real_measure(llm, prompts, params)
        calls.append(1)
        if len(calls) == 4:
            ids[1] = ids[1][:3] + [ids[1][3] + 1] + ids[1][4:]
        return measure, ids

    monkeypatch.setattr(spec_bench, "measure_run", one_token_off)
    rc, out, md = _run(tiny_llama, tmp_path)
    assert rc == 1
    res = json.loads(out.read_text())
    assert res["greedy_mismatches"] == ["quote ngram k=2"]
    k1, k2 = res["results"]
    assert k1["identical"] is True and k1["mismatches"] == []
    assert k2["identical"] is False and k2["mismatches"] == [[1, 3, 12]]  # prompt 1, token 3 of 12
    text = capsys.readouterr().out
    assert "ERROR: quote ngram k=2: greedy output differs on/off for 1/3 prompts" in text
    assert "ERROR: greedy outputs differ" in text
    assert "| NO (1) |" in md.read_text()


def test_first_differences():
    assert first_differences([[1, 2, 3], [4, 5], [6]], [[1, 2, 3], [4, 7], [6, 8]]) == [[1, 1, 2], [2, 1, 1]]


def test_prompt_set_with_random_model_is_refused(capsys):
    assert main(["bench", "spec", "--random-model", "qwen2.5-0.5b", "--prompt-set", "open"]) == 2
    assert "needs a chat --model" in capsys.readouterr().out


def test_repeats_alternate_the_order_keep_each_sides_fastest_and_catch_a_late_mismatch(
        tiny_llama, tmp_path, capsys, monkeypatch):
    real_measure = spec_bench.measure_run
    order, elapsed = [], iter([5.0, 4.0, 3.0, 2.0, 1.0, 6.0])  # rounds: (off, on), (on, off), (off, on)

    def scripted(llm, prompts, params):
        measure, ids = real_measure(llm, prompts, params)
        side = "on" if llm.llm_engine.speculative_config else "off"
        order.append(side)
        measure.elapsed_s = next(elapsed)
        if len(order) == 6:  # round 3's "on" run differs
            ids[0] = ids[0][:2] + [ids[0][2] + 1] + ids[0][3:]
        return measure, ids

    monkeypatch.setattr(spec_bench, "measure_run", scripted)
    rc, out, md = _run(tiny_llama, tmp_path, "--ks", "1", "--repeats", "3")
    assert order == ["off", "on", "on", "off", "off", "on"]
    assert rc == 1
    (row,) = json.loads(out.read_text())["results"]
    assert row["identical"] is False and row["mismatches"] == [[0, 2, 12]]
    tokens = row["off_tok_s"] * 1.0  # off's fastest round took 1 s, on's 3 s, over the same tokens
    assert tokens > 0 and row["on_tok_s"] * 3.0 == pytest.approx(tokens)
