"""The rejection sampler alone: greedy agreement, accept-all, reject-first, point-mass and general q."""

from __future__ import annotations

import torch

from nanoserve.engine.spec_decode.rejection_sampler import verify_greedy, verify_sampled


def _onehot(ids: list[int], vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(ids), vocab).float()


def test_greedy_keeps_the_agreeing_prefix_then_the_targets_token():
    assert verify_greedy([5, 6, 7, 8], [5, 6, 7]).token_ids == [5, 6, 7, 8]  # all accepted + bonus
    v = verify_greedy([5, 9, 7, 8], [5, 6, 7])
    assert (v.token_ids, v.num_accepted) == ([5, 9], 1)  # stops at the first disagreement
    v = verify_greedy([4, 6, 7, 8], [5, 6, 7])
    assert (v.token_ids, v.num_accepted) == ([4], 0)
    assert verify_greedy([3], []).token_ids == [3]


def test_sampled_accepts_all_when_the_target_is_sure_and_draws_the_bonus_from_the_last_row():
    p = _onehot([1, 2, 3, 0], 5)  # [4, 5]: the target puts all its mass on the drafts, then on 0
    v = verify_sampled(p, [1, 2, 3], None, torch.Generator().manual_seed(0))
    assert (v.token_ids, v.num_accepted) == ([1, 2, 3, 0], 3)


def test_sampled_rejects_a_draft_the_target_never_takes_and_resamples_from_the_target():
    p = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25] * 4])  # draft 1 has probability 0 at position 0
    for seed in range(20):
        v = verify_sampled(p, [1], None, torch.Generator().manual_seed(seed))
        assert v.num_accepted == 0 and len(v.token_ids) == 1 and v.token_ids[0] in (2, 3)


def test_point_mass_rejection_never_redraws_the_rejected_token_and_matches_p_overall():
    # Point-mass q on token 0: accept with p(0) = 0.6; on rejection draw from p without 0.
    p = torch.tensor([[0.6, 0.3, 0.1], [1.0, 0.0, 0.0]])
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(3)
    for _ in range(4000):
        v = verify_sampled(p, [0], None, gen)
        counts[v.token_ids[0]] += 1
        if v.num_accepted == 0:
            assert v.token_ids[0] != 0
    freq = counts / counts.sum()
    assert torch.allclose(freq, p[0], atol=0.03), freq


def test_general_q_follows_p_modified_rejection_sampling():
    p = torch.tensor([[0.5, 0.3, 0.2], [1 / 3] * 3])
    q = torch.tensor([[0.2, 0.2, 0.6]])
    gen = torch.Generator().manual_seed(2)
    counts = torch.zeros(3)
    for _ in range(6000):
        x = int(torch.multinomial(q[0], 1, generator=gen))  # the draft samples from q
        counts[verify_sampled(p, [x], q, gen).token_ids[0]] += 1
    assert torch.allclose(counts / counts.sum(), p[0], atol=0.025), counts / counts.sum()


def test_seeded_verification_is_reproducible():
    p = torch.softmax(torch.randn(4, 7, generator=torch.Generator().manual_seed(3)), dim=-1)
    a = [verify_sampled(p, [1, 2, 3], None, torch.Generator().manual_seed(s)).token_ids for s in range(30)]
    b = [verify_sampled(p, [1, 2, 3], None, torch.Generator().manual_seed(s)).token_ids for s in range(30)]
    assert a == b and len({tuple(x) for x in a}) > 1
