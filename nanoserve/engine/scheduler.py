"""Continuous batching: which sequences run this step and how many tokens each.

Every step has a token budget (max_num_batched_tokens) and a sequence cap (max_num_seqs). Running
decodes go first (one token each, oldest request first), then running prefills continue (chunked),
then waiting sequences are admitted in arrival order (preempted ones first) with prefix-cache hits
skipped. With chunked prefill off a prompt is scheduled whole or not at all.
Speculative decoding: a decode with draft tokens (seq.spec_token_ids) runs 1 + k tokens and gets slots
for all of them (fewer drafts when the budget is short); only the verified ones count as computed
(`accept_spec_tokens`), and the slots of rejected ones are given back, so the prefix cache never
holds a block with an unverified token. The chunk that completes a prefill can carry drafts too
(`attach_drafts`, after scheduling): the step that samples the first token also verifies the next k.
One sequence per request: the engine fans n > 1 out into independent requests before they get here.

When the pool runs out, the newest running sequence not yet scheduled this step is preempted by
recompute: its blocks are freed and it goes back to the front of the queue, to be prefilled again
(over its prompt and the tokens it already generated). Every sequence fits the pool alone (the
engine clamps max_tokens and rejects prompts that do not), so this never deadlocks.

Pure Python, no torch: the simulator (nanoserve/sim/) and the tests drive this very class without a model.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from nanoserve.config import SchedulerConfig
from nanoserve.engine.block_manager import BlockManager
from nanoserve.engine.sequence import Request, Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int  # tokens computed this step, starting at seq.num_computed_tokens
    start: int  # seq.num_computed_tokens when scheduled (after prefix-cache hits)
    # Draft tokens verified this step, after the sequence's last token (counted in num_new_tokens).
    spec_token_ids: list[int] = field(default_factory=list)

    @property
    def samples(self) -> bool:
        """The chunk reaches the end of the sequence, so the step samples its next token."""
        return self.start + self.num_new_tokens - len(self.spec_token_ids) == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    num_batched_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class SchedulerCounters:
    num_preemptions: int = 0
    prefix_cache_queries: int = 0  # tokens looked up (first admission of each request only)
    prefix_cache_hits: int = 0  # tokens found
    prompt_tokens: int = 0  # prompt tokens computed (recomputes included; cache hits excluded)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in priority order (oldest request first)
        self.counters = SchedulerCounters()

    # ---- queue management ----------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        """Queue by arrival order: a request added late (an n > 1 sibling) keeps its place."""
        seq = request.seq
        seq.status = SequenceStatus.WAITING
        i = len(self.waiting)
        while i > 0 and self.waiting[i - 1].order > seq.order:
            i -= 1
        self.waiting.insert(i, seq)

    def finish_seq(self, seq: Sequence, reason: str) -> None:
        """Mark finished and free its blocks and slot at once."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.block_manager.free(seq)

    def abort_request(self, request: Request) -> None:
        if not request.seq.is_finished:
            self.finish_seq(request.seq, "abort")

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.running or self.waiting)

    # ---- the step ------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        scheduled_ids: set[int] = set()

        # 1. running decodes, then 2. running prefills (chunked), oldest first.
        decodes = [s for s in self.running if not s.is_prefill]
        prefills = [s for s in self.running if s.is_prefill]
        for seq in decodes + prefills:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(seq.num_uncomputed_tokens + len(seq.spec_token_ids), budget)
            if not self.config.enable_chunked_prefill and num_new < seq.num_uncomputed_tokens:
                continue
            if not self._allocate_or_preempt(seq, num_new, scheduled_ids, out):
                continue  # seq itself was preempted
            spec = seq.spec_token_ids[: max(0, num_new - seq.num_uncomputed_tokens)]
            self._add(out, seq, num_new, seq.num_computed_tokens, scheduled_ids, spec)
            budget -= num_new

        # 3. admit waiting sequences (never while anything was preempted this step: that would thrash).
        while self.waiting and budget > 0 and not out.preempted:
            seq = self.waiting[0]
            if len(self.running) >= self.config.max_num_seqs:
                break
            hits = self.block_manager.get_computed_blocks(seq)
            num_cached = len(hits) * self.block_manager.block_size
            num_new = seq.num_tokens - seq.num_computed_tokens - num_cached
            if num_new > budget:
                if not self.config.enable_chunked_prefill:
                    break
                num_new = budget
            if not self.block_manager.allocate_slots(seq, num_new, hits):
                break
            if seq.num_preemptions == 0:  # a recompute is not a query
                self.counters.prefix_cache_queries += seq.num_tokens
                self.counters.prefix_cache_hits += num_cached
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self._insert_running(seq)
            self._add(out, seq, num_new, seq.num_computed_tokens, scheduled_ids)
            budget -= num_new

        out.num_batched_tokens = self.config.max_num_batched_tokens - budget
        return out

    def _add(self, out: SchedulerOutput, seq: Sequence, num_new: int, start: int, ids: set[int],
             spec: list[int] | None = None) -> None:
        item = ScheduledSeq(seq, num_new, start, spec or [])
        out.scheduled.append(item)
        ids.add(seq.seq_id)
        if start < seq.num_prompt_tokens:
            self.counters.prompt_tokens += min(num_new, seq.num_prompt_tokens - start)

    def _insert_running(self, seq: Sequence) -> None:
        i = len(self.running)
        while i > 0 and self.running[i - 1].order > seq.order:
            i -= 1
        self.running.insert(i, seq)

    def _allocate_or_preempt(
        self, seq: Sequence, num_new: int, scheduled_ids: set[int], out: SchedulerOutput
    ) -> bool:
        """Allocate slots for `seq`, preempting the newest unscheduled running sequences as needed.

        Returns False when `seq` itself had to be preempted.
        """
        while not self.block_manager.allocate_slots(seq, num_new):
            victim = next((s for s in reversed(self.running) if s.seq_id not in scheduled_ids), None)
            assert victim is not None, "a running sequence is always unscheduled here (seq itself)"
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.spec_token_ids = []
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.counters.num_preemptions += 1
        # Back to the queue in priority order (ahead of newer requests).
        i = 0
        while i < len(self.waiting) and self.waiting[i].order < seq.order:
            i += 1
        self.waiting.insert(i, seq)
        out.preempted.append(seq)

    def update_after_step(self, out: SchedulerOutput) -> None:
        """The step ran: advance progress and offer newly full blocks to the prefix cache."""
        for item in out.scheduled:
            seq = item.seq
            # Draft tokens count once accepted (accept_spec_tokens), after the engine appends them.
            seq.num_computed_tokens = item.start + item.num_new_tokens - len(item.spec_token_ids)
            seq.spec_token_ids = []
            self.block_manager.cache_full_blocks(seq)

    def attach_drafts(self, out: SchedulerOutput, item: ScheduledSeq, drafts: list[int]) -> int:
        """Verify `drafts` in this step too: `item` (a prefill chunk that samples) grows by as many as the
        step's token budget and the pool allow, without preempting anyone. Returns how many it took."""
        n = min(len(drafts), self.config.max_num_batched_tokens - out.num_batched_tokens)
        if n <= 0 or not self.block_manager.allocate_slots(item.seq, item.num_new_tokens + n):
            return 0
        item.spec_token_ids = list(drafts[:n])
        item.num_new_tokens += n
        out.num_batched_tokens += n
        return n

    def accept_spec_tokens(self, seq: Sequence, num_accepted: int) -> None:
        """After a verify step of a running `seq`, its first `num_accepted` drafts (now in token_ids) are
        computed; the slots of the rejected ones (and of the unverified last token's successors) go back."""
        seq.num_computed_tokens = min(seq.num_computed_tokens + num_accepted, seq.num_tokens - 1)
        self.block_manager.trim(seq, seq.num_tokens)
        self.block_manager.cache_full_blocks(seq)
