"""Batched sampler: one next token per sequence from the model's last-position logits.

Order of operations (vLLM's): the grammar's token mask (structured outputs) -> logit_bias -> min_tokens
masking of EOS / stop tokens -> repetition, frequency and presence penalties -> greedy rows take the
argmax here -> temperature -> top-k and top-p (one sort) -> min-p -> draw. Every step works on [B, V]
tensors with per-row parameter tensors; the only Python loops are over seeded rows (each draws its
noise from its own generator), logit_bias entries and rows asking for logprobs.

Drawing inverts each row's CDF at one uniform number per row (a V-sized noise tensor per row, as in
the exponential race, costs more than the rest of the sampler on CPU). A seeded row takes its number
from its own `torch.Generator`, so the same seed gives the same tokens whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nanoserve.engine.host_tensor import host_tensor
from nanoserve.engine.structured_output.bitmask import TokenBitmask, apply_token_bitmask
from nanoserve.model.kernels import Kernels, TorchKernels
from nanoserve.sampling_params import SAMPLING_EPS, SamplingParams

_MASK_64 = 2**64 - 1
# Sorted candidates examined for top-p before falling back to a full sort of the vocabulary.
_TOP_P_CANDIDATES = 256


@dataclass
class SamplingMetadata:
    """One row per sequence sampled this step, in the same order as the logits' rows."""

    params: list[SamplingParams]
    prompt_token_ids: list[list[int]]
    output_token_ids: list[list[int]]
    generators: list[torch.Generator | None]  # per sequence, from make_generator(seed); None = global RNG
    eos_token_ids: list[int]  # the model's EOS ids (masked while len(output) < min_tokens unless ignore_eos)
    # The tokens each grammar-constrained row may take (None: no row is constrained); applied first.
    token_bitmask: TokenBitmask | None = None


@dataclass
class SamplerOutput:
    token_ids: list[int]
    # With params.logprobs = N: {token id: logprob} for the top-N tokens (descending) followed by the
    # sampled token when it is not among them, from the distribution the token was drawn from (after
    # penalties, temperature and filters). Tokens the filters removed (logprob -inf) are left out.
    logprobs: list[dict[int, float] | None]


