"""Sampled output follows the distribution of speculation off: the joint law of the first three generated
tokens at temperature 1 (and with top-p 0.9), spec on vs off, by a chi-square test of homogeneity at
alpha = 0.001, on a tiny random model with a small vocabulary (so thousands of samples are quick).

The first token comes from the prefill; with max_tokens 4 the second and third are verified drafts
(two per sequence), so acceptance, rejection-resampling and the bonus draw all shape the law tested.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

from nanoserve.sampling_params import SamplingParams

NUM_SAMPLES = 3000
Z_999 = 3.0902  # standard normal quantile 0.999


def _critical(df: int) -> float:
    """Chi-square quantile 0.999 (Wilson-Hilferty; within 1% for df >= 3)."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + Z_999 * math.sqrt(h)) ** 3


def _chi_square(a: Counter, b: Counter, min_pooled: int = 10) -> tuple[float, int]:
    """Homogeneity statistic of two equal-size samples over categories, rare ones lumped together."""
    keys = [k for k in a.keys() | b.keys() if a[k] + b[k] >= min_pooled]
    rows = [(a[k], b[k]) for k in keys]
    rest = (sum(a.values()) - sum(x for x, _ in rows), sum(b.values()) - sum(y for _, y in rows))
    if sum(rest) > 0:
        rows.append(rest)
    stat = 0.0
    na, nb = sum(a.values()), sum(b.values())
    for x, y in rows:
        total = x + y
        for obs, n in ((x, na), (y, nb)):
            expected = total * n / (na + nb)
            stat += (obs - expected) ** 2 / expected
    return stat, len(rows) - 1


def _sample(llm, params: SamplingParams, prompt: list[int]) -> Counter:
    outs = llm.generate([{"prompt_token_ids": prompt}] * NUM_SAMPLES, params, use_tqdm=False)
    return Counter(tuple(o.outputs[0].token_ids[:3]) for o in outs)


@pytest.fixture(scope="module")
def models(tiny_model):
    """(target, draft, prompt). A larger init makes peaked distributions, so drafts are often accepted
    and often rejected; the draft is the target itself (its argmax, a point mass, is right often but
    not always). The prompt is the target's own greedy continuation of a few tokens, so the n-gram
    lookup finds the patterns the model repeats."""
    from nanoserve import LLM

    target = tiny_model("llama", init_std=0.5)
    llm = LLM(str(target), num_gpu_blocks_override=64)
    start = list(range(10, 20))
    out = llm.generate([{"prompt_token_ids": start}], SamplingParams(temperature=0, max_tokens=40,
                                                                     ignore_eos=True), use_tqdm=False)
    return target, target, start + out[0].outputs[0].token_ids


@pytest.fixture(scope="module")
def reference(models):
    """Speculation-off samples by top_p, drawn once for the module."""
    from nanoserve import LLM

    target, _, prompt = models
    llm = LLM(str(target), num_gpu_blocks_override=1024, max_num_seqs=256, seed=1)
    return {p: _sample(llm, SamplingParams(temperature=1.0, top_p=p, max_tokens=4, ignore_eos=True), prompt)
            for p in (1.0, 0.9)}


@pytest.mark.parametrize("top_p", [1.0, 0.9])
@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_joint_law_of_the_first_three_tokens(models, reference, top_p, method):
    from nanoserve import LLM

    target, draft_dir, prompt = models
    spec = {"method": method, "num_speculative_tokens": 3, "disable_by_batch_size": None}
    if method == "draft_model":
        spec["model"] = str(draft_dir)
    params = SamplingParams(temperature=1.0, top_p=top_p, max_tokens=4, ignore_eos=True)
    engine = dict(num_gpu_blocks_override=1024, max_num_seqs=256, seed=1)
    off = reference[top_p]
    on_llm = LLM(str(target), speculative_config=spec, **engine)
    on = _sample(on_llm, params, prompt)
    c = on_llm.llm_engine.spec_counters
    # Both branches of the rejection sampler ran many times.
    assert c.num_draft_tokens >= NUM_SAMPLES and 0.1 < c.acceptance_rate < 0.9, c
    stat, df = _chi_square(off, on)
    assert df >= 10, "too few categories to test anything"
    assert stat < _critical(df), f"chi-square {stat:.1f} over {df} degrees of freedom"
    on_llm.llm_engine.check_all_blocks_free()


def test_the_test_sees_a_wrong_law(models, reference):
    """The same statistic rejects a verification that skips the rejection step (accepts every draft)."""
    from nanoserve import LLM
    from nanoserve.engine.spec_decode import verifier
    from nanoserve.engine.spec_decode.rejection_sampler import Verdict

    target, _, prompt = models
    params = SamplingParams(temperature=1.0, max_tokens=4, ignore_eos=True)
    engine = dict(num_gpu_blocks_override=1024, max_num_seqs=256, seed=1)
    off = reference[1.0]
    mp = pytest.MonkeyPatch()
    mp.setattr(verifier, "verify_sampled", lambda probs, d, q, g: Verdict(list(d) + [0], len(d)))
    try:
        bad = _sample(LLM(str(target), speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                                                  "disable_by_batch_size": None},
                          **engine), params, prompt)
    finally:
        mp.undo()
    stat, df = _chi_square(off, bad)
    assert stat > _critical(df)
