import math

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from nanoserve.engine.sampler import (
    Sampler,
    SamplingMetadata,
    _apply_min_p,
    _apply_penalties,
    _apply_top_k_top_p,
    child_seed,
    make_generator,
)
from nanoserve.sampling_params import SamplingParams

SAMPLER = Sampler()
EOS = 1

# Upper 0.1% points of the chi-square distribution (standard tables): a correct sampler fails a
# test at most 1 time in 1000 seeds; the fixed seeds below make each run deterministic.
CHI2_CRIT_0_001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322,
                   8: 26.124, 9: 27.877, 10: 29.588, 11: 31.264, 12: 32.909}


def meta_for(params, outputs=None, prompts=None, generators=None, eos=(EOS,)):
    rows = len(params)
    return SamplingMetadata(
        params=params,
        prompt_token_ids=prompts if prompts is not None else [[] for _ in range(rows)],
        output_token_ids=outputs if outputs is not None else [[] for _ in range(rows)],
        generators=generators if generators is not None else [make_generator(p.seed) for p in params],
        eos_token_ids=list(eos),
    )


def sample(logits, params, **kw):
    return SAMPLER(logits, meta_for(params, **kw))


# ---------------------------------------------------------------- reference (float64, obviously correct)
def reference_distribution(logits_row, p: SamplingParams) -> dict[int, float]:
    """{token: probability} of the filtered softmax, straight from the definitions, in float64."""
    x = [float(v) / p.temperature for v in logits_row]
    keep = set(range(len(x)))
    if p.top_k > 0:
        kth = sorted(x, reverse=True)[min(p.top_k, len(x)) - 1]
        keep = {i for i in keep if x[i] >= kth}  # ties with the k-th value are kept
    if p.top_p < 1.0:
        probs = softmax64(x, keep)
        above = mass_strictly_above(probs)
        # token i survives iff the mass of strictly more likely tokens is below top_p
        keep = {i for i in keep if above[probs[i]] < p.top_p}
    if p.min_p > 0.0:
        probs = softmax64(x, keep)
        top = max(probs.values())
        keep = {i for i in keep if probs[i] >= p.min_p * top}
    return softmax64(x, keep)


def softmax64(x: list[float], ids: set[int]) -> dict[int, float]:
    m = max(x[i] for i in ids)
    z = math.fsum(math.exp(x[i] - m) for i in ids)
    return {i: math.exp(x[i] - m) / z for i in ids}


def mass_strictly_above(probs: dict[int, float]) -> dict[float, float]:
    """{probability value: total probability of the tokens strictly more likely than that value}."""
    by_value: dict[float, list[float]] = {}
    for q in probs.values():
        by_value.setdefault(q, []).append(q)
    above, acc = {}, 0.0
    for value in sorted(by_value, reverse=True):
        above[value] = acc
        acc += math.fsum(by_value[value])
    return above


def support(logprobs: dict[int, float]) -> set[int]:
    return set(logprobs)


# ---------------------------------------------------------------- greedy and logprobs
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_is_argmax_and_input_is_untouched(dtype):
    torch.manual_seed(0)
    logits = torch.randn(6, 300).to(dtype)
    before = logits.clone()
    rng_before = torch.get_rng_state()
    out = sample(logits, [SamplingParams(temperature=0.0)] * 6)
    assert out.token_ids == logits.float().argmax(dim=-1).tolist()
    assert out.logprobs == [None] * 6
    assert torch.equal(logits, before)
    assert torch.equal(torch.get_rng_state(), rng_before), "greedy rows must not consume randomness"


def test_greedy_rows_in_a_mixed_batch_are_argmax():
    torch.manual_seed(1)
    logits = torch.randn(4, 50)
    params = [SamplingParams(temperature=0.0, top_k=3, top_p=0.1), SamplingParams(temperature=1.0),
              SamplingParams(temperature=0.0, seed=5), SamplingParams(temperature=0.7, min_p=0.2)]
    out = sample(logits, params)
    assert out.token_ids[0] == logits[0].argmax().item()
    assert out.token_ids[2] == logits[2].argmax().item()


