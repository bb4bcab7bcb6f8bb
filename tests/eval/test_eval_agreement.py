"""`nanoserve eval agreement`: the metric math, method parsing, the logits capture, and one tiny-model run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nanoserve.cli import main
from nanoserve.eval import agreement as ag


def test_kl_of_identical_distributions_is_zero_and_top1_agrees():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    kl, same = ag.compare_rows(logits, logits.clone())
    assert torch.all(kl.abs() < 1e-12) and bool(same.all())
    kl, _ = ag.compare_rows(logits, logits + 3.0)  # a constant shift is the same distribution
    assert torch.all(kl.abs() < 1e-12)


def test_kl_matches_a_hand_computed_example():
    p, q = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25]
    kl, same = ag.compare_rows(torch.tensor([p]).log(), torch.tensor([q]).log())
    expected = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5)  # = 0.25 ln 2
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    assert not bool(same[0])  # argmax 0 vs 1
    kl_rev, _ = ag.compare_rows(torch.tensor([q]).log(), torch.tensor([p]).log())
    assert kl_rev.item() == pytest.approx(0.25 * math.log(2.0), rel=1e-6)  # symmetric here by design


def test_method_overrides():
    assert ag.method_overrides("int8") == {"quantization": "int8"}
    assert ag.method_overrides("none") == {}
    assert ag.reference_overrides()["quantization"] is None
    names = {f.name for f in __import__("dataclasses").fields(ag.EngineArgs)}
    if "kv_cache_dtype" in names:
        assert ag.method_overrides("w8a8+kv:int8") == {"quantization": "w8a8", "kv_cache_dtype": "int8"}
    else:
        with pytest.raises(ValueError, match="kv_cache_dtype"):
            ag.method_overrides("kv:int8")


def test_prompt_sources():
    ps = ag.random_prompts(20, 3, 7, seed=1, avoid={0, 1, 2})
    assert len(ps) == 3 and all(len(p) == 7 for p in ps)
    assert all(3 <= t < 20 for p in ps for t in p)
    assert ps == ag.random_prompts(20, 3, 7, seed=1, avoid={0, 1, 2})  # fixed prompts
    assert ag.corpus_prompts(list(range(10)), 5, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_captured_logits_are_the_engines_prompt_logprobs(tiny_llama):
    """The captured rows, log-softmaxed, give the engine's own prompt logprobs; the capture is undone."""
    from nanoserve import LLM, SamplingParams

    llm = LLM(model=str(tiny_llama), dtype="float32", kv_cache_memory_bytes=1 << 20,
              enable_prefix_caching=False, max_num_batched_tokens=8)  # chunked prefill: 3 steps
    prompt = [5, 9, 11, 3, 7, 8, 13, 21, 4, 6, 12, 10, 15, 17, 19, 20, 22, 23, 24, 25]
    rows = ag.prompt_logits(llm, prompt)
    assert rows.shape == (len(prompt), llm.llm_engine.model_config.vocab_size)
    assert "compute_logits" not in vars(llm.llm_engine.runner.model)
    out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(prompt_logprobs=0, max_tokens=1),
                       use_tqdm=False)[0]
    lp = torch.log_softmax(rows, dim=-1)
    for i in range(1, len(prompt)):
        assert lp[i - 1, prompt[i]].item() == pytest.approx(out.prompt_logprobs[i][prompt[i]], abs=1e-4)


def test_eval_agreement_on_a_tiny_model(tiny_llama, capsys):
    argv = ["eval", "agreement", "--model", str(tiny_llama), "--dtype", "float32", "--methods",
            "none,int8,int4", "--prompts", "random", "--num-prompts", "2", "--prompt-len", "12",
            "--num-cpu-threads", "1", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    res = {r["method"]: r for r in data["results"]}
    assert data["prompts"] == "random" and set(res) == {"none", "int8", "int4"}
    assert all(r["positions"] == 24 and r["prompts"] == 2 for r in res.values())
    assert res["none"]["top1_agreement"] == 1.0 and res["none"]["mean_kl_nats"] < 1e-9  # ref vs itself
    assert 0 < res["int8"]["mean_kl_nats"] < res["int4"]["mean_kl_nats"]  # 4 bits lose more than 8
    assert res["int8"]["top1_agreement"] >= 0.5
