"""Request and Sequence state: token ids, progress, block table, timestamps.

A Request is one completion of one prompt, and holds one Sequence (its progress through the KV
cache). A user's request with n > 1 reaches the scheduler as n independent Requests
(engine/parent_request.py), which share the prompt's KV blocks only through the prefix cache.
Pure Python: the scheduler, the block manager and the test harness all work on these objects.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from nanoserve.outputs import RequestMetrics

_seq_counter = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request: Request
    index: int  # completion index within the user's request (CompletionOutput.index); picks its seed stream
    token_ids: list[int]  # prompt + generated
    num_prompt_tokens: int
    seq_id: int = field(default_factory=lambda: next(_seq_counter))
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V is in the cache
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chained hash of each full block of token_ids
    num_cached_blocks: int = 0  # leading blocks of block_table already offered to the prefix cache
    num_preemptions: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None
    logprobs: list[dict[int, float]] | None = None
    # With params.prompt_logprobs: entry i scores prompt token i (entry 0 None), filled as prefill runs.
    prompt_logprobs: list[dict[int, float] | None] | None = None
    output_text: str = ""
    detok_state: Any = None  # the detokenizer's incremental state
    generator: Any = None  # per-sequence torch.Generator when the request has a seed
    # Speculative decoding: draft tokens proposed after the last token, verified by the next step (the
    # scheduler gives them slots; they join token_ids only once accepted).
    spec_token_ids: list[int] = field(default_factory=list)

    @property
    def order(self) -> int:
        """Scheduling priority: older requests first."""
        return self.request.arrival_order

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_prefill(self) -> bool:
        """More than the last sampled token is still to be computed (prompt, or a recompute)."""
        return self.num_uncomputed_tokens > 1 or self.num_computed_tokens < self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request.request_id}, {self.status.value}, "
            f"tokens={self.num_tokens}, computed={self.num_computed_tokens}, blocks={len(self.block_table)})"
        )


@dataclass(eq=False)
class Request:
    request_id: str  # the user's id, or f"{index}_{id}" for one of n > 1 completions
    prompt_token_ids: list[int]
    params: Any  # SamplingParams with n == 1
    arrival_order: int
    max_tokens: int  # params.max_tokens clamped so that prompt + output fits the context and the pool
    index: int = 0  # completion index within the user's request
    parent_id: str | None = None  # the user's request id (None: request_id itself)
    # Shared by the n Requests of one user's request, which report as one.
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(arrival_time=time.monotonic()))
    grammar: Any = None  # this completion's xgrammar GrammarMatcher when the request is constrained
    seq: Sequence = field(init=False)

    def __post_init__(self) -> None:
        if self.parent_id is None:
            self.parent_id = self.request_id
        self.seq = Sequence(self, self.index, list(self.prompt_token_ids), len(self.prompt_token_ids))

    @property
    def is_finished(self) -> bool:
        return self.seq.is_finished