def test_greedy_logprobs_are_log_softmax_top_n_sorted():
    torch.manual_seed(2)
    logits = torch.randn(3, 100)
    params = [SamplingParams(temperature=0.0, logprobs=5), SamplingParams(temperature=0.0),
              SamplingParams(temperature=0.0, logprobs=0)]
    out = sample(logits, params)
    ref = torch.log_softmax(logits.double(), dim=-1)
    lp = out.logprobs[0]
    assert list(lp) == ref[0].topk(5).indices.tolist()  # descending order, the argmax first
    for tok, val in lp.items():
        assert val == pytest.approx(ref[0, tok].item(), abs=1e-5)
    assert out.logprobs[1] is None
    assert out.logprobs[2] == {out.token_ids[2]: pytest.approx(ref[2].max().item(), abs=1e-5)}


def test_sampled_logprobs_use_the_tempered_distribution_and_include_the_sampled_token():
    torch.manual_seed(3)
    logits = torch.randn(64, 40)
    params = [SamplingParams(temperature=1.7, logprobs=2, seed=i) for i in range(64)]
    out = sample(logits, params)
    ref = torch.log_softmax(logits.double() / 1.7, dim=-1)
    outside_top2 = 0
    for row, (tok, lp) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        top2 = ref[row].topk(2).indices.tolist()
        assert list(lp)[:2] == top2
        assert tok in lp
        outside_top2 += tok not in top2
        assert len(lp) == (2 if tok in top2 else 3)
        for t, v in lp.items():
            assert v == pytest.approx(ref[row, t].item(), abs=1e-5)
    assert outside_top2 > 0, "the case 'sampled token outside the top-N' was never exercised"


# ---------------------------------------------------------------- exact masks (support of the distribution)
def masked_support(logits_row, p: SamplingParams) -> tuple[set[int], dict[int, float]]:
    """The support and log-probabilities the sampler reports for one row (V <= 20 so logprobs covers all)."""
    vocab = logits_row.shape[0]
    out = sample(logits_row.unsqueeze(0), [p.clone(logprobs=vocab)])
    return support(out.logprobs[0]), out.logprobs[0]


def test_top_k_keeps_ties_with_the_kth_value():
    logits = torch.tensor([2.0, 1.0, 1.0, 1.0, 0.0, -1.0])
    assert masked_support(logits, SamplingParams(top_k=2))[0] == {0, 1, 2, 3}
    assert masked_support(logits, SamplingParams(top_k=1))[0] == {0}
    assert masked_support(logits, SamplingParams(top_k=5))[0] == {0, 1, 2, 3, 4}
    assert masked_support(logits, SamplingParams(top_k=100))[0] == set(range(6))


def test_top_p_keeps_ties_at_the_boundary():
    probs = torch.tensor([0.4, 0.2, 0.2, 0.1, 0.1])
    logits = probs.log()
    # mass before token 1 (and its twin 2) is 0.4 < 0.5: both kept; token 3 has 0.8 before it.
    assert masked_support(logits, SamplingParams(top_p=0.5))[0] == {0, 1, 2}
    assert masked_support(logits, SamplingParams(top_p=0.3))[0] == {0}
    assert masked_support(logits, SamplingParams(top_p=0.85))[0] == {0, 1, 2, 3, 4}
    # top-p applies to the top-k survivors, renormalised: {0,1,2} -> 0.5, 0.25, 0.25
    assert masked_support(logits, SamplingParams(top_k=1, top_p=0.99))[0] == {0}
    assert masked_support(logits, SamplingParams(top_k=3, top_p=0.45))[0] == {0}
    assert masked_support(logits, SamplingParams(top_k=3, top_p=0.55))[0] == {0, 1, 2}


