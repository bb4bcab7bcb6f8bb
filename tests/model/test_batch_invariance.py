"""Batch invariance of the bf16 CPU forward: a token's hidden state and logits do not depend on how many
other rows share its step.

A speculative verify runs a sequence's last token and its k drafts as one step of k + 1 rows; speculation
off runs the same tokens as k + 1 one-row decode steps (the fused native path). Greedy output is the same
both ways only if every op gives a row the same bits in both, so the test compares them exactly, not
within a tolerance. Before the avx512 linear kernel kept one k-summation order for every row tile
(csrc/cpu_linear.cpp), 1- and 2-row calls rounded differently from 3..6-row ones and SmolLM2 in bf16
diverged at k >= 2.
"""

from __future__ import annotations

import pytest
import torch

from nanoserve import LLM
from nanoserve.model.attention import StepLayout
from nanoserve.model.attention.torch_backend import DECODE_ROWS_MAX_QUERY_LEN

# hidden 256, intermediate 512: long enough sums that a changed summation order shows in the bf16 outputs
MODEL = dict(dtype="bfloat16", init_std=0.02, vocab_size=384, hidden_size=256, intermediate_size=512,
             num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3)


@pytest.fixture(scope="module")
def runner(tiny_model):
    llm = LLM(model=str(tiny_model("llama", **MODEL)), dtype="bfloat16", enable_prefix_caching=False)
    return llm.llm_engine.runner


def _step(runner, ids: torch.Tensor, first_pos: int, table: list[int]) -> torch.Tensor:
    """Logits [n, vocab] of one step over one sequence's tokens `ids` [n] at first_pos.. (cache written)."""
    bs, n = runner.block_size, len(ids)
    positions = torch.arange(first_pos, first_pos + n)
    slots = [table[p // bs] * bs + p % bs for p in positions.tolist()]
    layout = StepLayout([0, n], [first_pos + n], [table], slots, bs)
    meta = runner.attention_backend.build_metadata(layout)
    return runner.model.compute_logits(runner.model(ids, positions, meta))


def _one_by_one_and_together(runner, n: int, prefix_len: int, seed: int):
    """(logits of n one-row steps, logits of one n-row step) over the same tokens, from the same cache."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, MODEL["vocab_size"], (n,), generator=gen)
    bs = runner.block_size
    num_blocks = -(-(prefix_len + n) // bs)
    table = torch.randperm(runner.cache_config.num_blocks, generator=gen)[:num_blocks].tolist()
    caches = [c for kv in runner.kv_caches for c in kv]
    for c in caches:
        c.copy_(torch.randn(c.shape, generator=gen) * 0.5)  # the prefix's K/V
    start = [c.clone() for c in caches]
    with torch.inference_mode():
        alone = torch.cat([_step(runner, ids[i : i + 1], prefix_len + i, table) for i in range(n)])
        for c, s in zip(caches, start, strict=True):
            c.copy_(s)
        together = _step(runner, ids, prefix_len, table)
    return alone, together


@pytest.mark.parametrize("fused", [True, False], ids=["fused-decode", "op-by-op"])
def test_a_row_gets_the_same_logits_alone_and_inside_a_verify_step(runner, fused):
    model = runner.model.model
    fused_path = model.fused_decode
    if fused and fused_path is None:
        pytest.skip("no fused decode path here (not an avx512-bf16 CPU)")
    model.fused_decode = fused_path if fused else None
    try:
        for n in range(3, DECODE_ROWS_MAX_QUERY_LEN):  # k = 2..6 drafts plus the last accepted token
            for seed, prefix_len in enumerate((5, 40, 97)):
                alone, together = _one_by_one_and_together(runner, n, prefix_len, seed)
                differ = (alone != together).any(dim=-1).nonzero().flatten().tolist()
                assert not differ, f"{n}-row step, prefix {prefix_len}: rows {differ} differ from 1-row steps"
    finally:
        model.fused_decode = fused_path
