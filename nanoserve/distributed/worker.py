"""A tensor-parallel worker: the process of one rank > 0, started by the executor (spawn).

It joins the process groups, loads its shard of the model, allocates its share of the KV pool, tells
rank 0 it is ready (or why it failed), then runs every step rank 0 broadcasts until told to stop. It
never outlives the engine: a thread waits on the parent's sentinel and exits the process when the
parent is gone (SIGKILL included); Ctrl-C in the terminal reaches the whole process group, so workers
ignore SIGINT and leave the shutdown to rank 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import traceback
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

from nanoserve.config import CacheConfig, EngineArgs, ModelConfig

logger = logging.getLogger(__name__)


@dataclass
class WorkerSpec:
    """Everything a worker needs, pickled to it at spawn."""

    args: EngineArgs
    model_config: ModelConfig
    cache_config: CacheConfig
    rank: int
    world_size: int
    init_method: str  # tcp://host:port, or env:// (MASTER_ADDR / MASTER_PORT, inherited at spawn)
    num_threads: int
    device: str


def _exit_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)  # the engine is gone: nothing to report to, nothing to clean

    threading.Thread(target=watch, name="nanoserve-parent-watch", daemon=True).start()


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """The worker process's entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    import torch
    import torch.distributed as dist

    from nanoserve.distributed import step_codec
    from nanoserve.distributed.communicator import Communicator
    from nanoserve.distributed.parallel_state import destroy_parallel_state, init_parallel_state
    from nanoserve.engine.model_runner import ModelRunner
    from nanoserve.model.loader import load_model
    from nanoserve.model.parallel_layers import bind_communicator

    torch.set_num_threads(spec.num_threads)
    torch.manual_seed(spec.args.seed)
    device = torch.device(spec.device)
    try:
        state = init_parallel_state(spec.rank, spec.world_size, spec.init_method, device)
        comm = Communicator(state)
        num_blocks = comm.broadcast_control(torch.zeros(1, dtype=torch.int64))  # rank 0 sized the pool
        cache_config = replace(spec.cache_config, num_blocks=int(num_blocks))
        model = load_model(spec.model_config, device, spec.args.cpu_linear, spec.rank, spec.world_size)
        bind_communicator(model, comm)
        runner = ModelRunner(model, spec.model_config, cache_config, device, spec.args.attention_backend)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    conn.send(("ready", None))
    dist.all_reduce(torch.ones(1), group=state.control_group)  # with rank 0: every rank is ready
    header = torch.empty(step_codec.HEADER_LEN, dtype=torch.int64)
    try:
        while True:
            comm.broadcast_control(header)
            if int(header[0]) == step_codec.CMD_SHUTDOWN:
                break
            payload = comm.broadcast_control(torch.empty(int(header[-1]), dtype=torch.int64))
            comm.begin_step()
            runner.execute_plan(step_codec.decode(header, payload))
    except Exception:
        # rank 0 failed or left; it reports the error to the user
        logger.debug("tensor-parallel worker %d stops: %s", spec.rank, traceback.format_exc())
        os._exit(1)
    destroy_parallel_state()
