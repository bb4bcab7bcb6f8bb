"""One verify step: the target's logits at every draft position of every sequence -> the tokens to emit.

A sequence with k drafts contributes k + 1 logits rows (its last token's, then each draft's). Each row
is processed exactly as the sampler would process it at that position (logit bias, min_tokens, grammar
mask, penalties over the tokens before it, which include the earlier drafts, temperature, top-k/p,
min-p), so the rejection sampler compares the drafts with the very distribution speculation-off
decoding would draw from. Sequences without drafts take one row and are sampled as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nanoserve.engine.sampler import (
    Sampler,
    SamplingMetadata,
    logprobs_of,
    plain_greedy_row,
)
from nanoserve.engine.sequence import Sequence
from nanoserve.engine.spec_decode.rejection_sampler import verify_greedy, verify_sampled
from nanoserve.engine.structured_output.bitmask import TokenBitmask


@dataclass
class SeqOutcome:
    token_ids: list[int]  # accepted drafts, then the target's token
    logprobs: list[dict[int, float] | None]  # per emitted token (None entries without params.logprobs)
    num_draft_tokens: int
    num_accepted_tokens: int


def verify_step(
    sampler: Sampler,
    logits: torch.Tensor,
    seqs: list[Sequence],
    drafts: list[list[int]],
    eos_token_ids: list[int],
    token_bitmask: TokenBitmask | None,
) -> list[SeqOutcome]:
    """logits [R, V]: the rows of seqs[0] (len(drafts[0]) + 1 of them), then seqs[1]'s, and so on.

    token_bitmask rows index `seqs` (a constrained sequence is never given drafts)."""
    first_row: list[int] = []
    num_rows = 0
    for d in drafts:
        first_row.append(num_rows)
        num_rows += len(d) + 1
    assert logits.shape[0] == num_rows, f"{logits.shape[0]} logits rows for {num_rows} positions"
    # Every row plainly greedy (the common case): the argmax of the raw logits, as the sampler's own fast
    # path takes it, without building per-row sampling metadata. A sequence's later rows only add
    # output tokens, so its first row decides (min_tokens).
    if token_bitmask is None and all(
        plain_greedy_row(seq.request.params, seq.num_output_tokens) for seq in seqs
    ):
        processed = None
        argmax = sampler.kernels.argmax_rows(logits).tolist()
    else:
        meta = _row_metadata(seqs, drafts, first_row, eos_token_ids, token_bitmask)
        processed = sampler.process(logits, meta)  # [R, V]
        argmax = processed.argmax(dim=-1).tolist()  # [R]
    results = []
    for i, (seq, d) in enumerate(zip(seqs, drafts, strict=True)):
        lo, hi = first_row[i], first_row[i] + len(d) + 1
        p = seq.request.params
        if p.greedy:
            verdict = verify_greedy(argmax[lo:hi], d)
        else:
            probs = torch.softmax(processed[lo:hi], dim=-1)  # [k + 1, V]
            verdict = verify_sampled(probs, d, None, seq.generator)
        n = len(verdict.token_ids)
        if p.logprobs is not None:
            tokens = torch.tensor(verdict.token_ids, device=logits.device)  # [n]
            logprobs = logprobs_of(processed[lo : lo + n], tokens, [p] * n)
        else:
            logprobs = [None] * n
        results.append(SeqOutcome(verdict.token_ids, logprobs, len(d), verdict.num_accepted))
    return results


def _row_metadata(
    seqs: list[Sequence], drafts: list[list[int]], first_row: list[int], eos_token_ids: list[int],
    token_bitmask: TokenBitmask | None,
) -> SamplingMetadata:
    """The sampler's metadata for every verify row: row j of a sequence sees its earlier drafts d[:j] as
    output tokens (penalties, min_tokens)."""
    params, prompts, outputs, gens = [], [], [], []
    for seq, d in zip(seqs, drafts, strict=True):
        out = seq.output_token_ids
        prompt = seq.token_ids[: seq.num_prompt_tokens]
        for j in range(len(d) + 1):
            params.append(seq.request.params)
            prompts.append(prompt)
            outputs.append(out + d[:j])
            gens.append(seq.generator)
    if token_bitmask is not None:
        token_bitmask = TokenBitmask(token_bitmask.bitmask, [first_row[r] for r in token_bitmask.rows])
    return SamplingMetadata(params, prompts, outputs, gens, eos_token_ids, token_bitmask)
