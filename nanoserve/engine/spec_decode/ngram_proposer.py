"""Prompt lookup (n-gram) drafts: if the sequence's last n tokens occurred earlier, guess that what
followed them then follows them now. No model, no state; pure Python.

The longest suffix first (prompt_lookup_max down to prompt_lookup_min) and, for a given n, its earliest
occurrence, as vLLM's proposer picks it; the draft is the up to k tokens that followed it. Copying and
editing tasks (the answer repeats the prompt) accept most of them; elsewhere it proposes little or
nothing. Earliest rather than latest: once an answer repeats a short n-gram of its own, the latest
occurrence is in the answer and proposes what followed there, while the earliest is in the prompt the
answer copies (demo copy task, k = 6: 4.9 verify steps per answer instead of 5.2, 6% fewer rows).
"""

from __future__ import annotations

from nanoserve.engine.sequence import Sequence


class NgramProposer:
    def __init__(self, prompt_lookup_min: int, prompt_lookup_max: int) -> None:
        self.min_n = prompt_lookup_min
        self.max_n = prompt_lookup_max

    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> list[list[int]]:
        """Up to num_tokens[i] drafts for each of `seqs` (possibly none)."""
        return [lookup(s.token_ids, k, self.min_n, self.max_n) if k > 0 else []
                for s, k in zip(seqs, num_tokens, strict=True)]

    def free(self, seq: Sequence) -> None:
        """Nothing held per sequence."""

    def check_all_free(self) -> None:
        """Nothing held."""


def lookup(tokens: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    """The k tokens after the earliest occurrence of the longest matching suffix of `tokens`."""
    length = len(tokens)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        suffix = tokens[length - n :]
        first = suffix[0]
        # Earliest start i < length - n with tokens[i : i + n] == suffix (so at least one token follows).
        for i in range(length - n):
            if tokens[i] == first and tokens[i : i + n] == suffix:
                return tokens[i + n : i + n + k]
    return []
