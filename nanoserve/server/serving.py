"""What /v1/completions and /v1/chat/completions share: the server's state, prompt length checks,
and `Generation`, the engine requests behind one HTTP request (one per prompt, each with n choices).

A `Generation` submits its engine requests together (all or none), merges their delta streams,
keeps each choice's text, tokens, logprobs and finish reason, and when it ends writes the request's
log line and observes its latencies in the Prometheus histograms. Whatever way it ends (finished,
client gone, error), `close()` aborts what is still running so KV blocks return to the pool at once.

Tokenizing and chat-template rendering run on `ServerState.prep_executor`, never on the event loop, after
a cheap length check (`check_prompt_chars`): one huge prompt must not stall /health or other streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from nanoserve.engine.async_engine import AsyncLLMEngine, RequestStream
from nanoserve.outputs import CompletionOutput, RequestMetrics, RequestOutput
from nanoserve.sampling_params import SamplingParams
from nanoserve.server.disconnect import cancel_on_disconnect
from nanoserve.server.errors import APIError, to_api_error
from nanoserve.server.limits import DEFAULT_LIMITS, RequestLimits
from nanoserve.server.metrics import ServerMetrics
from nanoserve.server.protocol import UsageInfo
from nanoserve.server.tool_parsers import ToolParser

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger("nanoserve.server")

T = TypeVar("T")

# Prompt preparation threads: fast tokenizers release the GIL while encoding, so a long prompt costs
# the event loop nothing; a slow template render gets GIL slices like any thread.
PREP_THREADS = 4


@dataclass
class ServerState:
    engine: AsyncLLMEngine
    served_model_names: list[str]
    model_path: str
    metrics: ServerMetrics
    limits: RequestLimits = DEFAULT_LIMITS
    trust_request_chat_template: bool = False
    chat_template_timeout_s: float = 10.0
    prep_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(PREP_THREADS, thread_name_prefix="nanoserve-prep"))
    # Held while a request's own chat template renders (see chat.py): one at a time.
    template_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The --tool-call-parser that reads tool_choice "auto" outputs; None without --enable-auto-tool-choice.
    auto_tool_parser: ToolParser | None = None

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.engine.model_config.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a text prompt, exactly as the engine tokenizes a string prompt (without special
        tokens: a rendered chat template, which writes its own BOS)."""
        # verbose=False: no "Token indices sequence length is longer than ..." warning; we answer that 400.
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens, verbose=False).input_ids)

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a prompt-preparation thread (CPU-heavy work must not block the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.prep_executor, fn, *args)

    async def encode_async(self, text: str, param: str = "prompt",
                           add_special_tokens: bool = True) -> list[int]:
        """`encode` off the event loop, after refusing a text too long to possibly fit the context."""
        self.check_prompt_chars(len(text), param)
        return await self.off_loop(self.encode, text, add_special_tokens)

    @cached_property
    def max_prompt_chars(self) -> int:
        """More characters than any prompt of max_model_len tokens can have: max_model_len times twice
        the longest vocabulary entry (a byte-level or sentencepiece entry spells at least as many
        characters as it decodes to; the factor 2 covers normalizers)."""
        longest = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        return self.max_model_len * 2 * max(longest, 16)

    def check_prompt_chars(self, num_chars: int, param: str = "prompt") -> None:
        """The cheap length check before tokenizing: a 400 for a text that cannot fit the context."""
        if num_chars > self.max_prompt_chars:
            raise APIError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt "
                f"has {num_chars} characters, more than {self.max_model_len} tokens can hold. Please "
                "reduce the length of the prompt.",
                param,
            )

    def check_model(self, name: str | None) -> str:
        """The served name the response reports; 404 for a model we do not serve (None = the default)."""
        if name is None or name == self.model_path:  # vLLM's default name is the model as given
            return self.model_name
        if name not in self.served_model_names:
            raise APIError(404, f"The model `{name}` does not exist.", "model")
        return name


@dataclass
class Prompt:
    token_ids: list[int]
    text: str | None = None  # None for token-id prompts (decoded lazily when needed)


def clamp_max_tokens(max_model_len: int, prompt: Prompt, max_tokens: int | None,
                     max_tokens_param: str = "max_tokens", prompt_param: str = "prompt") -> int:
    """How many tokens the request may generate, as vLLM decides it.

    - prompt >= max_model_len tokens: 400 stating both lengths (there is no room for one output token);
    - max_tokens > max_model_len: 400 (it could never be honoured);
    - prompt + max_tokens > max_model_len: max_tokens is silently clamped to max_model_len - prompt;
    - max_tokens unset (chat's default): everything that fits, max_model_len - prompt.
    Non-positive max_tokens is left to SamplingParams, which names the field.
    """
    n = len(prompt.token_ids)
    if n == 0:
        raise APIError(400, "The prompt is empty: it must contain at least one token.", prompt_param)
    if n >= max_model_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
            f"{n} input tokens, which leaves no room for output. Please reduce the length of the prompt.",
            prompt_param,
        )
    room = max_model_len - n
    if max_tokens is None:
        return room
    if max_tokens > max_model_len:
        raise APIError(
            400,
            f"{max_tokens_param}={max_tokens} is more than this model's maximum context length of "
            f"{max_model_len} tokens.",
            max_tokens_param,
        )
    return min(max_tokens, room)


