"""Which tokens of a long text a fixed-context model scores: windows of `context` tokens, `stride` apart.

As Hugging Face's perplexity guide: window k covers [k * stride, k * stride + context) (the last one
cut at the text's end); it scores only the tokens no earlier window scored, so with stride < context
each scored token sees at least context - stride tokens before it. A window's first token has no
context inside the window and is never scored: with stride == context (non-overlapping windows) that
is one unscored token per window; with overlap, only the text's very first token goes unscored.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    start: int  # first token of the window (index into the text's tokens)
    end: int  # one past its last token
    score_from: int  # first scored position; tokens [score_from, end) are scored

    @property
    def num_scored(self) -> int:
        return self.end - self.score_from


def make_windows(num_tokens: int, context: int, stride: int | None = None) -> list[Window]:
    """The windows over a text of `num_tokens` tokens; stride None means context (no overlap)."""
    stride = context if stride is None else stride
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens, got {context}")
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    windows: list[Window] = []
    start, prev_end = 0, 0
    while start < num_tokens:
        end = min(start + context, num_tokens)
        score_from = max(prev_end, start + 1)
        if end > score_from:  # a last window of one new token at its start scores nothing
            windows.append(Window(start, end, score_from))
        prev_end = end
        if end == num_tokens:
            break
        start += stride
    return windows
