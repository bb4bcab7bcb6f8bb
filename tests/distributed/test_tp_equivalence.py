"""TP=2 against TP=1 on tiny fp32 models with awkward shapes: greedy tokens identical, every logits row
within 1e-5 (relative to the row's largest logit), seeded sampling identical, prompt logprobs close,
through chunked prefill, prefix caching and forced preemption."""

from __future__ import annotations

import json

import pytest
import torch

from nanoserve import SamplingParams

# name -> (tiny_models variant, config overrides)
SHAPES = {
    "llama_2kv": ("llama", {}),
    "llama_1kv": ("llama_mqa", {}),
    # 3 KV heads over 2 ranks (each rank's q heads straddle a KV group), a vocab of 131 (padded to 132),
    # and an intermediate size of 130 (split 65 + 65).
    "llama_3kv_odd_vocab": ("llama", {"hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 3,
                                      "vocab_size": 131, "intermediate_size": 130}),
    # q heads not divisible by 2 (split 2 + 1 and 3 + 2; o_proj's input columns follow), head_dim 16:
    # one KV head on both ranks; as many KV heads as q heads (ranks hold 2 + 1 and 3 + 2 KV heads).
    "llama_3q_1kv": ("llama", {"hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 1}),
    "llama_3q_3kv": ("llama", {"hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 3}),
    "llama_5q_5kv_odd_vocab": ("llama", {"hidden_size": 80, "num_attention_heads": 5,
                                         "num_key_value_heads": 5, "vocab_size": 131,
                                         "intermediate_size": 130}),
    "qwen2_3q_bias": ("qwen2", {"hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 1}),
    "llama_tied": ("llama_tied", {}),
    "qwen2_bias_tied": ("qwen2", {}),
    "qwen3_qk_norm": ("qwen3", {}),
}

PREFIX = "a shared prefix of the prompts, "
PROMPTS = [PREFIX + "one", PREFIX + "two!", "short", PREFIX + "and a third"]


def _run(llm) -> dict:
    """Everything compared between TP sizes: greedy and seeded tokens, logits, prompt logprobs."""
    runner = llm.llm_engine.runner
    logits: list[torch.Tensor] = []
    compute = runner.model.compute_logits

    def recording(hidden):
        out = compute(hidden)
        logits.append(out.detach().clone())
        return out

    runner.model.compute_logits = recording
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, prompt_logprobs=0)
    outs = llm.generate(PROMPTS, greedy, use_tqdm=False)
    seeded = [SamplingParams(temperature=1.0, seed=7 + i, max_tokens=12, ignore_eos=True) for i in range(3)]
    sampled = llm.generate(PROMPTS[:3], seeded, use_tqdm=False)
    stats = llm.llm_engine.get_stats()
    llm.llm_engine.check_all_blocks_free()
    return {
        "greedy": [o.outputs[0].token_ids for o in outs],
        "seeded": [o.outputs[0].token_ids for o in sampled],
        "prompt_logprobs": [[lp for entry in o.prompt_logprobs[1:] for lp in entry.values()] for o in outs],
        "logits": logits,
        "preemptions": stats.num_preemptions,
        "prefix_hits": stats.prefix_cache_hits,
    }


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_tp2_matches_tp1(shape, tiny_model, make_llm):
    variant, overrides = SHAPES[shape]
    path = tiny_model(variant, **overrides)
    # Chunked prefill (16 tokens a step), prefix caching, and a pool of 20 blocks of 4 tokens that four
    # growing sequences outrun: preemption and recompute.
    engine = dict(max_num_batched_tokens=16, block_size=4, num_gpu_blocks_override=20,
                  enable_prefix_caching=True)
    one = _run(make_llm(path, 1, **engine))
    llm2 = make_llm(path, 2, **engine)
    heads = json.loads((path / "config.json").read_text())["num_attention_heads"]
    assert llm2.llm_engine.runner.model.attention_layers()[0].num_heads == -(-heads // 2)  # rank 0's share
    two = _run(llm2)
    assert one["preemptions"] > 0 and two["preemptions"] > 0
    assert one["prefix_hits"] > 0
    assert two["greedy"] == one["greedy"]
    assert two["seeded"] == one["seeded"]
    assert len(two["logits"]) == len(one["logits"]) > 0
    for a, b in zip(one["logits"], two["logits"], strict=True):
        assert a.shape == b.shape
        scale = a.abs().amax(dim=-1, keepdim=True)  # [rows, 1]
        assert ((a - b).abs() <= 1e-5 * scale).all(), float(((a - b).abs() / scale).max())
    for a, b in zip(one["prompt_logprobs"], two["prompt_logprobs"], strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4)
