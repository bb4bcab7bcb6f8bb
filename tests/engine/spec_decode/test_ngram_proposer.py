from __future__ import annotations

from nanoserve.engine.spec_decode.ngram_proposer import lookup


def test_longest_suffix_wins_and_its_earliest_occurrence():
    tokens = [1, 2, 3, 9, 2, 3, 4, 5, 1, 2, 3]
    # suffix [1, 2, 3] occurred at 0 (followed by 9); a shorter suffix [2, 3] occurs later (-> 4 5)
    assert lookup(tokens, 2, 1, 3) == [9, 2]
    assert lookup(tokens, 3, 1, 2) == [9, 2, 3]  # max 2: [2, 3] earliest at 1 (vLLM's choice), not 4
    # Two earlier occurrences of the same suffix: the first one's continuation (the latest would give 8 2).
    assert lookup([4, 7, 1, 4, 8, 2, 4], 2, 1, 3) == [7, 1]


def test_no_match_proposes_nothing_and_k_caps_the_draft():
    assert lookup([1, 2, 3, 4], 3, 1, 4) == []
    assert lookup([7, 8, 9, 7], 1, 1, 4) == [8]
    assert lookup([7, 8, 9, 7], 5, 1, 4) == [8, 9, 7]  # what followed, up to the end
    assert lookup([7, 8, 9, 7], 5, 2, 4) == []  # no 2-gram match