def test_min_p_keeps_tokens_at_the_threshold():
    logits = torch.tensor([3.0, 3.0, 1.0, 0.0])
    assert masked_support(logits, SamplingParams(min_p=1.0))[0] == {0, 1}
    ratio = math.exp(-2.0)  # token 2 vs the top tokens
    assert masked_support(logits, SamplingParams(min_p=ratio * 0.999))[0] == {0, 1, 2}
    assert masked_support(logits, SamplingParams(min_p=ratio * 1.001))[0] == {0, 1}


def random_params(gen: torch.Generator) -> SamplingParams:
    def pick(options):
        return options[torch.randint(len(options), (1,), generator=gen).item()]

    return SamplingParams(
        temperature=pick([0.3, 0.7, 1.0, 1.5]),
        top_k=pick([-1, 0, 1, 2, 3, 5, 8]),
        top_p=pick([1.0, 0.95, 0.8, 0.5, 0.3, 0.1]),
        min_p=pick([0.0, 0.0, 0.05, 0.2, 0.5]),
        seed=pick([None, 11, 12]),
    )


def test_masks_match_the_reference_on_random_rows_with_ties():
    gen = torch.Generator().manual_seed(4)
    checked = ambiguous = 0
    for _ in range(200):
        vocab = int(torch.randint(2, 17, (1,), generator=gen))
        # values rounded to 0.5 steps: ties are frequent, including at the boundaries
        row = (torch.randn(vocab, generator=gen) * 2).mul(2).round().div(2)
        p = random_params(gen)
        ref = reference_distribution(row.tolist(), p)
        if top_p_is_ill_conditioned(row.tolist(), p):
            ambiguous += 1
            continue
        got_support, got_lp = masked_support(row, p)
        assert got_support == set(ref), (row.tolist(), p)
        for tok, prob in ref.items():
            assert got_lp[tok] == pytest.approx(math.log(prob), abs=1e-5)
        checked += 1
    assert ambiguous < 10 and checked > 190


def top_p_is_ill_conditioned(row, p: SamplingParams) -> bool:
    """True when some cumulative mass lies within float32 rounding of top_p (either answer is right)."""
    if p.top_p >= 1.0:
        return False
    x = [v / p.temperature for v in row]
    keep = set(range(len(x)))
    if p.top_k > 0:
        kth = sorted(x, reverse=True)[min(p.top_k, len(x)) - 1]
        keep = {i for i in keep if x[i] >= kth}
    return any(abs(m - p.top_p) < 1e-5 for m in mass_strictly_above(softmax64(x, keep)).values())


MIXED_ROWS = [SamplingParams(top_p=0.9), SamplingParams(top_k=400, top_p=0.95), SamplingParams(top_k=300),
              SamplingParams(top_p=0.7, min_p=0.01), SamplingParams(temperature=0.0, top_p=0.1),
              SamplingParams(top_k=-1)]
# every top-p row also has a top-k below the candidate count: the normaliser comes from the candidates
TOP_K_ROWS = [SamplingParams(top_k=200, top_p=0.9), SamplingParams(top_k=50, top_p=0.5),
              SamplingParams(top_k=20), SamplingParams(temperature=0.0)]


@pytest.mark.parametrize("scale, wide, params", [(4.0, False, MIXED_ROWS), (0.3, True, MIXED_ROWS),
                                                 (4.0, False, TOP_K_ROWS), (0.3, True, TOP_K_ROWS)])
def test_masks_match_the_reference_on_a_large_vocabulary(scale, wide, params):
    """V > the sorted candidates examined first: peaked rows stay inside them, flat rows need the fallback
    (with TOP_K_ROWS, ties with the k-th value reach past the candidates)."""
    gen = torch.Generator().manual_seed(10)
    vocab = 3000
    rows = (torch.randn(len(params), vocab, generator=gen) * scale).mul(4).round().div(4)  # with ties
    got = rows.clone()
    greedy = [p.greedy for p in params]
    _apply_top_k_top_p(got, params, greedy)
    _apply_min_p(got, params, greedy)
    widths = []
    for r, p in enumerate(params):
        if p.greedy:  # greedy rows are never filtered
            assert torch.isfinite(got[r]).all()
            continue
        assert not top_p_is_ill_conditioned(rows[r].tolist(), p)
        ref = set(reference_distribution(rows[r].tolist(), p))
        assert set(torch.isfinite(got[r]).nonzero().flatten().tolist()) == ref, r
        widths.append(len(ref))
    nucleus = widths[0]
    assert (nucleus > 256) == wide, nucleus  # the fallback path is (or is not) exercised


