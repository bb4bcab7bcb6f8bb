"""Synthetic benchmark requests: random token ids with vLLM's `random` dataset lengths.

vLLM's semantics: lengths are drawn uniformly from the integers in
[floor(L·(1−r)), ceil(L·(1+r))] for `--input-len L --range-ratio r` (the output length likewise, at
least 1); r = 0 gives fixed lengths. Token ids are drawn from the ordinary vocabulary, avoiding
the special ids, so that a request never stops early on a random EOS (benchmarks also set
ignore_eos).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from nanoserve.errors import InvalidRequestError


@dataclass
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int  # tokens the request asks for (max_tokens, with ignore_eos)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def length_bounds(length: int, range_ratio: float, what: str = "length") -> tuple[int, int]:
    """(low, high), inclusive, of vLLM's uniform length interval."""
    if not isinstance(length, int) or length < 1:
        raise InvalidRequestError(f"{what} must be a positive integer (got {length!r})", what)
    if not 0.0 <= range_ratio < 1.0:
        raise InvalidRequestError(f"range ratio must be in [0, 1) (got {range_ratio})", "range_ratio")
    low = max(1, math.floor(length * (1 - range_ratio)))
    high = max(low, math.ceil(length * (1 + range_ratio)))
    return low, high


def random_requests(
    num_prompts: int,
    input_len: int,
    output_len: int,
    vocab_size: int,
    range_ratio: float = 0.0,
    input_range_ratio: float | None = None,
    output_range_ratio: float | None = None,
    seed: int = 0,
    special_ids: Iterable[int] = (),
) -> list[BenchRequest]:
    """`num_prompts` requests with random prompts; the same seed gives the same requests."""
    if num_prompts < 1:
        raise InvalidRequestError(f"num_prompts must be >= 1 (got {num_prompts})", "num_prompts")
    in_lo, in_hi = length_bounds(
        input_len, range_ratio if input_range_ratio is None else input_range_ratio, "input_len"
    )
    out_lo, out_hi = length_bounds(
        output_len, range_ratio if output_range_ratio is None else output_range_ratio, "output_len"
    )
    special = set(special_ids)
    allowed = [t for t in range(min(vocab_size, 1 << 20)) if t not in special]
    if not allowed:
        raise InvalidRequestError("the vocabulary has no ordinary token to build prompts from", "model")
    rng = random.Random(seed)
    requests = []
    for _ in range(num_prompts):
        n_in = rng.randint(in_lo, in_hi)
        ids = [allowed[rng.randrange(len(allowed))] for _ in range(n_in)]
        requests.append(BenchRequest(ids, rng.randint(out_lo, out_hi)))
    return requests


def token_counts(requests: list[BenchRequest]) -> tuple[int, int]:
    """(prompt tokens, requested output tokens) over all requests."""
    return sum(r.prompt_len for r in requests), sum(r.output_len for r in requests)
