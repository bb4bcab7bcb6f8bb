"""Asyncio front of the engine: one background thread owns the engine and runs its step loop.

The engine is anything that implements `EngineCore` (nanoserve/engine/core.py): `LLMEngine`, or the
model-free fake of the server's unit tests.

The engine is not thread-safe and its `step()` blocks for a whole model forward, so it never runs on
the event loop. Requests and aborts travel to the engine thread through a thread-safe command queue
and are applied between steps; outputs travel back to each request's `RequestStream` with
`loop.call_soon_threadsafe`.

Deltas are computed here, on the engine thread, because that is the one place that sees every
cumulative output in order: each `RequestOutput` a stream yields carries, per completion index, only
the text, token ids and logprobs that are new since the previous yield (vLLM's `DELTA` output kind).
A completion index appears in a delta only when it has something new or has just finished. Text the
engine may still cut (a possible stop string, an incomplete character) is held back until it is safe
(`stop_checker.releasable_chars`), so a stream's texts concatenate to the final text.

Failure modes, each a typed error so the server can map it to a status code:
- `add_request` rejects the request (InvalidRequestError / PromptTooLongError): raised to the caller
  of `add_request` / `generate`, other requests untouched.
- more than `max_num_queued_reqs` requests waiting: `QueueFullError` (503).
- shutting down: `EngineShuttingDownError` (503); a request aborted by shutdown ends its stream with it.
- `step()` or `check_health()` raises (a crashed step, a tensor-parallel worker gone): the engine is
  dead; every stream and every later request fails with `EngineDeadError` (500), /health says so. An
  idle engine thread wakes every HEALTH_POLL_S to check, so a worker's death is seen without traffic.
- the thread's last act is `engine.shutdown()`: an engine's worker processes never outlive it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nanoserve.config import CacheConfig, EngineArgs, ModelConfig
from nanoserve.engine.core import EngineCore, PromptInput
from nanoserve.engine.stats import EngineStats
from nanoserve.engine.stop_checker import releasable_chars
from nanoserve.errors import EngineDeadError, NanoserveError  # EngineDeadError: re-exported (HTTP 500)
from nanoserve.outputs import RequestOutput
from nanoserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

HEALTH_POLL_S = 0.5


class QueueFullError(NanoserveError):
    """More requests are waiting than `max_num_queued_reqs` allows (HTTP 503)."""


class EngineShuttingDownError(NanoserveError):
    """The server is draining for shutdown and takes no new requests; or it aborted this one (503)."""


@dataclass
class _Add:
    request_id: str
    prompt: PromptInput
    params: SamplingParams
    stream: RequestStream


@dataclass
class _Abort:
    request_ids: list[str]
    reason: BaseException | None = None  # sent to the streams; None = the caller has gone away


@dataclass
class _Stop:
    pass


class RequestStream:
    """One request's outputs as an async iterator of delta `RequestOutput`s.

    Use it as `async with stream:` so that leaving early (client gone, task cancelled) aborts the
    request and its KV blocks go back to the pool at once.
    """

    def __init__(self, request_id: str, engine: AsyncLLMEngine) -> None:
        self.request_id = request_id
        self.finished = False
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._accepted: asyncio.Future[None] = self._loop.create_future()

    # -- called on the event loop, scheduled by the engine thread --
    def _on_accepted(self, error: BaseException | None) -> None:
        if self._accepted.done():
            return
        if error is None:
            self._accepted.set_result(None)
        else:
            self._accepted.set_exception(error)

    def _put(self, item: RequestOutput | BaseException) -> None:
        self._queue.put_nowait(item)

    # -- consumer side --
    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._finish()
            raise item
        if item.finished:
            self._finish()
        return item

    def abort(self) -> None:
        """Abort the request if it is still running (idempotent, never blocks)."""
        if not self.finished:
            self._finish()
            self._engine._submit_abort([self.request_id])

    def _finish(self) -> None:
        self.finished = True
        self._engine._live.discard(self)

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.abort()


@dataclass
class _StreamState:
    """Engine-thread bookkeeping of how much of each completion a stream has already been sent."""

    stream: RequestStream
    params: SamplingParams  # its stop strings decide how much running text may be sent (stop_checker)
    sent_chars: dict[int, int] = field(default_factory=dict)
    sent_tokens: dict[int, int] = field(default_factory=dict)
    finished_indices: set[int] = field(default_factory=set)
    sent_prompt_logprobs: bool = False  # they come once, with the first delta that has them


class AsyncLLMEngine:
    """Serves many concurrent requests from one engine (an `EngineCore`) driven by a background thread."""

    def __init__(self, engine: EngineCore, max_num_queued_reqs: int | None = None) -> None:
        self.engine = engine
        self.max_num_queued_reqs = max_num_queued_reqs
        self._commands: queue.SimpleQueue[_Add | _Abort | _Stop] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards the counters the event loop reads
        self._num_pending_adds = 0
        self._num_waiting = 0
        self._stats = engine.get_stats()
        self._streams: dict[str, _StreamState] = {}  # engine thread only
        self._live: set[RequestStream] = set()  # event loop only: accepted, not yet finished
        self._accepting = True
        self._dead: EngineDeadError | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs,
                         max_num_queued_reqs: int | None = None) -> AsyncLLMEngine:
        from nanoserve.engine.llm_engine import LLMEngine

        return cls(LLMEngine.from_engine_args(engine_args), max_num_queued_reqs=max_num_queued_reqs)

    # ------------------------------------------------------------------ public, event loop side
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.engine.tokenizer

    @property
    def model_config(self) -> ModelConfig:
        return self.engine.model_config

    @property
    def cache_config(self) -> CacheConfig:
        return self.engine.cache_config

    @property
    def max_model_len(self) -> int:
        return self.engine.model_config.max_model_len

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def dead_error(self) -> EngineDeadError | None:
        return self._dead

    @property
    def num_live_requests(self) -> int:
        return len(self._live_unfinished())

    def get_stats(self) -> EngineStats:
        """The engine's stats as of the end of its last step (a snapshot; never touches the engine)."""
        return self._stats

    def get_replica_stats(self) -> list[EngineStats]:
        """Per engine replica (the metrics' `engine` label): one here; see engine/data_parallel.py."""
        return [self._stats]

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nanoserve-engine", daemon=True)
            self._thread.start()

    async def add_request(self, request_id: str, prompt: PromptInput,
                          params: SamplingParams) -> RequestStream:
        """Submit a request; returns its stream once the engine has accepted it.

        Raises the engine's InvalidRequestError / PromptTooLongError if it rejects the request,
        QueueFullError, EngineShuttingDownError or EngineDeadError.
        """
        self._check_can_accept()
        with self._lock:
            if self.max_num_queued_reqs is not None:
                queued = self._num_pending_adds + self._num_waiting
                if queued >= self.max_num_queued_reqs:
                    raise QueueFullError(
                        f"The server is busy: {queued} requests are already queued "
                        f"(--max-num-queued-reqs {self.max_num_queued_reqs}). Retry later."
                    )
            self._num_pending_adds += 1
        stream = RequestStream(request_id, self)
        self._commands.put(_Add(request_id, prompt, params, stream))
        try:
            await asyncio.shield(stream._accepted)
        except asyncio.CancelledError:
            stream.abort()  # the caller went away before the engine answered
            raise
        if not stream.finished:
            self._live.add(stream)
        return stream

    async def generate(self, request_id: str, prompt: PromptInput,
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """`add_request` and iterate: yields delta RequestOutputs; aborts the request if left early."""
        stream = await self.add_request(request_id, prompt, params)
        async with stream:
            async for out in stream:
                yield out

    def abort(self, request_id: str | list[str]) -> None:
        """Abort requests by id; their blocks return to the pool before the next step."""
        self._submit_abort([request_id] if isinstance(request_id, str) else list(request_id))

    def stop_accepting(self) -> None:
        """New requests now fail with EngineShuttingDownError; running ones carry on."""
        self._accepting = False

    async def shutdown(self, grace_s: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish within `grace_s`, abort the rest, stop the thread."""
        self.stop_accepting()
        deadline = time.monotonic() + grace_s
        while self._live_unfinished() and time.monotonic() < deadline and self.is_running:
            await asyncio.sleep(0.02)
        rest = [s.request_id for s in self._live_unfinished()]
        if rest:
            logger.warning("shutdown: aborting %d request(s) still running after %.1f s", len(rest), grace_s)
            self._commands.put(_Abort(rest, EngineShuttingDownError("The server is shutting down; "
                                                                    "the request was aborted.")))
        self._commands.put(_Stop())
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)

    # ------------------------------------------------------------------ internals, event loop side
    def _check_can_accept(self) -> None:
        if self._dead is not None:
            raise self._dead
        if not self._accepting:
            raise EngineShuttingDownError("The server is shutting down and accepts no new requests.")
        if not self.is_running:
            raise EngineShuttingDownError("The engine is not running.")

    def _live_unfinished(self) -> list[RequestStream]:
        return [s for s in self._live if not s.finished]

    def _submit_abort(self, request_ids: list[str]) -> None:
        if request_ids:
            self._commands.put(_Abort(request_ids))

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        try:
            while True:
                block = not self.engine.has_unfinished_requests()
                if not self._apply_commands(block=block):
                    return
                self.engine.check_health()
                if self.engine.has_unfinished_requests():
                    outputs = self.engine.step()
                    self._deliver(outputs)
                self._refresh_stats()
        except BaseException as e:  # noqa: BLE001 -- any crash of the step loop kills the engine
            logger.exception("engine step loop crashed")
            self._die(e)
        finally:
            try:
                self.engine.shutdown()
            except Exception:  # noqa: BLE001 -- nothing more to do for an engine that cannot stop cleanly
                logger.exception("engine shutdown failed")

    def _apply_commands(self, block: bool) -> bool:
        """Apply every queued command; when `block`, wait for the first. False once told to stop."""
        commands = []
        if block:
            try:
                commands.append(self._commands.get(timeout=HEALTH_POLL_S))
            except queue.Empty:
                return True
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                break
        for cmd in commands:
            if isinstance(cmd, _Stop):
                self._fail_all(EngineShuttingDownError("The engine has stopped."))
                return False
            if isinstance(cmd, _Add):
                self._apply_add(cmd)
            elif isinstance(cmd, _Abort):
                self._apply_abort(cmd)
        if commands:
            self._refresh_stats()
        return True

    def _apply_add(self, cmd: _Add) -> None:
        error: BaseException | None = None
        try:
            self.engine.add_request(cmd.request_id, cmd.prompt, cmd.params)
        except Exception as e:  # noqa: BLE001 -- a rejected request is that caller's error only
            error = e
        else:
            self._streams[cmd.request_id] = _StreamState(cmd.stream, cmd.params)
        with self._lock:
            self._num_pending_adds -= 1
            if error is None:
                self._num_waiting += 1  # it waits until the next step's stats say otherwise
        cmd.stream._loop.call_soon_threadsafe(cmd.stream._on_accepted, error)

    def _apply_abort(self, cmd: _Abort) -> None:
        known = [rid for rid in cmd.request_ids if rid in self._streams]
        if known:
            self.engine.abort_request(known)
        for rid in known:
            state = self._streams.pop(rid)
            if cmd.reason is not None:
                state.stream._loop.call_soon_threadsafe(state.stream._put, cmd.reason)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, RequestOutput]]] = {}
        for out in outputs:
            state = self._streams.get(out.request_id)
            if state is None:
                continue  # aborted meanwhile
            delta = _delta(out, state)
            if delta is None:
                continue
            if out.finished:
                del self._streams[out.request_id]
            by_loop.setdefault(state.stream._loop, []).append((state.stream, delta))
        # One wake-up of the event loop per step, not one per request.
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_put_all, items)

    def _refresh_stats(self) -> None:
        stats = self.engine.get_stats()
        with self._lock:
            self._stats = stats
            self._num_waiting = stats.num_waiting_requests  # requests, not their n sequences

    def _die(self, cause: BaseException) -> None:
        self._dead = EngineDeadError(f"The engine crashed: {type(cause).__name__}: {cause}")
        self._fail_all(self._dead)
        # Requests submitted after the crash but before _dead was set are still queued: fail them too.
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(cmd, _Add):
                cmd.stream._loop.call_soon_threadsafe(cmd.stream._on_accepted, self._dead)

    def _fail_all(self, error: BaseException) -> None:
        for state in self._streams.values():
            state.stream._loop.call_soon_threadsafe(state.stream._put, error)
        self._streams.clear()


def _put_all(items: list[tuple[RequestStream, RequestOutput]]) -> None:
    for stream, item in items:
        stream._put(item)


def _delta(out: RequestOutput, state: _StreamState) -> RequestOutput | None:
    """A copy of the cumulative `out` holding, per completion, only what `state` has not yet sent."""
    deltas = []
    for comp in out.outputs:
        i = comp.index
        if i in state.finished_indices:
            continue
        c0, t0 = state.sent_chars.get(i, 0), state.sent_tokens.get(i, 0)
        end = releasable_chars(comp.text, state.params, finished=comp.finish_reason is not None)
        if comp.finish_reason is not None and end < c0:
            logger.warning("%s: final text is shorter than what was streamed", out.request_id)
        text = comp.text[c0:end] if end > c0 else ""
        token_ids = list(comp.token_ids[t0:])
        logprobs = list(comp.logprobs[t0:]) if comp.logprobs is not None else None
        if not text and not token_ids and comp.finish_reason is None:
            continue
        state.sent_chars[i], state.sent_tokens[i] = max(c0, end), len(comp.token_ids)
        if comp.finish_reason is not None:
            state.finished_indices.add(i)
        deltas.append(dataclasses.replace(comp, text=text, token_ids=token_ids, logprobs=logprobs))
    prompt_logprobs = None
    if out.prompt_logprobs is not None and not state.sent_prompt_logprobs:
        prompt_logprobs, state.sent_prompt_logprobs = out.prompt_logprobs, True
    if not deltas and not out.finished and prompt_logprobs is None:
        return None
    return dataclasses.replace(out, outputs=deltas, prompt_logprobs=prompt_logprobs)

