"""An engine in a child process, and `ProcessEngineClient`, the `EngineCore` that drives it over a pipe.

The child (`replica_main`, started with multiprocessing's spawn context) builds an `LLMEngine` and then
answers one call at a time: `add_request`, `abort_request`, `step`. Every reply carries the result
together with the engine's stats and whether it has unfinished requests, so `get_stats` and
`has_unfinished_requests` are local reads on the parent's side: one pipe round trip per call, and the
parent's engine thread (AsyncLLMEngine's) is the only caller, exactly as with an in-process engine.
Requests, SamplingParams and RequestOutputs are plain dataclasses and travel pickled.

Lifecycle:
- the child dies with the parent: PR_SET_PDEATHSIG (Linux) kills it when the parent goes, and a closed
  pipe (EOF) ends its loop; it ignores SIGINT, so Ctrl-C in a terminal (sent to the whole process
  group) leaves the draining to the parent, which then closes it;
- the child dying (kill -9, a crash) shows on the parent's side as EOF on the pipe: the call raises
  EngineDeadError and the client stays dead (`has_unfinished_requests` turns True so that the async
  front's loop calls `step`, which raises, and fails that replica's streams). `on_death`, called from a
  watcher thread as soon as the process exits, lets the owner wake an idle front.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from nanoserve.config import CacheConfig, EngineArgs, ModelConfig
from nanoserve.engine.async_engine import EngineDeadError
from nanoserve.engine.core import PromptInput
from nanoserve.engine.stats import EngineStats
from nanoserve.errors import InvalidRequestError
from nanoserve.outputs import RequestOutput
from nanoserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_CALLS = frozenset({"add_request", "abort_request", "step"})


@dataclasses.dataclass
class _Reply:
    result: Any
    stats: EngineStats
    has_unfinished: bool


@dataclasses.dataclass
class _Ready:
    model_config: ModelConfig
    cache_config: CacheConfig
    stats: EngineStats


@dataclasses.dataclass
class _Failed:
    error: BaseException
    fatal: bool  # the engine is unusable (a crashed step, a failed load): the child exits


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else an equivalent that does (exception classes whose __init__
    takes more than the message, like PromptTooLongError, do not unpickle)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 -- any failure means: send a plain copy
        if isinstance(exc, InvalidRequestError):
            return InvalidRequestError(exc.message, exc.param)
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent went before prctl took effect
        os._exit(1)


def replica_main(conn: Connection, engine_args: EngineArgs, name: str, parent_pid: int,
                 log_level: int) -> None:
    """The child process: build the engine, then serve calls until told to close or the pipe closes."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s")
    from nanoserve.engine.llm_engine import LLMEngine

    try:
        engine = LLMEngine.from_engine_args(engine_args)
    except BaseException as e:  # noqa: BLE001 -- reported to the parent, which raises it
        conn.send(_Failed(_portable(e), fatal=True))
        return
    conn.send(_Ready(engine.model_config, engine.cache_config, engine.get_stats()))
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if method == "close":
            engine.shutdown()  # its tensor-parallel workers, if any, before the process goes
            return
        assert method in _CALLS, method
        try:
            result = getattr(engine, method)(*args)
        except Exception as e:  # noqa: BLE001 -- a refused request is the caller's; a failed step is fatal
            fatal = method == "step"
            if fatal:
                logger.exception("engine step crashed")
            conn.send(_Failed(_portable(e), fatal=fatal))
            if fatal:
                engine.shutdown()
                return
            continue
        conn.send(_Reply(result, engine.get_stats(), engine.has_unfinished_requests()))


class ProcessEngineClient:
    """`EngineCore` over an `LLMEngine` in a child process. `spawn` starts it; `wait_ready` waits for
    the model to load (spawn several first, then wait: they load in parallel)."""

    def __init__(self, process: BaseProcess, conn: Connection, name: str) -> None:
        self.process = process
        self.name = name
        self._conn = conn
        self._dead: EngineDeadError | None = None
        self._stats: EngineStats | None = None
        self._has_unfinished = False
        self.model_config: ModelConfig | None = None  # set by wait_ready
        self.cache_config: CacheConfig | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None  # set by the owner (shared by all replicas)
        self.on_death: Callable[[], None] | None = None

    @classmethod
    def spawn(cls, engine_args: EngineArgs, name: str = "replica0") -> ProcessEngineClient:
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        # Not a daemon: a replica may start processes of its own (tensor-parallel workers).
        process = ctx.Process(target=replica_main, name=f"nanoserve-{name}", daemon=False,
                              args=(child_conn, engine_args, name, os.getpid(),
                                    logging.getLogger().getEffectiveLevel()))
        process.start()
        child_conn.close()  # only the child holds its end: its death is EOF here
        return cls(process, parent_conn, name)

    def wait_ready(self) -> None:
        """Block until the child has loaded its engine; raise its error (or EngineDeadError) if it fails."""
        try:
            msg = self._conn.recv()
        except (EOFError, OSError):
            raise self._mark_dead() from None
        if isinstance(msg, _Failed):
            self._mark_dead()
            raise msg.error
        assert isinstance(msg, _Ready)
        self.model_config, self.cache_config, self._stats = msg.model_config, msg.cache_config, msg.stats
        threading.Thread(target=self._watch, name=f"nanoserve-{self.name}-watch", daemon=True).start()

    # ------------------------------------------------------------------ EngineCore
    def add_request(self, request_id: str, prompt: PromptInput, params: SamplingParams) -> None:
        self._call("add_request", request_id, prompt, params)

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self._call("abort_request", ids)

    def step(self) -> list[RequestOutput]:
        return self._call("step")

    def has_unfinished_requests(self) -> bool:
        # Dead: True, so that the front's loop calls step() and learns of it.
        return self._has_unfinished or not self.is_alive

    def get_stats(self) -> EngineStats:
        assert self._stats is not None, "wait_ready() first"
        return self._stats

    def check_health(self) -> None:
        if not self.is_alive:
            raise self._mark_dead()

    def shutdown(self) -> None:
        self.close()

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_alive(self) -> bool:
        return self._dead is None and self.process.is_alive()

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the child to exit; terminate, then kill it if it does not within `timeout_s`."""
        if self.process.is_alive():
            try:
                self._conn.send(("close", ()))
            except OSError:
                pass
            self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._conn.close()

    def _call(self, method: str, *args: Any) -> Any:
        if self._dead is not None:
            raise self._dead
        try:
            self._conn.send((method, args))
            msg = self._conn.recv()
        except (EOFError, OSError):
            raise self._mark_dead() from None
        if isinstance(msg, _Failed):
            if msg.fatal:
                self._mark_dead(msg.error)
            raise msg.error
        assert isinstance(msg, _Reply)
        self._stats, self._has_unfinished = msg.stats, msg.has_unfinished
        return msg.result

    def _mark_dead(self, cause: BaseException | None = None) -> EngineDeadError:
        if self._dead is None:
            self.process.join(1.0)  # the exit code, when it has one
            how = f"exit code {self.process.exitcode}" if self.process.exitcode is not None else "no reply"
            detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
            self._dead = EngineDeadError(f"engine {self.name} died ({how}){detail}")
        return self._dead

    def _watch(self) -> None:
        from multiprocessing.connection import wait

        wait([self.process.sentinel])
        if self.on_death is not None:
            self.on_death()
