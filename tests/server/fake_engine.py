"""A model-free engine that implements `EngineCore` (nanoserve/engine/core.py) completely.

Used by the fast unit tests of the async front and the HTTP layer: it answers in microseconds,
generates a deterministic token sequence per prompt, and can be told to crash on a given step. Its
configs and stats are the real classes, and its text goes through the real detokenizer and stop
checker, so stop strings, `include_stop_str_in_output`, EOS and length finish exactly as in `LLMEngine`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from tiny_models import EOS_ID, VOCAB_SIZE, char_tokenizer
from transformers import PreTrainedTokenizerFast

from nanoserve.config import CacheConfig, ModelConfig
from nanoserve.engine.core import PromptInput
from nanoserve.engine.detokenizer import IncrementalDetokenizer
from nanoserve.engine.stats import EngineStats
from nanoserve.engine.stop_checker import check_stop
from nanoserve.errors import InvalidRequestError, PromptTooLongError
from nanoserve.outputs import CompletionOutput, RequestMetrics, RequestOutput
from nanoserve.sampling_params import SamplingParams

BLOCK_SIZE = 16
NUM_BLOCKS = 64


@dataclass
class _Seq:
    detok: IncrementalDetokenizer
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # as the stop checker left it (cut at a stop string)
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class _Req:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    seqs: list[_Seq]

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.seqs)


def fake_model_config(max_model_len: int) -> ModelConfig:
    """A ModelConfig for the char tokenizer's vocabulary; the shape fields only size the fake KV pool."""
    return ModelConfig(model="fake", tokenizer="fake", architecture="FakeForCausalLM", hf_config={},
                       dtype="float32", max_model_len=max_model_len, num_layers=1, hidden_size=8,
                       num_heads=1, num_kv_heads=1, head_dim=8, vocab_size=VOCAB_SIZE, eos_token_ids=[EOS_ID])


class FakeEngine:
    """Each step gives every running sequence one token: (last token + 1 + index) over printable chars.

    The first `max_num_seqs` requests (FCFS) run; the rest wait.
    """

    def __init__(self, max_model_len: int = 64, max_num_seqs: int = 4, step_s: float = 0.001,
                 crash_on_step: int | None = None) -> None:
        self.tokenizer: PreTrainedTokenizerFast = char_tokenizer()
        self.model_config = fake_model_config(max_model_len)
        self.cache_config = CacheConfig(block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS)
        self.max_num_seqs = max_num_seqs
        self.step_s = step_s
        self.crash_on_step = crash_on_step
        self.num_steps = 0
        self.shut_down = False  # set by shutdown(): the async front's thread calls it as it ends
        self.requests: dict[str, _Req] = {}  # insertion order = FCFS
        self.aborted: list[str] = []
        self._aborted_outputs: list[RequestOutput] = []
        self._prompt_tokens = 0
        self._generation_tokens = 0

    def add_request(self, request_id: str, prompt: PromptInput, params: SamplingParams,
                    arrival_time: float | None = None) -> None:
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
        seqs = [_Seq(IncrementalDetokenizer(self.tokenizer, ids, params.skip_special_tokens))
                for _ in range(params.n)]
        self.requests[request_id] = _Req(request_id, text, ids, params, metrics, seqs)

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            req = self.requests.pop(rid, None)
            if req is None:
                continue
            self.aborted.append(rid)
            for s in req.seqs:
                s.finish_reason = s.finish_reason or "abort"
            req.metrics.finished_time = time.monotonic()
            self._aborted_outputs.append(self._output(req))

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    def get_stats(self) -> EngineStats:
        reqs = list(self.requests.values())
        running, waiting = reqs[: self.max_num_seqs], reqs[self.max_num_seqs:]
        running_seqs = [(r, s) for r in running for s in r.seqs if s.finish_reason is None]
        used = min(NUM_BLOCKS, sum(-(-(len(r.prompt_token_ids) + len(s.token_ids)) // BLOCK_SIZE)
                                   for r, s in running_seqs))
        return EngineStats(
            num_running=len(running_seqs), num_waiting=sum(len(r.seqs) for r in waiting),
            kv_cache_usage=used / NUM_BLOCKS, num_total_blocks=NUM_BLOCKS, num_free_blocks=NUM_BLOCKS - used,
            prefix_cache_queries=0, prefix_cache_hits=0, num_preemptions=0,
            prompt_tokens=self._prompt_tokens, generation_tokens=self._generation_tokens,
            num_running_requests=len(running), num_waiting_requests=len(waiting),
        )

    def check_health(self) -> None:
        pass  # in-process, no workers: it dies only by crashing a step (crash_on_step)

    def shutdown(self) -> None:
        self.shut_down = True

    def step(self) -> list[RequestOutput]:
        self.num_steps += 1
        if self.crash_on_step is not None and self.num_steps >= self.crash_on_step:
            raise RuntimeError("injected crash")
        time.sleep(self.step_s)
        outputs, self._aborted_outputs = self._aborted_outputs, []
        now = time.monotonic()
        for req in list(self.requests.values())[: self.max_num_seqs]:
            m = req.metrics
            if m.first_scheduled_time is None:
                m.first_scheduled_time = now
                self._prompt_tokens += len(req.prompt_token_ids)
            for i, seq in enumerate(req.seqs):
                if seq.finish_reason is None:
                    self._append_token(req, i, seq)
            m.first_token_time = m.first_token_time or now
            m.last_token_time = now
            if req.finished:
                m.finished_time = now
                del self.requests[req.request_id]
            outputs.append(self._output(req))
        return outputs

    def _next_token(self, req: _Req, index: int, seq: _Seq) -> int:
        last = seq.token_ids[-1] if seq.token_ids else req.prompt_token_ids[-1]
        return 4 + (last - 4 + 1 + index) % 96  # stays within printable chars

    def _append_token(self, req: _Req, index: int, seq: _Seq) -> None:
        tok = self._next_token(req, index, seq)
        seq.token_ids.append(tok)
        self._generation_tokens += 1
        req.metrics.num_generation_tokens += 1
        new_text = seq.detok.add_token(tok)
        result = check_stop(req.params, self.model_config.eos_token_ids, seq.detok.output_text, len(new_text),
                            tok, len(seq.token_ids), len(req.prompt_token_ids) + len(seq.token_ids),
                            self.model_config.max_model_len)
        seq.text = result.text
        if result.finished:
            seq.finish_reason, seq.stop_reason = result.finish_reason, result.stop_reason

    @staticmethod
    def _output(req: _Req) -> RequestOutput:
        outs = [CompletionOutput(i, s.text, list(s.token_ids), s.finish_reason, stop_reason=s.stop_reason)
                for i, s in enumerate(req.seqs)]
        return RequestOutput(req.request_id, req.prompt, list(req.prompt_token_ids), outs, req.finished,
                             req.metrics)


def expected_tokens(prompt_ids: list[int], max_tokens: int, index: int = 0) -> list[int]:
    """The tokens FakeEngine generates for a prompt (no EOS is ever produced from printable chars)."""
    out, last = [], prompt_ids[-1]
    for _ in range(max_tokens):
        last = 4 + (last - 4 + 1 + index) % 96
        out.append(last)
    return out
