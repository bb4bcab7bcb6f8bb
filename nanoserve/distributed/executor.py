"""Rank 0's side of tensor parallelism: it starts the workers, sends each step, and stops them.

The engine process is rank 0: it schedules, builds each step's plan, broadcasts it (step_codec.py),
runs its own shard's forward beside the workers and samples from the gathered logits. Workers are
spawned (not forked: torch and its thread pools do not survive a fork), one per rank, each with its
share of the CPU threads; they exit when told to, when the engine exits, and when the engine dies
(worker.py watches the parent). A worker that dies or stops answering turns the step into an
`EngineDeadError` (its exit code in the message) instead of a hang: liveness is checked before each
step, and a collective with a dead peer fails (connection closed) or times out.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from nanoserve.config import CacheConfig, EngineArgs, ModelConfig
from nanoserve.distributed import step_codec
from nanoserve.distributed.communicator import Communicator
from nanoserve.distributed.parallel_state import ParallelState, destroy_parallel_state, init_parallel_state
from nanoserve.distributed.worker import WorkerSpec, worker_main
from nanoserve.engine.model_runner import StepPlan
from nanoserve.errors import EngineDeadError, ModelLoadError

logger = logging.getLogger(__name__)

T = TypeVar("T")
WORKER_READY_TIMEOUT_S = float(os.environ.get("NANOSERVE_TP_READY_TIMEOUT_S", "600"))
SHUTDOWN_JOIN_S = 5.0


def threads_per_rank(args: EngineArgs) -> int:
    """num_cpu_threads is per rank; by default the machine's cores are split evenly between the ranks."""
    if args.num_cpu_threads is not None:
        return args.num_cpu_threads
    return max(1, (os.cpu_count() or 1) // args.tensor_parallel_size)


def ranks_per_node(args: EngineArgs) -> int:
    return args.tensor_parallel_size // args.nnodes


def rank_device(device: torch.device, rank: int, per_node: int) -> torch.device:
    """CUDA: one GPU per rank (cuda:local rank); CPU: the CPU."""
    return torch.device("cuda", rank % per_node) if device.type == "cuda" else device


def rendezvous(args: EngineArgs) -> str:
    """torch.distributed's init_method: env:// (MASTER_ADDR / MASTER_PORT, as torchrun) when a port is
    given, which every node of a multi-node run needs; else a free local port."""
    if args.master_port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"tcp://127.0.0.1:{s.getsockname()[1]}"
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = args.master_addr, str(args.master_port)
    return "env://"


def _spawn_workers(args: EngineArgs, model_config: ModelConfig, cache_config: CacheConfig, ranks: range,
                   init_method: str, device: torch.device) -> tuple[list[Any], list[Connection]]:
    """Start one worker process per rank in `ranks` (spawn); returns them and their status pipes."""
    ctx = multiprocessing.get_context("spawn")
    procs, conns = [], []
    for rank in ranks:
        spec = WorkerSpec(args, model_config, cache_config, rank, args.tensor_parallel_size, init_method,
                          threads_per_rank(args), str(rank_device(device, rank, ranks_per_node(args))))
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=worker_main, args=(spec, send), name=f"nanoserve-tp-rank{rank}",
                           daemon=True)
        proc.start()
        send.close()  # the child's end: EOF here once the child is gone
        procs.append(proc)
        conns.append(recv)
    return procs, conns


def run_headless(args: EngineArgs) -> int:
    """Node node_rank > 0 of a multi-node engine: run this node's workers until node 0 stops them.

    Returns 0 when every worker exited cleanly (node 0 shut the engine down), else 1. SIGTERM / Ctrl-C
    stop the workers (node 0 then sees its collectives fail)."""
    import signal

    from nanoserve.model.loader import load_model_config, resolve_device

    model_config = load_model_config(args)
    per_node = ranks_per_node(args)
    ranks = range(args.node_rank * per_node, (args.node_rank + 1) * per_node)
    placeholder = CacheConfig(args.block_size, 0, args.enable_prefix_caching)  # rank 0 sends the block count
    procs, conns = _spawn_workers(args, model_config, placeholder, ranks, rendezvous(args),
                                  resolve_device(args.device))
    logger.info("node %d: tensor-parallel ranks %d..%d started", args.node_rank, ranks[0], ranks[-1])
    stop = lambda *_: _stop(procs, join_s=0.0)  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        stop()
    return 0 if all(p.exitcode == 0 for p in procs) else 1


