"""EngineStats: a snapshot of the engine's gauges and cumulative counters (vLLM's metric names)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EngineStats:
    num_running: (
        int  # sequences running (vLLM: num_requests_running counts requests; see num_running_requests)
    )
    num_waiting: int  # sequences waiting (new or preempted)
    kv_cache_usage: float  # fraction of blocks in use, 0..1
    num_total_blocks: int
    num_free_blocks: int
    prefix_cache_queries: int  # tokens (cumulative)
    prefix_cache_hits: int  # tokens (cumulative)
    num_preemptions: int  # cumulative
    prompt_tokens: int  # prompt tokens computed, cumulative (recomputes included, cache hits excluded)
    generation_tokens: int  # tokens generated, cumulative
    num_running_requests: int = 0
    num_waiting_requests: int = 0
    kv_cache_fragmentation: float = 0.0  # unused fraction of the slots allocated to running sequences
    num_cached_blocks: int = 0  # blocks registered in the prefix cache (in use or evictable)
    # Speculative decoding (cumulative): verify steps of a sequence with drafts, draft tokens verified,
    # accepted, and accepted at each draft position (index 0 = the first draft token).
    spec_decode_num_drafts: int = 0
    spec_decode_num_draft_tokens: int = 0
    spec_decode_num_accepted_tokens: int = 0
    spec_decode_num_accepted_tokens_per_pos: list[int] = field(default_factory=list)
    # Steps whose drafting was skipped because the running batch reached disable_by_batch_size.
    spec_decode_num_disabled_steps: int = 0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

    @property
    def num_used_blocks(self) -> int:
        return self.num_total_blocks - self.num_free_blocks
