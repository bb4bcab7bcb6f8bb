"""A fake `LLMEngine` that follows the engine contract (shared/engine_api.md) without a model.

Used only by the fast unit tests of the async front: it answers in microseconds, generates a
deterministic token sequence per prompt, and can be told to crash on a given step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tiny_models import EOS_ID, char_tokenizer

from nanoserve.errors import InvalidRequestError, PromptTooLongError
from nanoserve.outputs import CompletionOutput, RequestMetrics, RequestOutput
from nanoserve.sampling_params import SamplingParams


@dataclass
class FakeStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_total_blocks: int = 64
    num_free_blocks: int = 64
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0


@dataclass
class FakeModelConfig:
    max_model_len: int = 64


@dataclass
class _Req:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    tokens: list[list[int]] = field(default_factory=list)
    finish: list[str | None] = field(default_factory=list)


class FakeEngine:
    """Each step gives every running sequence one token: (last token + 1 + index) over printable chars."""

    def __init__(self, max_model_len: int = 64, max_num_seqs: int = 4, step_s: float = 0.001,
                 crash_on_step: int | None = None) -> None:
        self.tokenizer = char_tokenizer()
        self.model_config = FakeModelConfig(max_model_len)
        self.max_num_seqs = max_num_seqs
        self.step_s = step_s
        self.crash_on_step = crash_on_step
        self.num_steps = 0
        self.requests: dict[str, _Req] = {}  # insertion order = FCFS
        self.aborted: list[str] = []
        self._stats = FakeStats()

    def add_request(self, request_id: str, prompt, params: SamplingParams, arrival_time: float | None = None):
        if request_id in self.requests:
            raise InvalidRequestError(f"duplicate request id {request_id!r}", "request_id")
        if isinstance(prompt, dict):
            ids = list(prompt["prompt_token_ids"])
            text = prompt.get("prompt")
        elif isinstance(prompt, str):
            ids, text = self.tokenizer(prompt).input_ids, prompt
        else:
            ids, text = list(prompt), None
        if not ids:
            raise InvalidRequestError("The prompt is empty.", "prompt")
        if len(ids) >= self.model_config.max_model_len:
            raise PromptTooLongError("prompt too long", len(ids), self.model_config.max_model_len)
        metrics = RequestMetrics(arrival_time=arrival_time or time.monotonic())
        self.requests[request_id] = _Req(request_id, text, ids, params, metrics,
                                         [[] for _ in range(params.n)], [None] * params.n)

    def abort_request(self, request_id) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            if self.requests.pop(rid, None) is not None:
                self.aborted.append(rid)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    def get_stats(self) -> FakeStats:
        running = min(len(self.requests), self.max_num_seqs)
        self._stats.num_running = running
        self._stats.num_waiting = len(self.requests) - running
        self._stats.kv_cache_usage = running / self.max_num_seqs
        return self._stats

    def step(self) -> list[RequestOutput]:
        self.num_steps += 1
        if self.crash_on_step is not None and self.num_steps >= self.crash_on_step:
            raise RuntimeError("injected crash")
        time.sleep(self.step_s)
        now = time.monotonic()
        outputs = []
        for req in list(self.requests.values())[: self.max_num_seqs]:
            m = req.metrics
            if m.first_scheduled_time is None:
                m.first_scheduled_time = now
                self._stats.prompt_tokens += len(req.prompt_token_ids)
            for i, toks in enumerate(req.tokens):
                if req.finish[i] is not None:
                    continue
                last = toks[-1] if toks else req.prompt_token_ids[-1]
                tok = 4 + (last - 4 + 1 + i) % 96  # stays within printable chars
                toks.append(tok)
                self._stats.generation_tokens += 1
                m.num_generation_tokens += 1
                if tok == EOS_ID and not req.params.ignore_eos:
                    req.finish[i] = "stop"
                elif len(toks) >= req.params.max_tokens:
                    req.finish[i] = "length"
            m.first_token_time = m.first_token_time or now
            m.last_token_time = now
            finished = all(f is not None for f in req.finish)
            if finished:
                m.finished_time = now
                del self.requests[req.request_id]
            outs = [CompletionOutput(i, self.tokenizer.decode(t), list(t), req.finish[i])
                    for i, t in enumerate(req.tokens)]
            outputs.append(RequestOutput(req.request_id, req.prompt, req.prompt_token_ids, outs, finished, m))
        return outputs


def expected_tokens(prompt_ids: list[int], max_tokens: int, index: int = 0) -> list[int]:
    """The tokens FakeEngine generates for a prompt (no EOS is ever produced from printable chars)."""
    out, last = [], prompt_ids[-1]
    for _ in range(max_tokens):
        last = 4 + (last - 4 + 1 + index) % 96
        out.append(last)
    return out