class TensorParallelExecutor:
    def __init__(self, state: ParallelState, procs: list[multiprocessing.Process],
                 conns: list[Connection]) -> None:
        self.state = state
        self.comm = Communicator(state)
        self.procs, self.conns = procs, conns  # of ranks 1..N-1
        self.failure: str | None = None
        self._closed = False
        atexit.register(_shutdown_at_exit, weakref.ref(self))  # before multiprocessing kills the daemons

    @classmethod
    def start(cls, args: EngineArgs, model_config: ModelConfig, cache_config: CacheConfig,
              device: torch.device) -> TensorParallelExecutor:
        """Spawn ranks 1..N-1 and join the process groups as rank 0 (the workers load meanwhile)."""
        init_method = rendezvous(args)
        procs, conns = _spawn_workers(args, model_config, cache_config, range(1, ranks_per_node(args)),
                                      init_method, device)
        try:
            state = init_parallel_state(0, args.tensor_parallel_size, init_method, device)
            executor = cls(state, procs, conns)
            # Every rank's pool has the same blocks; a worker on another node has no budget of its own.
            executor.comm.broadcast_control(torch.tensor([cache_config.num_blocks], dtype=torch.int64))
        except BaseException:
            _stop(procs)
            raise
        return executor

    def wait_ready(self, timeout_s: float = WORKER_READY_TIMEOUT_S) -> None:
        """Block until every worker has loaded its shard; a worker's failure is a ModelLoadError."""
        deadline = time.monotonic() + timeout_s
        for rank, (proc, conn) in enumerate(zip(self.procs, self.conns, strict=True), start=1):
            wait([conn, proc.sentinel], timeout=max(0.0, deadline - time.monotonic()))
            message = conn.recv() if conn.poll() else None
            if message is None or message[0] != "ready":
                self.shutdown()
                detail = message[1] if message else f"exit code {proc.exitcode}" if not proc.is_alive() \
                    else f"no answer in {timeout_s:.0f} s"
                raise ModelLoadError(f"tensor-parallel worker {rank} failed to start: {detail}")
        try:  # every rank, on every node, has its shard
            dist.all_reduce(torch.ones(1), group=self.state.control_group)
        except Exception as e:
            self.shutdown()
            raise ModelLoadError(f"a tensor-parallel worker on another node failed to start: {e}") from e

    # ---- steps -------------------------------------------------------------------------------
    def run_step(self, step: Callable[[], T]) -> T:
        """Run rank 0's part of one step; a dead or silent worker makes it an EngineDeadError."""
        if self.failure is not None:
            raise EngineDeadError(self.failure)
        self._check_alive()
        self.comm.begin_step()
        try:
            return step()
        except Exception as e:
            collective = isinstance(e, dist.DistError) or "gloo" in str(e)
            # A peer's death reaches the collective before its exit is reaped: give it a moment.
            dead = self._dead_worker(wait_s=2.0 if collective else 0.0)
            if dead is None and not collective:
                raise
            self._fail(dead or f"a collective failed: {e}")
            raise EngineDeadError(self.failure) from e
        except BaseException as e:  # Ctrl-C mid-step: the workers wait in a collective rank 0 left
            self._fail(f"a step was interrupted ({type(e).__name__}); the ranks are out of step")
            raise

    def send_step(self, plan: StepPlan) -> None:
        header, payload = step_codec.encode(plan)
        self.comm.broadcast_control(header)
        self.comm.broadcast_control(payload)

    def _dead_worker(self, wait_s: float) -> str | None:
        """A description of the first dead worker (waiting up to wait_s for one to be seen exiting)."""
        deadline = time.monotonic() + wait_s
        if wait_s > 0:
            ready = wait([p.sentinel for p in self.procs], timeout=wait_s)
            # The sentinel closes as the child exits, a moment before it can be reaped.
            while ready and all(p.is_alive() for p in self.procs) and time.monotonic() < deadline:
                time.sleep(0.01)
        for rank, proc in enumerate(self.procs, start=1):
            if not proc.is_alive():
                return f"tensor-parallel worker {rank} (pid {proc.pid}) died with exit code {proc.exitcode}"
        return None

    def check_health(self) -> None:
        """EngineDeadError if the engine has failed or a worker has died (then the others are stopped)."""
        if self.failure is not None:
            raise EngineDeadError(self.failure)
        self._check_alive()

    def _check_alive(self) -> None:
        dead = self._dead_worker(0.0)
        if dead is not None:
            self._fail(dead)
            raise EngineDeadError(dead)

    def _fail(self, why: str) -> None:
        self.failure = why
        logger.error("engine dead: %s", why)
        self.shutdown()

    # ---- lifecycle ---------------------------------------------------------------------------
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def shutdown(self) -> None:
        """Stop every worker and leave the process groups (idempotent; never hangs on a dead worker)."""
        if self._closed:
            return
        self._closed = True
        clean = self.failure is None and self._dead_worker(0.0) is None and self._send_shutdown()
        _stop(self.procs, join_s=SHUTDOWN_JOIN_S if clean else 0.0)
        for conn in self.conns:
            conn.close()
        destroy_parallel_state()

    def _send_shutdown(self) -> bool:
        """Tell the workers to stop; False when that did not go through in time (a wedged worker)."""
        done: list[bool] = []

        def send() -> None:
            try:
                self.comm.broadcast_control(step_codec.shutdown_header())
                done.append(True)
            except Exception as e:  # noqa: BLE001 - a worker gone meanwhile: stopped by _stop anyway
                logger.debug("shutdown broadcast failed: %s", e)

        thread = threading.Thread(target=send, name="nanoserve-tp-shutdown", daemon=True)
        thread.start()
        thread.join(SHUTDOWN_JOIN_S)
        return bool(done)


def _shutdown_at_exit(ref: weakref.ref) -> None:
    executor = ref()
    if executor is not None:
        executor.shutdown()


def _stop(procs: list[Any], join_s: float = SHUTDOWN_JOIN_S) -> None:
    """Join the workers; terminate, then kill, any that do not exit in time."""
    deadline = time.monotonic() + join_s
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=2.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
