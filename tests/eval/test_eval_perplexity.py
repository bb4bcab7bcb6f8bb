"""Perplexity through the engine's prompt logprobs equals transformers' over the same windows.

The reference is Hugging Face's perplexity guide written out: per window, the model's own
cross-entropy loss with the already-scored tokens masked (-100), weighted by the tokens it scores.
"""

from __future__ import annotations

import math

import pytest
import torch

from nanoserve import LLM
from nanoserve.eval.corpus import load_corpus
from nanoserve.eval.perplexity import perplexity

REL_TOL = 1e-4
TEXT_TOKENS = 300
CONTEXT = 64


def hf_guide_perplexity(model, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """(perplexity, tokens scored) as the HF guide computes it with labels and the model's own loss."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        trg_len = end - prev_end
        input_ids = torch.tensor([ids[begin:end]])
        target = input_ids.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target).loss
        num_valid = int((target[:, 1:] != -100).sum())  # the model shifts labels left by one
        nll_sum += loss.item() * num_valid
        n_tokens += num_valid
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll_sum / n_tokens), n_tokens


@pytest.fixture(scope="module")
def hf_model(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(str(tiny_llama), dtype="float32", kv_cache_memory_bytes=1 << 22, num_cpu_threads=1)


@pytest.fixture(scope="module")
def token_ids(llm):
    return load_corpus(llm.get_tokenizer(), TEXT_TOKENS).token_ids


@pytest.mark.parametrize("stride", [None, 24])
def test_perplexity_equals_transformers(llm, hf_model, token_ids, stride):
    assert len(token_ids) == TEXT_TOKENS
    ours = perplexity(llm, token_ids, CONTEXT, stride)
    ref, ref_tokens = hf_guide_perplexity(hf_model, token_ids, CONTEXT, stride or CONTEXT)
    assert ours.tokens_scored == ref_tokens
    assert ours.perplexity == pytest.approx(ref, rel=REL_TOL)
    assert ours.perplexity == pytest.approx(math.exp(ours.total_nll / ours.tokens_scored))
    # A random model is far from uniform over the vocabulary, but not near-perfect either.
    assert 1.0 < ours.perplexity
    llm.llm_engine.check_all_blocks_free()


def test_chunked_prefill_changes_nothing(tiny_llama, llm, token_ids):
    whole = perplexity(llm, token_ids, CONTEXT)
    chunked_llm = LLM(str(tiny_llama), dtype="float32", kv_cache_memory_bytes=1 << 22, num_cpu_threads=1,
                      max_num_batched_tokens=16, max_num_seqs=2)
    chunked = perplexity(chunked_llm, token_ids, CONTEXT)
    assert chunked.tokens_scored == whole.tokens_scored
    assert chunked.perplexity == pytest.approx(whole.perplexity, rel=REL_TOL)


def test_corpus_is_deterministic_and_bounded(llm):
    a = load_corpus(llm.get_tokenizer(), 50)
    b = load_corpus(llm.get_tokenizer(), 50)
    assert a == b and len(a.token_ids) == 50
    assert a.text_chars > 100_000  # pydoc's topics: hundreds of thousands of characters of English
    with pytest.raises(ValueError):
        load_corpus(llm.get_tokenizer(), 1)