# ---------------------------------------------------------------- frequencies (chi-square)
def chi_square(counts: torch.Tensor, ref: dict[int, float], total: int) -> tuple[float, int]:
    stat = sum((counts[t].item() - total * q) ** 2 / (total * q) for t, q in ref.items())
    return stat, len(ref) - 1


def test_unseeded_frequencies_match_the_filtered_softmax():
    torch.manual_seed(5)
    vocab, draws = 12, 40_000
    row = torch.randn(vocab) * 1.5
    p = SamplingParams(temperature=0.8, top_k=8, top_p=0.97, min_p=0.02)
    ref = reference_distribution(row.tolist(), p)
    assert 3 <= len(ref) < vocab, "the filters should cut some tokens but leave several"
    out = sample(row.expand(draws, vocab), [p] * draws)
    counts = torch.bincount(torch.tensor(out.token_ids), minlength=vocab)
    assert set(torch.nonzero(counts).flatten().tolist()) <= set(ref), "a masked token was sampled"
    stat, df = chi_square(counts, ref, draws)
    assert stat < CHI2_CRIT_0_001[df], (stat, df)


def test_seeded_stream_frequencies_match_the_filtered_softmax():
    vocab, steps = 8, 3000
    row = torch.tensor([1.0, 0.5, 0.3, 0.0, -0.2, -1.0, -3.0, 0.9])
    p = SamplingParams(temperature=1.2, top_p=0.9, seed=1234)
    ref = reference_distribution(row.tolist(), p)
    gen = make_generator(p.seed)
    tokens = [SAMPLER(row.unsqueeze(0), meta_for([p], generators=[gen])).token_ids[0] for _ in range(steps)]
    counts = torch.bincount(torch.tensor(tokens), minlength=vocab)
    assert set(torch.nonzero(counts).flatten().tolist()) <= set(ref)
    stat, df = chi_square(counts, ref, steps)
    assert stat < CHI2_CRIT_0_001[df], (stat, df)


def test_chi_square_detects_a_wrong_distribution():
    """Guards the two tests above: the same statistic rejects draws from the unfiltered softmax."""
    torch.manual_seed(6)
    vocab, draws = 12, 40_000
    row = torch.randn(vocab) * 1.5
    p = SamplingParams(temperature=0.8)
    ref = reference_distribution(row.tolist(), p)
    out = sample(row.expand(draws, vocab), [SamplingParams(temperature=1.0)] * draws)
    counts = torch.bincount(torch.tensor(out.token_ids), minlength=vocab)
    stat, df = chi_square(counts, ref, draws)
    assert stat > CHI2_CRIT_0_001[df]


# ---------------------------------------------------------------- seeds
def run_steps(row_params, steps, batch_logits, row, others):
    """Sample `steps` tokens for row `row` of a batch, feeding back outputs; returns that row's tokens."""
    rows = len(others) + 1
    params = others[:row] + [row_params] + others[row:]
    gens = [make_generator(p.seed) for p in params]
    outputs = [[] for _ in range(rows)]
    prompts = [[3, 4, 5]] * rows
    for step in range(steps):
        logits = batch_logits(step, rows, row)
        out = SAMPLER(logits, meta_for(params, outputs=outputs, prompts=prompts, generators=gens))
        for r, tok in enumerate(out.token_ids):
            outputs[r].append(tok)
    return outputs[row]


