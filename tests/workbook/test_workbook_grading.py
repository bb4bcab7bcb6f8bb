"""Typed answers: numbers with units, conversions, and clear messages for slips and non-numbers."""

from __future__ import annotations

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.workbook.grading import convert, grade_number, parse_number, parse_quantity


@pytest.mark.parametrize("text", ["17.5 GB", "17.5GB", "1.75e10 bytes", "1.75×10^10 bytes", "17500 MB",
                                  "0.0175 TB", "17,500,000,000 bytes", "1.75 × 10¹⁰ B", " 17.5 gb "])
def test_same_quantity_many_spellings(text):
    assert grade_number(text, 17.5, "GB").correct


def test_bare_number_is_in_the_expected_unit_and_tolerance_applies():
    assert grade_number("17.6", 17.5, "GB", rel_tol=0.02).correct
    g = grade_number("19.25", 17.5, "GB", rel_tol=0.02)
    assert not g.correct and "too high" in g.message and "10%" in g.message


def test_unit_slip_across_dimensions_is_named():
    g = grade_number("40 ms", 17.5, "GB")
    assert not g.correct and g.given is None
    assert "unit slip" in g.message and "time" in g.message


def test_prefix_slip_is_named():
    g = grade_number("17500", 17.5, "GB")
    assert not g.correct and "factor of 1,000" in g.message


def test_fraction_typed_as_percentage():
    assert grade_number("75%", 0.75, "fraction").correct
    assert grade_number("3/4", 0.75, "fraction").correct
    g = grade_number("75", 0.75, "fraction")
    assert not g.correct and "percentage" in g.message


@pytest.mark.parametrize("text", ["abc", "", "   ", "seventeen", "1 2", "GB 17"])
def test_non_numbers_are_rejected_clearly(text):
    g = grade_number(text, 17.5, "GB")
    assert not g.correct and g.given is None and g.message


def test_unknown_unit_lists_accepted_ones():
    g = grade_number("17.5 zorks", 17.5, "GB")
    assert "unknown unit" in g.message and "gib" in g.message


def test_dimension_decides_what_b_means():
    assert parse_quantity("70.6B", "B params").value == pytest.approx(70.6)
    assert parse_quantity("1.41e11 B", "GB").value == pytest.approx(141)


def test_money_and_rates():
    assert grade_number("$0.65", 0.648, "$/1M tokens").correct
    assert grade_number("$98,280", 98280, "$/month").correct
    assert grade_number("2.56x", 2.56, "×").correct
    assert grade_number("0.52 ms", 0.000522, "s").correct


def test_integer_answers_must_be_whole():
    assert grade_number("27", 27, "microbatches", integer=True).correct
    assert not grade_number("27.4", 27, "microbatches", integer=True).correct
    assert grade_number("36 GPUs", 36, "GPUs", integer=True).correct


def test_convert_and_parse_errors():
    assert convert(2**30, "bytes", "GiB") == 1
    assert convert(1, "days", "s") == 86400
    with pytest.raises(InvalidRequestError):
        convert(1, "GB", "ms")
    with pytest.raises(InvalidRequestError):
        parse_number("1/0")
