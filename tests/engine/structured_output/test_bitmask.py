"""The grammar's token mask in the batched sampler: applied first, only to the constrained rows, also
for greedy rows (no plain-argmax shortcut past it) and for rows whose grammar allows only EOS."""

import pytest
import torch

from nanoserve.engine.sampler import Sampler, SamplingMetadata, make_generator
from nanoserve.engine.structured_output import TokenBitmask, apply_token_bitmask
from nanoserve.sampling_params import SamplingParams

EOS = 1
V = 100


def packed(allowed: list[list[int]], vocab: int = V) -> torch.Tensor:
    """[R, ceil(vocab / 32)] int32 with bit t of each row set for its allowed tokens (xgrammar's layout)."""
    words = (vocab + 31) // 32
    out = torch.zeros(len(allowed), words, dtype=torch.int64)
    for r, toks in enumerate(allowed):
        for t in toks:
            out[r, t // 32] |= 1 << (t % 32)
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)  # two's complement into int32


def meta_for(params, mask=None, outputs=None):
    return SamplingMetadata(
        params=params,
        prompt_token_ids=[[] for _ in params],
        output_token_ids=outputs if outputs is not None else [[] for _ in params],
        generators=[make_generator(p.seed) for p in params],
        eos_token_ids=[EOS],
        token_bitmask=mask,
    )


def test_apply_token_bitmask_masks_only_the_listed_rows_and_bit_31():
    logits = torch.zeros(3, V)
    apply_token_bitmask(logits, TokenBitmask(packed([[0, 31, 33, 99]]), rows=[1]))
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == [0, 31, 33, 99]
    assert torch.isfinite(logits[0]).all() and torch.isfinite(logits[2]).all()


def test_tokens_beyond_the_mask_width_are_forbidden():
    logits = torch.zeros(1, 70)  # the model's vocab is wider than the 64 tokens the mask describes
    apply_token_bitmask(logits, TokenBitmask(packed([[5, 63]], vocab=64), rows=[0]))
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [5, 63]


def test_greedy_rows_take_the_best_allowed_token_beside_an_unconstrained_row():
    logits = torch.arange(V, dtype=torch.float32).repeat(3, 1)  # raw argmax: V - 1 everywhere
    params = [SamplingParams(temperature=0.0)] * 3
    mask = TokenBitmask(packed([[3, 40, 7], [10]]), rows=[0, 2])
    out = Sampler()(logits.to(torch.bfloat16), meta_for(params, mask))
    assert out.token_ids == [40, V - 1, 10]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_rows_draw_only_allowed_tokens_and_logprobs_exclude_the_rest(seed):
    allowed = [2, 17, 64, 95]
    params = [SamplingParams(temperature=1.5, top_p=0.9, seed=seed + i, logprobs=5) for i in range(8)]
    mask = TokenBitmask(packed([allowed] * 4), rows=[0, 2, 4, 6])
    torch.manual_seed(seed)
    drawn = [Sampler()(torch.randn(8, V), meta_for(params, mask)) for _ in range(20)]
    for out in drawn:
        for row in (0, 2, 4, 6):
            assert out.token_ids[row] in allowed
            assert set(out.logprobs[row]) <= set(allowed)
    free_rows = {out.token_ids[r] for out in drawn for r in (1, 3, 5, 7)}
    assert free_rows - set(allowed), "the unconstrained rows are not masked"


def test_a_grammar_that_allows_only_eos_wins_over_min_tokens():
    params = [SamplingParams(temperature=0.0, min_tokens=5)] * 2
    logits = torch.zeros(2, V)
    logits[:, EOS] = 10.0
    mask = TokenBitmask(packed([[EOS]]), rows=[0])
    out = Sampler()(logits, meta_for(params, mask, outputs=[[7], [7]]))
    assert out.token_ids[0] == EOS  # the grammar's output is complete: only the stop token remains
    assert out.token_ids[1] != EOS  # the unconstrained row still honours min_tokens
