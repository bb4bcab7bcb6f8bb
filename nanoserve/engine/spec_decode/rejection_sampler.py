"""Which draft tokens to keep: greedy agreement, or modified rejection sampling (Leviathan et al. 2023,
Chen et al. 2023), so that speculation never changes what a request would have generated.

For one sequence with drafts x_1..x_k, the target's processed distributions p_1..p_{k+1} (p_j is the
distribution of the token at draft position j, given the tokens before it) and the draft's q_1..q_k:
- greedy: keep x_j while x_j == argmax p_j; then emit argmax p at the first disagreement (or p_{k+1}
  after all k): exactly the tokens greedy decoding without speculation would emit.
- sampled: accept x_j with probability min(1, p_j(x_j) / q_j(x_j)); at the first rejection draw from
  norm(max(0, p_j - q_j)) and stop; after k acceptances draw a bonus token from p_{k+1}. Each emitted
  token is then distributed exactly as p. A proposer that drafts deterministically (n-gram lookup,
  the greedy draft model) has q_j = a point mass on x_j: accept with probability p_j(x_j), and on a
  rejection draw from p_j with x_j removed.
One uniform per draft plus one for the final draw, always k + 1 per verify, from the sequence's own
generator when seeded: a seeded request is reproducible run to run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nanoserve.engine.sampler import draw_uniform


@dataclass
class Verdict:
    token_ids: list[int]  # the accepted drafts, then one token from the target (num_accepted + 1)
    num_accepted: int


def verify_greedy(target_token_ids: list[int], draft_token_ids: list[int]) -> Verdict:
    """target_token_ids[j]: the target's argmax at draft position j (k + 1 of them)."""
    a = 0
    while a < len(draft_token_ids) and draft_token_ids[a] == target_token_ids[a]:
        a += 1
    return Verdict(list(draft_token_ids[:a]) + [target_token_ids[a]], a)


def verify_sampled(
    target_probs: torch.Tensor,
    draft_token_ids: list[int],
    draft_probs: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Verdict:
    """target_probs [k + 1, V]: p_1..p_{k+1}; draft_probs [k, V]: q_1..q_k, or None for point masses."""
    k = len(draft_token_ids)
    assert target_probs.shape[0] == k + 1, f"{target_probs.shape[0]} target rows for {k} drafts"
    device = target_probs.device
    u = draw_uniform(generator, k + 1, device)  # [k + 1]
    if k:
        idx = torch.tensor(draft_token_ids, device=device)  # [k]
        p_x = target_probs[:k].gather(1, idx.unsqueeze(1)).squeeze(1)  # [k]
        q_x = draft_probs[:k].gather(1, idx.unsqueeze(1)).squeeze(1) if draft_probs is not None else 1.0
        # u < p/q, written without dividing (q > 0 for a token the draft sampled)
        accepted = (u[:k] * q_x < p_x).tolist()
    else:
        accepted = []
    for j, ok in enumerate(accepted):
        if ok:
            continue
        if draft_probs is None:
            residual = target_probs[j].clone()  # [V]
            residual[draft_token_ids[j]] = 0.0
        else:
            residual = (target_probs[j] - draft_probs[j]).clamp_(min=0.0)  # [V]
        if not bool(residual.sum() > 0):  # p == q up to rounding: p itself is the right law
            residual = target_probs[j]
        return Verdict(list(draft_token_ids[:j]) + [_inverse_cdf(residual, u[k])], j)
    return Verdict(list(draft_token_ids) + [_inverse_cdf(target_probs[k], u[k])], k)


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> int:
    """The token whose CDF interval of the (unnormalised) `weights` [V] holds u * total."""
    cdf = torch.cumsum(weights.float(), dim=0)  # [V]
    total = cdf[-1:]
    # Below the total, so the token found has weight > 0 (a zero weight's cdf equals its predecessor's).
    target = torch.minimum(u.reshape(1) * total, torch.nextafter(total, torch.zeros_like(total)))
    return int(torch.searchsorted(cdf, target, right=True).clamp_(max=weights.shape[0] - 1))
