"""`DataParallelEngine`: M engine replicas behind one server (`nanoserve serve --data-parallel-size M`).

Each replica is an `LLMEngine` in its own process (engine/process_engine.py) driven by its own
`AsyncLLMEngine`, so everything the async front does (deltas, aborts, queue limits, a dead engine
failing its streams) works per replica unchanged. This class has the async front's public face, so
the server takes either: `add_request` routes each request (engine/dp_router.py: least loaded, with
prefix-cache affinity) and returns the chosen replica's `RequestStream`, whose abort therefore reaches
the replica that runs it.

A replica that dies fails only its own in-flight requests (EngineDeadError, a 500 body); the others
keep serving and new requests avoid it, while `dead_error` makes /health report the server unhealthy.
CPU threads are split: without --num-cpu-threads each replica gets max(1, torch's threads // M);
with it, each replica gets that many. `--max-num-queued-reqs` applies per replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from nanoserve.config import CacheConfig, EngineArgs, ModelConfig
from nanoserve.engine.async_engine import (
    AsyncLLMEngine,
    EngineDeadError,
    EngineShuttingDownError,
    RequestStream,
)
from nanoserve.engine.core import PromptInput
from nanoserve.engine.dp_router import PrefixAffinityRouter, ReplicaLoad
from nanoserve.engine.process_engine import ProcessEngineClient
from nanoserve.engine.stats import EngineStats
from nanoserve.outputs import RequestOutput
from nanoserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Aborting an id no engine knows is a no-op that wakes a replica's idle engine thread (see on_death).
_WAKE_ID = "\0wake"


def threads_per_replica(engine_args: EngineArgs, total_threads: int) -> int:
    """Each replica's torch threads: as given, or an equal share of `total_threads` (at least 1)."""
    if engine_args.num_cpu_threads is not None:
        return engine_args.num_cpu_threads
    return max(1, total_threads // engine_args.data_parallel_size)


def _add(values: Iterable[Any]) -> Any:
    """Numbers add; lists (counts by position) add element by element."""
    values = list(values)
    if values and isinstance(values[0], list):
        return [sum(column) for column in itertools.zip_longest(*values, fillvalue=0)]
    return sum(values)


def sum_stats(stats: list[EngineStats]) -> EngineStats:
    """The replicas' stats as one engine's: counts and counters added, usage over the whole pool."""
    total = {f.name: _add(getattr(s, f.name) for s in stats) for f in dataclasses.fields(EngineStats)}
    blocks = total["num_total_blocks"]
    total["kv_cache_usage"] = (blocks - total["num_free_blocks"]) / blocks if blocks else 0.0
    running = sum(s.num_running for s in stats)
    total["kv_cache_fragmentation"] = (
        sum(s.kv_cache_fragmentation * s.num_running for s in stats) / running if running else 0.0)
    return EngineStats(**total)


class DataParallelEngine:
    """Routes requests over several `AsyncLLMEngine`s; the server uses it as it uses one of them."""

    def __init__(self, replicas: list[AsyncLLMEngine], router: PrefixAffinityRouter,
                 clients: list[ProcessEngineClient] | None = None) -> None:
        if len(replicas) != router.num_replicas:
            raise ValueError("one router slot per replica")
        self.replicas = replicas
        self.router = router
        self._clients = clients or []  # closed by shutdown (the replicas' processes)
        self._handing_over = [0] * len(replicas)  # requests routed to a replica, not yet accepted by it
        self._accepting = True

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs,
                         max_num_queued_reqs: int | None = None) -> DataParallelEngine:
        """Spawn `data_parallel_size` replica processes, wait until every one has loaded the model."""
        import torch

        from nanoserve.model.loader import load_tokenizer

        m = engine_args.data_parallel_size
        threads = threads_per_replica(engine_args, torch.get_num_threads())
        replica_args = dataclasses.replace(engine_args, data_parallel_size=1, num_cpu_threads=threads)
        clients = [ProcessEngineClient.spawn(replica_args, name=f"engine{i}") for i in range(m)]
        try:
            for client in clients:
                client.wait_ready()
            model_config = clients[0].model_config
            assert model_config is not None and clients[0].cache_config is not None
            tokenizer = load_tokenizer(model_config.tokenizer)
        except BaseException:
            for client in clients:
                client.close(timeout_s=2.0)
            raise
        replicas = []
        for client in clients:
            client.tokenizer = tokenizer
            replica = AsyncLLMEngine(client, max_num_queued_reqs=max_num_queued_reqs)
            client.on_death = lambda r=replica: r.abort(_WAKE_ID)
            replicas.append(replica)
        logger.info("data parallel: %d engine processes, %d CPU thread(s) each", m, threads)
        router = PrefixAffinityRouter(m, clients[0].cache_config.block_size)
        return cls(replicas, router, clients)

    # ------------------------------------------------------------------ what the server reads
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.replicas[0].tokenizer

    @property
    def model_config(self) -> ModelConfig:
        return self.replicas[0].model_config

    @property
    def cache_config(self) -> CacheConfig:
        """One replica's pool (each has its own of this size)."""
        return self.replicas[0].cache_config

    @property
    def max_model_len(self) -> int:
        return self.replicas[0].max_model_len

    @property
    def is_running(self) -> bool:
        return all(r.is_running for r in self.replicas)

    @property
    def dead_error(self) -> EngineDeadError | None:
        """The first dead replica's error: one dead replica makes the server unhealthy."""
        for i, r in enumerate(self.replicas):
            if r.dead_error is not None:
                return r.dead_error
            if i < len(self._clients) and not self._clients[i].process.is_alive() and r.is_running:
                return EngineDeadError(f"engine {i}'s process has exited")
        return None

    @property
    def num_live_requests(self) -> int:
        return sum(r.num_live_requests for r in self.replicas)

    def get_stats(self) -> EngineStats:
        return sum_stats(self.get_replica_stats())

    def get_replica_stats(self) -> list[EngineStats]:
        """Each replica's stats, in replica order (the `engine` label of the metrics)."""
        return [r.get_stats() for r in self.replicas]

    # ------------------------------------------------------------------ requests
    def start(self) -> None:
        for r in self.replicas:
            r.start()

    async def add_request(self, request_id: str, prompt: PromptInput,
                          params: SamplingParams) -> RequestStream:
        """Route the request to a replica and submit it there; raises what that replica raises."""
        if not self._accepting:
            raise EngineShuttingDownError("The server is shutting down and accepts no new requests.")
        loads = [self._load(i) for i in range(len(self.replicas))]
        if all(load is None for load in loads):
            raise self.dead_error or EngineShuttingDownError("No engine is running.")
        i = self.router.choose(self._token_ids(prompt), loads)
        self._handing_over[i] += 1
        try:
            return await self.replicas[i].add_request(request_id, prompt, params)
        finally:
            self._handing_over[i] -= 1

    async def generate(self, request_id: str, prompt: PromptInput,
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        stream = await self.add_request(request_id, prompt, params)
        async with stream:
            async for out in stream:
                yield out

    def abort(self, request_id: str | list[str]) -> None:
        """Abort by id: every replica is told, the one that runs it acts (unknown ids are ignored)."""
        for r in self.replicas:
            r.abort(request_id)

    def stop_accepting(self) -> None:
        self._accepting = False
        for r in self.replicas:
            r.stop_accepting()

    async def shutdown(self, grace_s: float = 30.0) -> None:
        """Drain every replica together, then end their processes."""
        self._accepting = False
        await asyncio.gather(*(r.shutdown(grace_s=grace_s) for r in self.replicas))
        await asyncio.gather(*(asyncio.to_thread(c.close) for c in self._clients))

    def close(self) -> None:
        """End the replicas' processes at once (when the engine never started)."""
        for c in self._clients:
            c.close(timeout_s=2.0)

    # ------------------------------------------------------------------ internals
    def _load(self, i: int) -> ReplicaLoad | None:
        """Replica i's load, or None if it cannot take requests."""
        r = self.replicas[i]
        if r.dead_error is not None or not r.is_running:
            return None
        if i < len(self._clients) and not self._clients[i].is_alive:
            return None
        return ReplicaLoad(r.num_live_requests + self._handing_over[i], r.get_stats().num_waiting_requests)

    def _token_ids(self, prompt: PromptInput) -> list[int] | None:
        """The prompt's token ids for prefix affinity (the server sends ids; text is tokenized here)."""
        if isinstance(prompt, dict):
            prompt = prompt.get("prompt_token_ids", prompt.get("prompt"))
        if isinstance(prompt, list):
            return prompt
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt))
        return None
