"""Greedy output with n-gram speculation equals speculation off on a bf16 random Qwen2-shaped model whose
logits are nearly flat, so a last-bit difference between the verify pass and a plain decode step would
flip argmax ties. It holds because a verify chunk runs as decode rows of the same attention kernel
(model/attention/torch_backend.py, DECODE_ROWS_MAX_QUERY_LEN); with verify chunks on the prefill path
some sequences diverged."""

from __future__ import annotations

import random

import pytest

from nanoserve.sampling_params import SamplingParams

# Qwen2's layout (qkv bias, tied embeddings, GQA) at head_dim 64 (the native bf16 AVX-512 decode
# kernel's size), transformers' small init: flat logits.
MODEL = dict(dtype="bfloat16", init_std=0.02, vocab_size=384, hidden_size=256, intermediate_size=512,
             num_attention_heads=4, num_key_value_heads=2)
NUM_PROMPTS = 64


def _prompts() -> list[dict]:
    """Short random patterns repeated: the model's continuations repeat too, so n-gram drafts get accepted."""
    rng = random.Random(0)
    out = []
    for _ in range(NUM_PROMPTS):
        pattern = [rng.randrange(4, MODEL["vocab_size"]) for _ in range(rng.randint(3, 7))]
        out.append({"prompt_token_ids": (pattern * 8)[: rng.randint(20, 40)]})
    return out


def _generate(llm) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(_prompts(), params, use_tqdm=False)]


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_bf16_greedy_identity_with_ngram_speculation(make_llm, k, kv_cache_dtype):
    engine = dict(model_options=MODEL, num_gpu_blocks_override=512, kv_cache_dtype=kv_cache_dtype)
    reference = _generate(make_llm("qwen2", **engine))
    spec = {"method": "ngram", "num_speculative_tokens": k, "disable_by_batch_size": None}
    llm = make_llm("qwen2", speculative_config=spec, **engine)
    got = _generate(llm)
    diverged = [i for i, (a, b) in enumerate(zip(got, reference, strict=True)) if a != b]
    assert not diverged, f"{len(diverged)} of {NUM_PROMPTS} sequences differ, first {diverged[0]}"
    stats = llm.llm_engine.get_stats()
    assert stats.spec_decode_num_accepted_tokens > NUM_PROMPTS * 8, "drafts were accepted: verify chunks ran"


# A Llama with sharper logits, run at batch 1: speculation off then decodes one row per step and a verify
# runs k + 1 rows, so any op whose result for a row depends on the rows beside it (the avx512 linear
# kernel's few-row tiles once summed k in another order) changes tokens. (At batch 64 both ways run
# 6-row tiles, which hid it.)
BATCH1_MODEL = dict(dtype="bfloat16", init_std=0.05, vocab_size=384, hidden_size=256, intermediate_size=512,
                    num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_bf16_greedy_identity_at_batch_1(make_llm, k):
    engine = dict(model_options=BATCH1_MODEL, num_gpu_blocks_override=512, max_num_seqs=1)
    prompts = _prompts()[:16]
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    outs = make_llm("llama", **engine).generate(prompts, params, use_tqdm=False)
    reference = [o.outputs[0].token_ids for o in outs]
    spec = {"method": "ngram", "num_speculative_tokens": k, "disable_by_batch_size": None}
    llm = make_llm("llama", speculative_config=spec, **engine)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    diverged = [i for i, (a, b) in enumerate(zip(got, reference, strict=True)) if a != b]
    assert not diverged, f"{len(diverged)} of {len(prompts)} sequences differ, first {diverged[0]}"
    assert llm.llm_engine.get_stats().spec_decode_num_accepted_tokens > len(prompts) * 8, "verify chunks ran"
