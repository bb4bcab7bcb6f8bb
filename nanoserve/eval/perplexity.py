"""Perplexity of a text through the engine's own prompt log-probabilities.

Each window is one request (its token ids as the prompt, `prompt_logprobs=0`, one output token); the
engine returns log p(token_i | tokens before it in the window) for every prompt token, and the scored
tokens' negative log-probabilities are averaged: perplexity = exp(sum NLL / tokens scored).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from nanoserve.eval.windows import Window, make_windows


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float  # nats per scored token
    total_nll: float  # nats
    tokens_scored: int
    windows: int
    context: int  # tokens per window
    stride: int
    text_tokens: int  # tokens of text the windows cover
    elapsed_s: float  # engine time for all windows
    tokens_per_s: float  # window tokens run through the model per second

    def derivation(self) -> str:
        return (
            f"perplexity = exp(sum NLL / tokens scored) = exp({self.total_nll:.2f} nats / "
            f"{self.tokens_scored} tokens) = exp({self.mean_nll:.4f}) = {self.perplexity:.4f} "
            f"({self.windows} windows of <= {self.context} tokens, stride {self.stride}, over "
            f"{self.text_tokens} tokens of text; {self.elapsed_s:.1f} s, {self.tokens_per_s:.0f} tok/s)"
        )


def token_nlls(llm: Any, token_ids: list[int], windows: list[Window], use_tqdm: bool = False) -> list[float]:
    """-log p of every scored token, in text order, from the engine's prompt log-probabilities."""
    from nanoserve.sampling_params import SamplingParams

    params = SamplingParams(prompt_logprobs=0, max_tokens=1, temperature=0.0)
    prompts = [{"prompt_token_ids": token_ids[w.start : w.end]} for w in windows]
    outputs = llm.generate(prompts, params, use_tqdm=use_tqdm)
    nlls: list[float] = []
    for w, out in zip(windows, outputs, strict=True):
        entries = out.prompt_logprobs  # entry i: {token id: logprob} of the window's token i; entry 0 None
        for pos in range(w.score_from, w.end):
            nlls.append(-entries[pos - w.start][token_ids[pos]])
    return nlls


def perplexity(
    llm: Any, token_ids: list[int], context: int, stride: int | None = None, use_tqdm: bool = False
) -> PerplexityResult:
    """Perplexity of `token_ids` under `llm` (an nanoserve LLM), windowed as `make_windows` says."""
    windows = make_windows(len(token_ids), context, stride)
    if not windows:
        raise ValueError(f"nothing to score in {len(token_ids)} tokens")
    t0 = time.perf_counter()
    nlls = token_nlls(llm, token_ids, windows, use_tqdm)
    elapsed_s = time.perf_counter() - t0
    total = math.fsum(nlls)
    mean = total / len(nlls)
    return PerplexityResult(
        perplexity=math.exp(mean),
        mean_nll=mean,
        total_nll=total,
        tokens_scored=len(nlls),
        windows=len(windows),
        context=context,
        stride=context if stride is None else stride,
        text_tokens=len(token_ids),
        elapsed_s=elapsed_s,
        tokens_per_s=sum(w.end - w.start for w in windows) / elapsed_s if elapsed_s > 0 else 0.0,
    )