def make_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator | None:
    """A generator seeded with `seed` for one sequence, or None (use the global RNG) when seed is None."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed & _MASK_64)  # negative seeds map onto the unsigned 64-bit range
    return gen


def child_seed(seed: int, index: int) -> int:
    """The seed of the index-th of n samples of a seeded request; index 0 keeps the request's seed.

    Children need different streams (else n>1 would give n copies) that depend only on (seed, index).
    """
    if index == 0:
        return seed
    # splitmix64 finaliser over (seed, index): well-mixed and cheap.
    z = (seed + index * 0x9E3779B97F4A7C15) & _MASK_64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK_64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK_64
    return z ^ (z >> 31)


class Sampler:
    def __init__(self, kernels: Kernels | None = None) -> None:
        """kernels: the runner's choice (its argmax serves plain-greedy batches); None = the reference."""
        self.kernels = kernels if kernels is not None else TorchKernels()

    def __call__(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        """Sample one token per row of `logits` [B, V] (any float dtype) according to `meta`."""
        params = meta.params
        num_rows, vocab = logits.shape
        assert len(params) == num_rows, f"{len(params)} SamplingParams for {num_rows} rows of logits"
        if meta.token_bitmask is None and _plain_greedy(meta):  # the common benchmark case: no copy,
            # no upcast, one argmax: the first maximal index per row (upcasting bf16 could not change it)
            return SamplerOutput(self.kernels.argmax_rows(logits).tolist(), [None] * num_rows)
        logits = self.process(logits, meta)  # [B, V] float32
        greedy = [p.greedy for p in params]
        want_logprobs = any(p.logprobs is not None for p in params)
        if all(greedy):
            token_ids = logits.argmax(dim=-1)  # [B]
            logprobs = _logprobs(logits, token_ids, params) if want_logprobs else [None] * num_rows
            return SamplerOutput(token_ids.tolist(), logprobs)

        device = logits.device
        probs = torch.softmax(logits, dim=-1)  # [B, V]
        sampled = _draw(probs, meta.generators, greedy)  # [B]
        if any(greedy):
            token_ids = torch.where(host_tensor(greedy, device=device), logits.argmax(dim=-1), sampled)
        else:
            token_ids = sampled
        logprobs = _logprobs(logits, token_ids, params) if want_logprobs else [None] * num_rows
        return SamplerOutput(token_ids.tolist(), logprobs)


    def process(self, logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """A float32 copy of `logits` [B, V] processed into the distribution each row draws from (every
        step up to the draw): its argmax is a greedy row's token, its softmax a sampled row's
        distribution. Speculative verification scores draft tokens with it."""
        params = meta.params
        logits = logits.to(torch.float32, copy=True)  # [B, V]; we modify it in place
        if meta.token_bitmask is not None:
            apply_token_bitmask(logits, meta.token_bitmask)
        _apply_logit_bias(logits, params)
        _mask_stop_tokens_before_min(logits, meta)
        if any(p.has_penalties for p in params):
            _apply_penalties(logits, meta)
        greedy = [p.greedy for p in params]
        if all(greedy):
            return logits
        # Greedy rows keep temperature 1 so their (reported) distribution is the penalised softmax.
        temps = host_tensor([1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)],
                            device=logits.device)  # [B]
        logits.div_(temps.unsqueeze(1))
        _apply_top_k_top_p(logits, params, greedy)
        _apply_min_p(logits, params, greedy)
        return logits


def plain_greedy(meta: SamplingMetadata) -> bool:
    """Every row is the argmax of its raw logits (see _plain_greedy); no bitmask."""
    return meta.token_bitmask is None and _plain_greedy(meta)


def draw_uniform(generator: torch.Generator | None, n: int, device: torch.device) -> torch.Tensor:
    """n uniforms [n] from a sequence's own generator (seeded request) or the global RNG."""
    if generator is None:
        return torch.rand(n, device=device)
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _plain_greedy(meta: SamplingMetadata) -> bool:
    """Every row is an argmax of the raw logits (plain_greedy_row)."""
    return all(
        plain_greedy_row(p, len(out)) for p, out in zip(meta.params, meta.output_token_ids, strict=True)
    )


def plain_greedy_row(p: SamplingParams, num_output_tokens: int) -> bool:
    """A row that is the argmax of its raw logits: greedy, no penalties, no logprobs, no min_tokens mask
    (num_output_tokens already generated before it), no logit_bias."""
    return (
        p.greedy and not p.has_penalties and p.logprobs is None and num_output_tokens >= p.min_tokens
        and not p.logit_bias
    )


def _apply_logit_bias(logits: torch.Tensor, params: list[SamplingParams]) -> None:
    """Add each row's {token id: bias} to its logits (ids outside the vocabulary are the engine's to
    refuse; here they are skipped)."""
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    vocab = logits.shape[1]
    for row, p in enumerate(params):
        for tok, bias in (p.logit_bias or {}).items():
            if 0 <= tok < vocab:
                rows.append(row)
                cols.append(tok)
                values.append(bias)
    if rows:  # (row, col) pairs are distinct: a dict's keys per row
        dev = logits.device
        logits[host_tensor(rows, torch.int64, dev), host_tensor(cols, torch.int64, dev)] += host_tensor(
            values, logits.dtype, dev)


def _mask_stop_tokens_before_min(logits: torch.Tensor, meta: SamplingMetadata) -> None:
    """While a row has fewer than min_tokens outputs, it may not emit EOS or its stop_token_ids."""
    rows: list[int] = []
    cols: list[int] = []
    vocab = logits.shape[1]
    for row, (p, out) in enumerate(zip(meta.params, meta.output_token_ids, strict=True)):
        if len(out) >= p.min_tokens:
            continue
        banned = set(p.stop_token_ids or [])
        if not p.ignore_eos:
            banned.update(meta.eos_token_ids)
        for tok in banned:
            if 0 <= tok < vocab:
                rows.append(row)
                cols.append(tok)
    if rows:
        at = (host_tensor(rows, torch.int64, logits.device), host_tensor(cols, torch.int64, logits.device))
        kept = logits[at]  # [N]
        logits[at] = -torch.inf
        # A grammar may allow only a stop token (its output is complete): the grammar wins, else the
        # row would have nothing to sample. On the device, so a GPU step needs no host sync here.
        dead = torch.isneginf(logits[at[0]]).all(dim=-1)  # [N]
        logits[at] = torch.where(dead, kept, torch.full_like(kept, -torch.inf))


def _apply_penalties(logits: torch.Tensor, meta: SamplingMetadata) -> None:
    """Repetition (transformers' rule, prompt + output), then frequency and presence (OpenAI's, output).

    Only the tokens a row has seen change, so the work is a gather and a scatter over each row's distinct
    tokens (built in Python from the id lists), not passes over the whole [B, V] tensor.
    """
    num_rows, vocab = logits.shape
    rows_ids: list[list[int]] = []
    rows_sub: list[list[float]] = []  # frequency * count + presence, per distinct token
    reps: list[float] = []
    for p, prompt, output in zip(meta.params, meta.prompt_token_ids, meta.output_token_ids, strict=True):
        counts: dict[int, int] = {}
        for tok in output:
            counts[tok] = counts.get(tok, 0) + 1
        ids = set(counts)
        rep = p.repetition_penalty
        if rep != 1.0:
            ids.update(prompt)
        ids_list = [t for t in ids if 0 <= t < vocab]
        if not ids_list:  # nothing seen: a no-op entry (factor 1, subtract 0) on token 0
            ids_list, rep = [0], 1.0
        rows_ids.append(ids_list)
        rows_sub.append([p.frequency_penalty * counts.get(t, 0) + (p.presence_penalty if t in counts else 0.0)
                         for t in ids_list])
        reps.append(rep)
    width = max(len(ids) for ids in rows_ids)
    # Pad each row by repeating its first entry: a duplicate index scattered with the same value.
    ids = host_tensor([r + r[:1] * (width - len(r)) for r in rows_ids], device=logits.device)  # [B, U]
    sub = host_tensor([r + r[:1] * (width - len(r)) for r in rows_sub], device=logits.device)  # [B, U]
    rep = host_tensor(reps, device=logits.device).unsqueeze(1)  # [B, 1]
    seen = logits.gather(1, ids)  # [B, U]
    seen = torch.where(seen > 0, seen / rep, seen * rep) - sub
    logits.scatter_(1, ids, seen)


def _apply_top_k_top_p(logits: torch.Tensor, params: list[SamplingParams], greedy: list[bool]) -> None:
    """Mask (to -inf) tokens outside top-k, then outside top-p of the top-k survivors (renormalised).

    Ties at a boundary are all kept: top-k keeps every token whose logit equals the k-th largest; top-p
    keeps token i iff the probability mass of tokens strictly more likely than i is below p. Both end in
    one threshold logit per row, so the final mask is a comparison in vocabulary order (no scatter).
    """
    num_rows, vocab = logits.shape
    ks = [vocab if g or p.top_k <= 0 else min(p.top_k, vocab) for p, g in zip(params, greedy, strict=True)]
    ps = [1.0 if g else p.top_p for p, g in zip(params, greedy, strict=True)]
    need_k = any(k < vocab for k in ks)
    need_p = any(p < 1.0 for p in ps)
    if not (need_k or need_p):
        return
    device = logits.device
    # A full sort of a 150k vocabulary costs tens of ms per row on CPU; the candidates of top-k and of a
    # typical nucleus are far fewer, so take the sorted top `width` and sort everything only if some
    # row's nucleus turns out wider.
    max_k = max((k for k in ks if k < vocab), default=0)
    width = min(vocab, max(max_k, _TOP_P_CANDIDATES if need_p else 0))
    if device.type == "cpu":
        candidates = logits.topk(width, dim=-1).values  # [B, W], descending
    else:  # a GPU sorts a whole vocabulary in microseconds: one width, no host sync to learn whether
        width = vocab  # the candidates sufficed
        candidates = logits.sort(dim=-1, descending=True).values  # [B, V]
    # Rows whose top-k survivors all lie among the candidates (no ties with the k-th value beyond them).
    inside = torch.full((num_rows,), width == vocab, device=device)  # [B]
    if need_k:
        k = host_tensor([min(k, width) for k in ks], device=device).unsqueeze(1)  # [B, 1]
        k_on = host_tensor([k < vocab for k in ks], device=device).unsqueeze(1)  # [B, 1]
        kth = torch.where(k_on, candidates.gather(1, k - 1), -torch.inf)  # [B, 1]
        inside |= (k_on & (candidates[:, -1:] < kth)).squeeze(1)
        logits.masked_fill_(logits < kth, -torch.inf)
        candidates.masked_fill_(candidates < kth, -torch.inf)
    if not need_p:
        return
    p_on = host_tensor([x < 1.0 for x in ps], device=device)  # [B]
    p = host_tensor(ps, device=device).unsqueeze(1)  # [B, 1]
    # Normaliser over the top-k survivors; from the candidates alone when they hold every survivor
    # (a full-row logsumexp is several passes over [B, V]). All of them do when width == vocab.
    if width == vocab or bool((inside | ~p_on).all()):
        log_total = torch.logsumexp(candidates, dim=-1, keepdim=True)  # [B, 1]
    else:
        log_total = torch.logsumexp(logits, dim=-1, keepdim=True)  # [B, 1]
    while True:
        probs = (candidates - log_total).exp()  # [B, W], normalised over the whole row
        mass_before = torch.cumsum(probs, dim=-1) - probs  # [B, W], exclusive prefix sums
        num_kept = (mass_before < p).sum(dim=-1)  # [B]
        if width == vocab or not (p_on & (num_kept == width)).any():
            break
        width = vocab
        candidates = logits.sort(dim=-1, descending=True).values  # [B, V]
    # The last kept candidate's logit is the row's threshold, so logits equal to it are kept too.
    last_kept = (num_kept - 1).clamp_(min=0).unsqueeze(1)  # [B, 1]
    threshold = torch.where(p_on.unsqueeze(1), candidates.gather(1, last_kept), -torch.inf)  # [B, 1]
    logits.masked_fill_(logits < threshold, -torch.inf)


def _apply_min_p(logits: torch.Tensor, params: list[SamplingParams], greedy: list[bool]) -> None:
    """Mask tokens whose probability is below min_p times the most likely token's probability."""
    min_ps = [0.0 if g else p.min_p for p, g in zip(params, greedy, strict=True)]
    if not any(m > 0.0 for m in min_ps):
        return
    probs = torch.softmax(logits, dim=-1)  # [B, V]
    min_p = host_tensor(min_ps, device=logits.device).unsqueeze(1)  # [B, 1]
    floor = probs.max(dim=-1, keepdim=True).values * min_p  # [B, 1]
    logits.masked_fill_(probs < floor, -torch.inf)


def _draw(probs: torch.Tensor, generators: list[torch.Generator | None], skip: list[bool]) -> torch.Tensor:
    """One token per row with probability `probs` [B, V], by inverting the row's CDF at a uniform draw.

    One uniform per row and step: unseeded rows share one draw from the global RNG, a seeded row takes
    its number from its own generator, so its stream does not depend on the batch. Rows in `skip`
    (greedy) draw nothing.
    """
    num_rows, vocab = probs.shape
    device = probs.device
    u = torch.zeros(num_rows, device=device)  # [B]
    unseeded = [r for r in range(num_rows) if generators[r] is None and not skip[r]]
    if len(unseeded) == num_rows:
        u = torch.rand(num_rows, device=device)
    elif unseeded:
        u[host_tensor(unseeded, torch.int64, device)] = torch.rand(len(unseeded), device=device)
    for row, gen in enumerate(generators):
        if gen is not None and not skip[row]:
            u[row] = torch.rand(1, generator=gen, device=gen.device).to(device)[0]
    cdf = torch.cumsum(probs, dim=-1)  # [B, V]
    total = cdf[:, -1:]  # [B, 1]; ~1 up to rounding, so scale u rather than trust 1
    # Strictly below the total, so the first cdf entry above it exists and belongs to a token with
    # probability > 0 (a zero-probability token's cdf equals its predecessor's and is never first).
    target = torch.minimum(u.unsqueeze(1) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=vocab - 1)


def _logprobs(logits: torch.Tensor, token_ids: torch.Tensor,
              params: list[SamplingParams]) -> list[dict[int, float] | None]:
    rows = [r for r, p in enumerate(params) if p.logprobs is not None]
    out: list[dict[int, float] | None] = [None] * len(params)
    if not rows:
        return out
    logprobs = torch.log_softmax(logits[rows], dim=-1)  # [R, V]
    top_n = max(params[r].logprobs for r in rows)
    top_vals, top_ids = logprobs.topk(min(top_n, logprobs.shape[1]), dim=-1)  # [R, N]
    picked = token_ids[host_tensor(rows, torch.int64, token_ids.device)]  # [R]
    chosen = logprobs.gather(1, picked.unsqueeze(1)).squeeze(1)  # [R]
    top_vals, top_ids, chosen = top_vals.tolist(), top_ids.tolist(), chosen.tolist()
    ids = token_ids.tolist()
    for i, row in enumerate(rows):
        n = params[row].logprobs
        entry = {t: v for t, v in zip(top_ids[i][:n], top_vals[i][:n], strict=True) if v != -float("inf")}
        entry.setdefault(ids[row], chosen[i])
        out[row] = entry
    return out


__all__ = ["SAMPLING_EPS", "Sampler", "SamplerOutput", "SamplingMetadata", "child_seed", "draw_uniform",
           "logprobs_of", "make_generator", "plain_greedy"]

logprobs_of = _logprobs  # {token: logprob} entries of chosen tokens, from processed logits
