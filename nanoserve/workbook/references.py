"""Reference solutions for build exercises whose answer is an algorithm the planner does not compute.

Hidden tests take their expected values from the planner where it has the calculation and from these
functions otherwise, so no expected output is typed into the bank.
"""

from __future__ import annotations

import math

from nanoserve.planner.memory import quantize_symmetric


def kv_cache_speedup(seq_len: int) -> float:
    """Token-positions processed without a KV cache (1 + 2 + … + T) over with one (T): (T + 1) / 2."""
    return (seq_len * (seq_len + 1) / 2) / seq_len


def softmax_temperature(logits: list[float], temperature: float) -> list[float]:
    """softmax(z / T), shifted by max(z) for numerical stability."""
    top = max(logits)
    e = [math.exp((z - top) / temperature) for z in logits]
    total = sum(e)
    return [x / total for x in e]


def top_k_indices(probs: list[float], k: int) -> list[int]:
    """Indices of the k most likely tokens, most likely first (ties: lower index first)."""
    return sorted(range(len(probs)), key=lambda i: (-probs[i], i))[:k]


def top_p_indices(probs: list[float], p: float) -> list[int]:
    """Smallest set of most-likely tokens whose probability sums to at least p, most likely first."""
    out, total = [], 0.0
    for i in top_k_indices(probs, len(probs)):
        out.append(i)
        total += probs[i]
        if total >= p - 1e-12:
            break
    return out


def tpot(latency_s: float, ttft_s: float, output_tokens: int) -> float:
    """Time per output token as vLLM's benchmark defines it: (latency − TTFT) / (output_tokens − 1)."""
    return 0.0 if output_tokens <= 1 else (latency_s - ttft_s) / (output_tokens - 1)


def static_batch_utilization(lengths: list[int], slots: int) -> float:
    """Static batching in arrival order: each batch of `slots` runs as long as its longest request."""
    steps = sum(max(lengths[i:i + slots]) for i in range(0, len(lengths), slots))
    return sum(lengths) / (slots * steps) if steps else 0.0


def greedy_accept(draft: list[int], target: list[int]) -> list[int]:
    """Greedy speculative verification: target[i] is the target's choice after draft[:i] (len k + 1).

    Keep drafts while they equal the target's choice; at the first mismatch emit the target's token
    instead and stop; if all k match, also emit the bonus token target[k].
    """
    out = []
    for i, tok in enumerate(draft):
        if tok != target[i]:
            return out + [target[i]]
        out.append(tok)
    return out + [target[len(draft)]]


def cached_prefix_tokens(cached: list[int], prompt: list[int], block_size: int) -> int:
    """Tokens of `prompt` served from a prefix cache holding `cached`: the common prefix in full blocks."""
    n = 0
    while n < min(len(cached), len(prompt)) and cached[n] == prompt[n]:
        n += 1
    return n // block_size * block_size


def quantize_per_group(weights: list[float], group_size: int, bits: int = 8) -> list[int]:
    """Symmetric quantization with one scale per group of `group_size` consecutive weights."""
    codes: list[int] = []
    for i in range(0, len(weights), group_size):
        codes += quantize_symmetric(weights[i:i + group_size], bits).codes
    return codes


def max_addition_len(digits: int) -> int:
    """Tokens of the longest "a+b=c" with `digits`-digit operands: digits, '+', digits, '=', digits + 1."""
    return digits + 1 + digits + 1 + (digits + 1)
