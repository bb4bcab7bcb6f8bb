"""Trace options give nothing away by their form: the right one is not reliably the longest (nor the
shortest), every option has its own reason, and options that carry a variant's numbers stay distinct and
right on every variant."""

from __future__ import annotations

import statistics

import pytest

from nanoserve.workbook.bank import default_bank, render, solve

BANK = default_bank()
TRACES = [e for e in BANK.exercises if e.type == "trace"]
# Shuffling already hides the position; a learner who always picks the longest (or shortest) option
# should do no better than guessing among 3–4 options, so neither may hold in more than 40% of traces.
MAX_CUE_FRACTION = 0.4
N_VARIANTS = 20


def _lengths(e) -> list[int]:
    return [len(o) for o in render(e, 0).options]


def _strictly(pick, lengths: list[int], i: int) -> bool:
    return lengths[i] == pick(lengths) and lengths.count(lengths[i]) == 1


def test_there_are_enough_traces_to_measure():
    assert len(TRACES) >= 25


@pytest.mark.parametrize("e", TRACES, ids=lambda e: e.id)
def test_every_trace_has_three_options_and_a_reason_for_each_wrong_one(e):
    assert len(e.options) >= 3
    assert len(e.why) == len(e.options)
    for i, reason in enumerate(e.why):
        if i == e.correct:
            assert not reason.strip(), f"{e.id}: the right option needs no reason against it"
        else:
            assert reason.strip(), f"{e.id}: option {i} is wrong without saying why"


def test_the_right_option_is_not_usually_the_longest():
    longest = [e.id for e in TRACES if _strictly(max, _lengths(e), e.correct)]
    assert len(longest) / len(TRACES) <= MAX_CUE_FRACTION, f"right option longest in {longest}"


def test_the_right_option_is_not_usually_the_shortest():
    shortest = [e.id for e in TRACES if _strictly(min, _lengths(e), e.correct)]
    assert len(shortest) / len(TRACES) <= MAX_CUE_FRACTION, f"right option shortest in {shortest}"


def test_the_right_option_is_of_ordinary_length_in_most_traces():
    # Within ±30% of the mean option length: no option stands out as the "carefully worded" one.
    odd = []
    for e in TRACES:
        lengths = _lengths(e)
        mean = statistics.mean(lengths)
        if abs(lengths[e.correct] - mean) > 0.3 * mean:
            odd.append(e.id)
    assert len(odd) <= 0.2 * len(TRACES), f"right option far from the mean length in {odd}"


VARIED = [e for e in TRACES if e.variants]


def test_some_traces_carry_variant_numbers():
    assert len(VARIED) >= 3


@pytest.mark.parametrize("e", VARIED, ids=lambda e: e.id)
def test_variant_options_stay_distinct_and_filled_in(e):
    for v in range(N_VARIANTS + 1):
        options = render(e, v).options
        assert len(set(options)) == len(options), f"{e.id} variant {v}: two options read the same"
        assert not any("{" in o for o in options), f"{e.id} variant {v}: a placeholder left unformatted"


def test_latency_check_is_achievable_on_every_variant():
    # Its right option says "Yes, with time to spare": every variant must keep prefill under the target.
    e = next(e for e in TRACES if e.id == "000-9.6")
    for v in range(N_VARIANTS + 1):
        assert solve(e, v).values["left"] > 0, f"variant {v}: prefill exceeds the TTFT target"