def test_seed_gives_the_same_tokens_alone_or_in_any_batch():
    vocab = 200
    target = SamplingParams(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.1,
                            presence_penalty=0.3, seed=42, logprobs=3)

    def logits_fn(step, rows, row):
        # the target row's logits depend only on the step; the others are fresh noise every call
        g = torch.Generator().manual_seed(1000 + step)
        batch = torch.randn(rows, vocab) * 3
        batch[row] = torch.randn(vocab, generator=g) * 3
        return batch

    torch.manual_seed(0)
    alone = run_steps(target, 40, logits_fn, 0, [])
    others = [SamplingParams(), SamplingParams(temperature=0.0), SamplingParams(seed=42, top_k=5),
              SamplingParams(temperature=1.5, min_p=0.1, seed=7), SamplingParams(frequency_penalty=1.0)]
    torch.manual_seed(123)  # a different global RNG state must not matter either
    in_batch = run_steps(target, 40, logits_fn, 3, others)
    torch.manual_seed(9)
    first_in_batch = run_steps(target, 40, logits_fn, 0, others[:2])
    assert alone == in_batch == first_in_batch
    other_seed = run_steps(target.clone(seed=43), 40, logits_fn, 0, [])
    assert other_seed != alone


def test_seeded_rows_leave_the_global_rng_alone():
    torch.manual_seed(0)
    logits = torch.randn(3, 30)
    before = torch.get_rng_state()
    sample(logits, [SamplingParams(seed=1), SamplingParams(seed=2), SamplingParams(temperature=0)])
    assert torch.equal(torch.get_rng_state(), before)
    sample(logits[:2], [SamplingParams(seed=1), SamplingParams()])
    assert not torch.equal(torch.get_rng_state(), before)


def test_make_generator_and_child_seed():
    assert make_generator(None) is None
    a = torch.rand(4, generator=make_generator(-5))
    b = torch.rand(4, generator=make_generator(-5))
    assert torch.equal(a, b)
    assert child_seed(77, 0) == 77
    children = {child_seed(77, i) for i in range(1, 50)}
    assert len(children) == 49 and 77 not in children
    assert child_seed(77, 3) == child_seed(77, 3) != child_seed(78, 3)
    assert all(0 <= s < 2**64 for s in children)


# ---------------------------------------------------------------- penalties
def test_repetition_penalty_matches_transformers():
    torch.manual_seed(7)
    vocab = 60
    logits = torch.randn(3, vocab) * 4
    prompts = [[1, 5, 5, 9], [2, 3], [10, 20, 30]]
    outputs = [[9, 40], [], [30, 30, 31]]
    penalties = [1.3, 0.7, 2.0]
    params = [SamplingParams(repetition_penalty=r) for r in penalties]
    got = logits.clone()
    _apply_penalties(got, meta_for(params, outputs=outputs, prompts=prompts))
    for row in range(3):
        ids = torch.tensor([prompts[row] + outputs[row]])
        expected = RepetitionPenaltyLogitsProcessor(penalties[row])(ids, logits[row:row + 1].clone())
        torch.testing.assert_close(got[row:row + 1], expected, rtol=0, atol=1e-6)
    assert not torch.equal(got, logits)


def test_presence_and_frequency_follow_the_openai_formula():
    torch.manual_seed(8)
    vocab = 30
    logits = torch.randn(2, vocab)
    prompts = [[4, 4, 6], [1]]
    outputs = [[6, 7, 7, 7], [2, 2]]
    params = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25),
              SamplingParams(presence_penalty=-1.0, frequency_penalty=2.0)]
    got = logits.clone()
    _apply_penalties(got, meta_for(params, outputs=outputs, prompts=prompts))
    for row, p in enumerate(params):
        expected = logits[row].clone()
        for tok in set(outputs[row]):  # output tokens only: the prompt's 4 is not penalised
            count = outputs[row].count(tok)
            expected[tok] -= count * p.frequency_penalty + p.presence_penalty
        torch.testing.assert_close(got[row], expected, rtol=0, atol=1e-6)


