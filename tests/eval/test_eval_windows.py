"""Which tokens the perplexity windows score, worked by hand."""

from __future__ import annotations

import pytest

from nanoserve.eval.windows import Window, make_windows


def _scored(windows: list[Window]) -> list[int]:
    return [pos for w in windows for pos in range(w.score_from, w.end)]


def test_non_overlapping_windows_skip_each_first_token():
    # 10 tokens, context 4: [0,4) [4,8) [8,10); each window's first token has no context in it.
    ws = make_windows(10, 4)
    assert ws == [Window(0, 4, 1), Window(4, 8, 5), Window(8, 10, 9)]
    assert _scored(ws) == [1, 2, 3, 5, 6, 7, 9]
    assert [w.num_scored for w in ws] == [3, 3, 1]


def test_last_window_of_one_token_is_dropped():
    # 9 tokens, context 4: the window [8,9) would score nothing.
    assert make_windows(9, 4) == [Window(0, 4, 1), Window(4, 8, 5)]


def test_overlapping_windows_score_only_new_tokens():
    # stride 2: windows start at 0, 2, 4, 6; each scores the 2 tokens no earlier window scored.
    ws = make_windows(10, 4, stride=2)
    assert ws == [Window(0, 4, 1), Window(2, 6, 4), Window(4, 8, 6), Window(6, 10, 8)]
    assert _scored(ws) == list(range(1, 10))  # every token but the text's first, once
    # stride 3: token 4 is scored by [3,7) with 1 token of context before it (context - stride = 1).
    ws = make_windows(10, 4, stride=3)
    assert ws == [Window(0, 4, 1), Window(3, 7, 4), Window(6, 10, 7)]
    assert _scored(ws) == list(range(1, 10))


def test_text_shorter_than_context_is_one_window():
    assert make_windows(3, 512) == [Window(0, 3, 1)]
    assert make_windows(1, 512) == []


@pytest.mark.parametrize("context,stride", [(1, None), (4, 0), (4, 5)])
def test_bad_context_or_stride(context, stride):
    with pytest.raises(ValueError):
        make_windows(10, context, stride)
