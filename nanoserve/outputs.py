"""What the engine returns per request, with vLLM's names (RequestOutput, CompletionOutput)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestMetrics:
    """Timestamps of one request (time.monotonic seconds) and the latencies derived from them."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_generation_tokens: int = 0  # across all n completions
    # Speculative decoding, across all n completions: draft tokens verified, and how many were accepted.
    spec_num_draft_tokens: int = 0
    spec_num_accepted_tokens: int = 0

    @property
    def queue_s(self) -> float | None:
        """Arrival to first scheduled."""
        if self.first_scheduled_time is None:
            return None
        return self.first_scheduled_time - self.arrival_time

    @property
    def ttft_s(self) -> float | None:
        """Time to first token: arrival to the first generated token."""
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def tpot_s(self) -> float | None:
        """Mean inter-token time after the first token (None with fewer than 2 tokens)."""
        if self.first_token_time is None or self.last_token_time is None or self.num_generation_tokens < 2:
            return None
        return (self.last_token_time - self.first_token_time) / (self.num_generation_tokens - 1)

    @property
    def e2e_s(self) -> float | None:
        """Arrival to finish."""
        if self.finished_time is None:
            return None
        return self.finished_time - self.arrival_time


@dataclass
class CompletionOutput:
    """One of the n completions of a request. text and token_ids are cumulative."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    logprobs: list[dict[int, float]] | None = None  # per generated token: {token_id: logprob}, top-N + chosen
    stop_reason: int | str | None = None  # the stop string or stop token that ended it, if any

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    # With SamplingParams.prompt_logprobs: per prompt token {token id: logprob} (top-N, then the prompt
    # token), the first None (it has no prefix). Raw model log-probabilities, as vLLM's.
    prompt_logprobs: list[dict[int, float] | None] | None = field(default=None, repr=False)
