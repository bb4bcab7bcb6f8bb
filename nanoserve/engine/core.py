"""EngineCore: what the async front and the server need from a synchronous engine, as a typed protocol.

`LLMEngine` is the implementation; the server's unit tests drive `AsyncLLMEngine` with a model-free
fake (tests/server/fake_engine.py) that implements the same protocol with the same config and stats
classes, so nothing on the server side probes the engine for optional attributes.

Not thread-safe: one thread (the async front's engine thread) calls every method.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from nanoserve.config import CacheConfig, ModelConfig
from nanoserve.engine.stats import EngineStats
from nanoserve.outputs import RequestOutput
from nanoserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# A text prompt, its token ids, or {"prompt_token_ids": [...], "prompt": optional text} (or {"prompt": ...}).
PromptInput: TypeAlias = str | list[int] | dict[str, Any]


class EngineCore(Protocol):
    """A step-driven engine: queue requests, run steps, read cumulative outputs and stats."""

    tokenizer: PreTrainedTokenizerBase
    model_config: ModelConfig  # the server reads max_model_len and vocab_size
    cache_config: CacheConfig  # the server's start-up line reports the KV pool from it

    def add_request(self, request_id: str, prompt: PromptInput, params: SamplingParams) -> None:
        """Queue a request; raises InvalidRequestError / PromptTooLongError for one that can never run."""
        ...

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        """Finish the requests at once with finish_reason "abort" (unknown ids are ignored)."""
        ...

    def step(self) -> list[RequestOutput]:
        """Run one scheduling step; the cumulative output of every request it touched or aborted."""
        ...

    def has_unfinished_requests(self) -> bool: ...

    def get_stats(self) -> EngineStats:
        """A snapshot of the gauges and cumulative counters after the last step."""
        ...

    def check_health(self) -> None:
        """Raise nanoserve.errors.EngineDeadError if the engine can run no more steps (a worker process
        has died); cheap, called between steps and when idle."""
        ...

    def shutdown(self) -> None:
        """Stop the engine's processes (tensor-parallel workers, a replica's process). Idempotent."""
        ...