def status_of(exc: BaseException) -> int:
    """The status to log for a request that ended with `exc` (499: the client went away)."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return 499
    return to_api_error(exc).status


def check_token_ids(token_ids: list[int], vocab_size: int, param: str = "prompt") -> None:
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise APIError(400, f"Token id {bad[0]} is out of the vocabulary [0, {vocab_size}).", param)


@dataclass
class Choice:
    """Everything generated so far for one choice (index = prompt_index * n + completion index)."""

    index: int
    prompt_index: int
    text_parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


@dataclass
class _Timing:
    start_s: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None
    last_token_s: float | None = None
    inter_token_s: list[float] = field(default_factory=list)


class Generation:
    """The engine requests behind one HTTP request; iterate `deltas()` after `submit()`."""

    def __init__(self, state: ServerState, request_id: str, prompts: list[Prompt],
                 params: list[SamplingParams]) -> None:
        self.state = state
        self.request_id = request_id
        self.prompts = prompts
        self.params = params
        self.n = params[0].n
        self.choices = [Choice(p * self.n + i, p) for p in range(len(prompts)) for i in range(self.n)]
        self._streams: list[RequestStream] = []
        self._final_metrics: list[RequestMetrics] = []
        self._timing = _Timing()
        self._closed = False
        self.status = 200
        # Per prompt, the engine's prompt logprobs once they arrive (requests with prompt_logprobs).
        self.prompt_logprobs: list[list[dict[int, float] | None] | None] = [None] * len(prompts)

    @property
    def usage(self) -> UsageInfo:
        prompt_tokens = sum(len(p.token_ids) for p in self.prompts)
        completion_tokens = sum(len(c.token_ids) for c in self.choices)
        return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         total_tokens=prompt_tokens + completion_tokens)

    async def submit(self) -> None:
        """Add every prompt to the engine; if one is refused, abort the others and raise its error."""
        engine = self.state.engine
        try:
            for i, (prompt, params) in enumerate(zip(self.prompts, self.params, strict=True)):
                rid = self.request_id if len(self.prompts) == 1 else f"{self.request_id}-{i}"
                self._streams.append(await engine.add_request(rid, list(prompt.token_ids), params))
        except BaseException:
            self.close(status=None)
            raise

    async def deltas(self) -> AsyncIterator[tuple[Choice, CompletionOutput]]:
        """(choice, delta CompletionOutput) as the engine produces them, merged over all prompts."""
        async for prompt_index, out in self._merged():
            now = time.monotonic()
            new_tokens = 0
            if out.prompt_logprobs is not None:
                self.prompt_logprobs[prompt_index] = out.prompt_logprobs
            for comp in out.outputs:
                choice = self.choices[prompt_index * self.n + comp.index]
                choice.text_parts.append(comp.text)
                choice.token_ids.extend(comp.token_ids)
                if comp.logprobs:
                    choice.logprobs.extend(comp.logprobs)
                if comp.finish_reason is not None:
                    choice.finish_reason = comp.finish_reason
                    choice.stop_reason = comp.stop_reason
                new_tokens += len(comp.token_ids)
                yield choice, comp
            self._record_tokens(now, new_tokens)
            if out.finished and out.metrics is not None:
                self._final_metrics.append(out.metrics)

    async def run_to_end(self, receive: Any) -> bool:
        """Consume every delta (non-streaming) unless the client leaves first; False if it left.

        The generation is closed either way: logged, observed, and aborted if it did not finish.
        """
        status = 200
        try:
            completed, _ = await cancel_on_disconnect(receive, self._drain())
            if not completed:
                status = 499
            return completed
        except BaseException as e:
            status = status_of(e)
            raise
        finally:
            self.close(status)

    async def _drain(self) -> None:
        async for _ in self.deltas():
            pass

    async def _merged(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        if len(self._streams) == 1:
            async for out in self._streams[0]:
                yield 0, out
            return
        queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
        done_marker = object()

        async def pump(i: int, stream: RequestStream) -> None:
            try:
                async for out in stream:
                    queue.put_nowait((i, out, None))
                queue.put_nowait((i, done_marker, None))
            except Exception as e:  # noqa: BLE001 -- handed to the consumer, which raises it
                queue.put_nowait((i, None, e))

        pumps = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self._streams)]
        try:
            remaining = len(pumps)
            while remaining:
                i, out, error = await queue.get()
                if error is not None:
                    raise error
                if out is done_marker:
                    remaining -= 1
                    continue
                yield i, out
        finally:
            for p in pumps:
                p.cancel()

    def _record_tokens(self, now: float, new_tokens: int) -> None:
        if new_tokens == 0:
            return
        t = self._timing
        if t.first_token_s is None:
            t.first_token_s = now
        elif t.last_token_s is not None:
            # Tokens that arrive together split the gap evenly (what a client reading the stream sees).
            t.inter_token_s.extend([(now - t.last_token_s) / new_tokens] * new_tokens)
        t.last_token_s = now

    def close(self, status: int | None = 200) -> None:
        """Abort what still runs; log and observe the request once (status None = never started)."""
        if self._closed:
            return
        self._closed = True
        for stream in self._streams:
            stream.abort()
        if status is None or not self._streams:
            return
        self.status = status
        for c in self.choices:
            if c.finish_reason is None:
                c.finish_reason = "abort"
        t = self._timing
        end = time.monotonic()
        self.state.metrics.observe_request(
            finish_reasons=[c.finish_reason for c in self.choices],
            engine_metrics=self._final_metrics,
            inter_token_s=t.inter_token_s,
        )
        usage = self.usage
        ttft = f"{t.first_token_s - t.start_s:.3f}" if t.first_token_s is not None else "-"
        reasons = ",".join(sorted({c.finish_reason or "abort" for c in self.choices}))
        logger.info("%s: status=%d prompt_tokens=%d completion_tokens=%d ttft_s=%s e2e_s=%.3f finish=%s",
                    self.request_id, status, usage.prompt_tokens, usage.completion_tokens, ttft,
                    end - t.start_s, reasons)
