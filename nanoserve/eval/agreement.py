"""Agreement of a quantized serving configuration with the unquantized model: top-1 and KL per next token.

For every position of fixed prompts, both engines' full next-token distributions are compared:
top-1 agreement = share of positions where argmax(ref) == argmax(method), and mean KL(ref ‖ method) =
mean over positions of sum_v p_ref(v) (log p_ref(v) - log p_method(v)), in nats.

Where the distributions come from: the engine's prompt log-probabilities return only the top-N and
the prompt token, so the full rows are taken from the engine's own logits call instead. While a prompt
runs (as one request with `prompt_logprobs=0` and one output token, prefix caching off), the runner's
`model.compute_logits` is wrapped to keep a float32 copy of every row it computes: the prompt rows
(positions 0 .. L-2) and the sampling row (position L-1), in that order, chunked prefill included.
So the logits are exactly those the engine serves, through its quantized linears and its KV cache.

A method is `+`-joined parts: a quantization method (int8, int4, w8a8) and/or `kv:<dtype>` for the
KV-cache dtype (when this build's EngineArgs has `kv_cache_dtype`), e.g. `int8`, `kv:int8`, `w8a8+kv:int8`.
The reference is the same engine flags without either, in the same dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import torch

from nanoserve.config import EngineArgs


@dataclass(frozen=True)
class AgreementResult:
    method: str
    positions: int  # next-token distributions compared
    prompts: int
    top1_agreement: float  # share of positions, in [0, 1]
    mean_kl_nats: float  # mean KL(ref ‖ method) per position
    max_kl_nats: float


def method_overrides(method: str) -> dict[str, Any]:
    """EngineArgs fields a method sets: {"quantization": ..., "kv_cache_dtype": ...}."""
    out: dict[str, Any] = {}
    names = {f.name for f in fields(EngineArgs)}
    for part in (p.strip() for p in method.split("+")):
        if part.startswith("kv:"):
            if "kv_cache_dtype" not in names:
                raise ValueError(f"method {method!r}: this build has no kv_cache_dtype engine flag")
            out["kv_cache_dtype"] = part[3:]
        elif part and part != "none":
            out["quantization"] = part
    return out


def reference_overrides() -> dict[str, Any]:
    """The unquantized model: no quantization, the default KV-cache dtype."""
    out: dict[str, Any] = {"quantization": None}
    for f in fields(EngineArgs):
        if f.name == "kv_cache_dtype":
            out["kv_cache_dtype"] = f.default
    return out


def compare_rows(ref_logits: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(ref ‖ other) per row in nats, top-1 equal per row) of [rows, vocab] logits."""
    ref_lp = torch.log_softmax(ref_logits.double(), dim=-1)  # [rows, vocab]
    lp = torch.log_softmax(logits.double(), dim=-1)  # [rows, vocab]
    kl = (ref_lp.exp() * (ref_lp - lp)).sum(dim=-1).clamp_min(0.0)  # [rows]; >= 0 up to rounding
    same = ref_logits.argmax(dim=-1) == logits.argmax(dim=-1)  # [rows]
    return kl, same


@contextmanager
def captured_logits(llm: Any) -> Iterator[list[torch.Tensor]]:
    """Every logits row the engine computes while inside, float32 copies in call order."""
    model = llm.llm_engine.runner.model
    original = model.compute_logits
    rows: list[torch.Tensor] = []

    def capture(hidden: torch.Tensor) -> torch.Tensor:
        logits = original(hidden)  # [r, vocab]
        rows.append(logits.float().clone())
        return logits

    model.compute_logits = capture  # an instance attribute: shadows the method until deleted
    try:
        yield rows
    finally:
        del model.compute_logits


def prompt_logits(llm: Any, prompt: list[int]) -> torch.Tensor:
    """[len(prompt), vocab] float32: the engine's next-token logits at every position of `prompt`."""
    from nanoserve.sampling_params import SamplingParams

    params = SamplingParams(prompt_logprobs=0, max_tokens=1, temperature=0.0)
    with captured_logits(llm) as rows:
        llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    out = torch.cat(rows)
    if out.shape[0] != len(prompt):  # e.g. a prefix-cache hit skipped rows: the comparison would be wrong
        raise RuntimeError(f"captured {out.shape[0]} logits rows for a {len(prompt)}-token prompt")
    return out


def agreement(ref_llm: Any, llm: Any, prompts: list[list[int]], method: str) -> AgreementResult:
    kls: list[torch.Tensor] = []
    agree = 0
    for prompt in prompts:
        kl, same = compare_rows(prompt_logits(ref_llm, prompt), prompt_logits(llm, prompt))
        kls.append(kl)
        agree += int(same.sum())
    kl_all = torch.cat(kls)
    n = kl_all.numel()
    return AgreementResult(
        method=method,
        positions=n,
        prompts=len(prompts),
        top1_agreement=agree / n,
        mean_kl_nats=math.fsum(kl_all.tolist()) / n,
        max_kl_nats=float(kl_all.max()),
    )


def random_prompts(vocab_size: int, num_prompts: int, length: int, seed: int = 0,
                   avoid: set[int] | None = None) -> list[list[int]]:
    """Uniform random token ids (for random-weight models, whose tokenizer has no text)."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([i for i in range(vocab_size) if i not in (avoid or set())])
    return [allowed[torch.randint(len(allowed), (length,), generator=g)].tolist() for _ in range(num_prompts)]


def corpus_prompts(token_ids: list[int], num_prompts: int, length: int) -> list[list[int]]:
    """Consecutive non-overlapping windows of the corpus tokens."""
    prompts = [token_ids[i : i + length] for i in range(0, len(token_ids) - length + 1, length)]
    return prompts[:num_prompts]
