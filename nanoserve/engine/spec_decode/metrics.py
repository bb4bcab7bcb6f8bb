"""Acceptance counters of speculative decoding (vLLM's spec_decode_* metrics), kept by the engine."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecDecodeCounters:
    num_drafts: int = 0  # verify steps of one sequence with at least one draft token
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)  # [j]: drafts accepted at position j
    num_disabled_steps: int = 0  # steps that skipped drafting: the batch reached disable_by_batch_size

    def observe(self, num_draft_tokens: int, num_accepted_tokens: int) -> None:
        if num_draft_tokens == 0:
            return
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted_tokens
        if len(self.accepted_per_pos) < num_draft_tokens:
            self.accepted_per_pos.extend([0] * (num_draft_tokens - len(self.accepted_per_pos)))
        for j in range(num_accepted_tokens):
            self.accepted_per_pos[j] += 1

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0
