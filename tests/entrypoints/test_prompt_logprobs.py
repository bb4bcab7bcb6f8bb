"""prompt_logprobs through LLM: every prompt token's log-probability given its prefix equals
transformers' log_softmax of the same checkpoint, whole, chunked over steps, after a prefix-cache
hit could have skipped positions, and with n > 1."""

from __future__ import annotations

import math

import pytest
import torch

from nanoserve import LLM, SamplingParams

PROMPT = "The quick brown fox jumps over the lazy dog, 0123456789 times!"
TOL = 1e-4


@pytest.fixture(scope="module")
def reference(tiny_llama):
    """(prompt ids, [P, vocab] log-probabilities of each next token) from transformers, in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_llama)(PROMPT).input_ids
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()  # [P, vocab]
    return ids, torch.log_softmax(logits, dim=-1)


def _check(prompt_logprobs, ids, ref, num_top: int) -> None:
    assert len(prompt_logprobs) == len(ids)
    assert prompt_logprobs[0] is None
    for i in range(1, len(ids)):
        entry = prompt_logprobs[i]
        row = ref[i - 1]  # the logits at position i - 1 score token i
        assert math.isclose(entry[ids[i]], row[ids[i]].item(), abs_tol=TOL), i
        top_vals, top_ids = row.topk(num_top)
        listed = list(entry.items())[:num_top]
        assert [t for t, _ in listed] == top_ids.tolist(), i
        for (_, v), r in zip(listed, top_vals.tolist(), strict=True):
            assert math.isclose(v, r, abs_tol=TOL), i
        assert len(entry) in (num_top, num_top + 1)  # the prompt token is added when not in the top-N


def _llm(path, **kwargs) -> LLM:
    return LLM(str(path), dtype="float32", num_gpu_blocks_override=64, **kwargs)


def test_prompt_logprobs_equal_transformers(tiny_llama, reference):
    ids, ref = reference
    llm = _llm(tiny_llama)
    params = SamplingParams(max_tokens=2, prompt_logprobs=3, temperature=0)
    out = llm.generate(PROMPT, params, use_tqdm=False)[0]
    assert out.prompt_token_ids == ids
    _check(out.prompt_logprobs, ids, ref, 3)
    # Without the field nothing is computed.
    plain = llm.generate(PROMPT, SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)[0]
    assert plain.prompt_logprobs is None
    assert plain.outputs[0].token_ids == out.outputs[0].token_ids
    llm.llm_engine.check_all_blocks_free()


def test_prompt_logprobs_over_chunked_prefill_and_after_a_cached_prefix(tiny_llama, reference):
    ids, ref = reference
    # 16 tokens a step: the prompt's positions arrive over four steps.
    llm = _llm(tiny_llama, max_num_batched_tokens=16, max_num_seqs=4, block_size=16,
               enable_chunked_prefill=True, enable_prefix_caching=True)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0)
    first = llm.generate(PROMPT, params, use_tqdm=False)[0]
    _check(first.prompt_logprobs, ids, ref, 0)
    # The prompt's full blocks are cached now; a second request must still score every position.
    hits_before = llm.llm_engine.get_stats().prefix_cache_hits
    again = llm.generate(PROMPT, SamplingParams(max_tokens=1, prompt_logprobs=2), use_tqdm=False)[0]
    _check(again.prompt_logprobs, ids, ref, 2)
    assert llm.llm_engine.get_stats().prefix_cache_hits == hits_before
    # A request without prompt_logprobs still hits the cache.
    llm.generate(PROMPT, SamplingParams(max_tokens=1), use_tqdm=False)
    assert llm.llm_engine.get_stats().prefix_cache_hits > hits_before
    # Batched with other prompts, in one step with them.
    outs = llm.generate(["abc", PROMPT, "hello"], [SamplingParams(max_tokens=3), params,
                                                     SamplingParams(max_tokens=3, prompt_logprobs=1)],
                        use_tqdm=False)
    _check(outs[1].prompt_logprobs, ids, ref, 0)
    assert outs[0].prompt_logprobs is None and len(outs[2].prompt_logprobs) == 5
    one = llm.generate("a", SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    assert one.prompt_logprobs == [None]
    llm.llm_engine.check_all_blocks_free()


def test_prompt_logprobs_with_n_and_preemption(tiny_llama, reference):
    ids, ref = reference
    # A pool of 12 blocks of 8 tokens: four 65-token sequences cannot all run, so some are preempted
    # and recomputed; the prompt's logprobs must still come out once each, unchanged.
    llm = LLM(str(tiny_llama), dtype="float32", num_gpu_blocks_override=12, block_size=8,
              max_num_batched_tokens=32)
    params = SamplingParams(n=3, max_tokens=20, ignore_eos=True, prompt_logprobs=1, temperature=1.0, seed=7)
    out = llm.generate(PROMPT, params, use_tqdm=False)[0]
    assert len(out.outputs) == 3
    assert llm.llm_engine.get_stats().num_preemptions > 0
    _check(out.prompt_logprobs, ids, ref, 1)
    llm.llm_engine.check_all_blocks_free()
