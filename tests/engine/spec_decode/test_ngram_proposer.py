from __future__ import annotations

from nanoserve.engine.spec_decode.ngram_proposer import lookup


def test_longest_suffix_wins_and_its_latest_occurrence():
    tokens = [1, 2, 3, 9, 2, 3, 4, 5, 1, 2, 3]
    # suffix [1, 2, 3] occurred at 0 (followed by 9); a shorter suffix [2, 3] occurs later (-> 4 5)
    assert lookup(tokens, 2, 1, 3) == [9, 2]
    assert lookup(tokens, 3, 1, 2) == [4, 5, 1]  # max 2: [2, 3] latest earlier at 4


def test_no_match_proposes_nothing_and_k_caps_the_draft():
    assert lookup([1, 2, 3, 4], 3, 1, 4) == []
    assert lookup([7, 8, 9, 7], 1, 1, 4) == [8]
    assert lookup([7, 8, 9, 7], 5, 1, 4) == [8, 9, 7]  # what followed, up to the end
    assert lookup([7, 8, 9, 7], 5, 2, 4) == []  # no 2-gram match