def test_penalties_change_the_greedy_choice_through_the_public_call():
    logits = torch.tensor([[5.0, 4.9, 1.0, 0.0]])
    base = SamplingParams(temperature=0.0)
    assert sample(logits, [base], outputs=[[0]]).token_ids == [0]
    assert sample(logits, [base.clone(presence_penalty=0.2)], outputs=[[0]]).token_ids == [1]
    assert sample(logits, [base.clone(repetition_penalty=1.1)], prompts=[[0]]).token_ids == [1]
    lp = sample(logits, [base.clone(frequency_penalty=0.1, logprobs=4)], outputs=[[0, 0]]).logprobs[0]
    expected = torch.log_softmax(torch.tensor([4.8, 4.9, 1.0, 0.0], dtype=torch.float64), dim=0)
    assert list(lp) == [1, 0, 2, 3]
    assert [lp[t] for t in range(4)] == pytest.approx(expected.tolist(), abs=1e-5)


# ---------------------------------------------------------------- min_tokens
def test_min_tokens_masks_eos_and_stop_token_ids():
    logits = torch.tensor([[0.0, 9.0, 8.0, 7.0, 1.0]])  # EOS=1 is the argmax, then stop token 2
    p = SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[2])
    assert sample(logits, [p], outputs=[[4, 4]]).token_ids == [3]
    assert sample(logits, [p], outputs=[[4, 4, 4]]).token_ids == [1]
    # ignore_eos: EOS does not stop the sequence, so it is not masked; stop tokens still are
    ignore = p.clone(ignore_eos=True, temperature=1.0, logprobs=5)
    lp = sample(logits, [ignore], outputs=[[4]]).logprobs[0]
    assert 1 in lp and 2 not in lp
    # several EOS ids (e.g. Llama-3's) are all masked
    both = sample(logits, [p.clone(stop_token_ids=[])], outputs=[[]], eos=(1, 2)).token_ids
    assert both == [3]


def test_min_tokens_masking_is_per_row():
    logits = torch.tensor([[0.0, 9.0, 1.0], [0.0, 9.0, 1.0]])
    params = [SamplingParams(temperature=0.0, min_tokens=2), SamplingParams(temperature=0.0, min_tokens=2)]
    out = sample(logits, params, outputs=[[0], [0, 0]])
    assert out.token_ids == [2, 1]


# ---------------------------------------------------------------- logit_bias
def test_logit_bias_forces_and_bans_tokens_in_greedy_and_sampled_rows():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    top = int(logits[0].argmax())
    forced = (top + 7) % 50
    params = [
        SamplingParams(temperature=0.0, logit_bias={forced: 100.0}),  # greedy: the plain-argmax fast path
        SamplingParams(temperature=1.0, logit_bias={forced: 100.0}),  # sampled
        SamplingParams(temperature=0.0, logit_bias={top: -100.0}),  # greedy, its argmax banned
        SamplingParams(temperature=0.0),  # untouched beside them
    ]
    logits[2] = logits[0]
    logits[3] = logits[0]
    for _ in range(20):
        out = sample(logits, params).token_ids
        assert out[0] == forced and out[1] == forced
        assert out[2] != top and out[2] == int(logits[0].clone().index_fill_(0, torch.tensor([top]),
                                                                             -math.inf).argmax())
        assert out[3] == top
    # A banned token is never drawn from a flat distribution.
    flat = torch.zeros(1, 4)
    banned = SamplingParams(temperature=1.0, logit_bias={0: -100.0, 1: -100.0, 2: -100.0})
    assert {sample(flat, [banned]).token_ids[0] for _ in range(50)} == {3}


def test_logit_bias_alone_leaves_the_plain_greedy_path():
    """A batch of greedy rows, one with a bias: the bias must still apply (no raw argmax)."""
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0]])
    biased = SamplingParams(temperature=0.0, logit_bias={2: 10.0})
    out = sample(logits, [SamplingParams(temperature=0.0), biased])
    assert out.token_ids == [1, 2]
    # The reported logprobs come from the biased distribution.
    lp = sample(logits[:1], [biased.clone(logprobs=1)]).logprobs[0]
    expected = torch.log_softmax(torch.tensor([0.0, 5.0, 11.0]), 0)[2].item()
    assert next(iter(lp)) == 2 and lp[2] == pytest.approx(expected)
