"""Request and Sequence state: token ids, progress, block table, timestamps.

A Request holds n Sequences (one per completion). It starts with one: the prompt is prefilled once,
and when its last prompt chunk is scheduled the scheduler forks the n-1 others, which share the
prompt's KV blocks by reference count (the partial last block is copied on first write).
Pure Python: the scheduler, the block manager and the simulator all work on these objects.
"""

from __future__ import annotations

import enum
import itertools
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
    index: int  # completion index within the request (CompletionOutput.index)
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
    output_text: str = ""
    detok_state: Any = None  # the detokenizer's incremental state
    generator: Any = None  # per-sequence torch.Generator when the request has a seed
    pending_children: int = 0  # >0 on a request's first sequence until it forks

    @property
    def order(self) -> tuple[int, int]:
        """Scheduling priority: older requests first, then completion index."""
        return (self.request.arrival_order, self.index)

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
            f"Sequence({self.request.request_id}#{self.index}, {self.status.value}, "
            f"tokens={self.num_tokens}, computed={self.num_computed_tokens}, blocks={len(self.block_table)})"
        )


@dataclass(eq=False)
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: Any  # SamplingParams
    arrival_time: float
    arrival_order: int
    max_tokens: int  # params.max_tokens clamped so that prompt + output fits the context and the pool
    seqs: list[Sequence] = field(default_factory=list)
    metrics: RequestMetrics | None = None
    counted_prefix_query: bool = False  # prefix-cache metrics count the first admission only

    def __post_init__(self) -> None:
        if self.metrics is None:
            self.metrics = RequestMetrics(arrival_time=self.arrival_time)
        if not self.seqs:
            first = Sequence(self, 0, list(self.prompt_token_ids), len(self.prompt_token_ids))
            first.pending_children = self.n - 1
            self.seqs.append(first)

    @property
    def n(self) -> int:
        return int(getattr(self.params, "n", 1) or 1)

    @property
    def is_finished(self) -> bool:
        return all(s.is_finished and not s.pending_children for s in self.seqs)

    def fork(self, parent: Sequence) -> list[Sequence]:
        """Make the n-1 sibling sequences of `parent` (same tokens, same progress, shared blocks)."""
        children = []
        for i in range(1, parent.pending_children + 1):
            child = Sequence(
                self,
                i,
                list(parent.token_ids),
                parent.num_prompt_tokens,
                status=parent.status,
                num_computed_tokens=parent.num_computed_tokens,
                block_table=list(parent.block_table),
                block_hashes=list(parent.block_hashes),
                num_cached_blocks=parent.num_cached_blocks,
            )
            children.append(child)
        parent.pending_children = 0
        self.seqs.extend(children)
        return children
