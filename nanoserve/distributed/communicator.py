"""The collectives of a tensor-parallel forward, counted: the engine's communication truth.

Every call adds its payload bytes and its wall time to the counters of the current step (reset by
`begin_step`) and to the running totals. Payload bytes are the size of the tensor a rank hands the
collective: an all-reduce of a [T, hidden] activation counts T·hidden·dtype bytes whatever algorithm
gloo or NCCL picks; `wire_bytes_per_rank` turns that into what a ring sends per rank (2(N−1)/N × the
message), the planner's `tp_allreduce_bytes_per_layer` convention. A gather counts the gathered
result (N × the local shard). Seconds are host wall time around the call (on CUDA the collective is
asynchronous to the host, so they mean little there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from nanoserve.distributed.parallel_state import ParallelState


@dataclass
class CommStats:
    """Bytes and seconds of collectives, by tag ("layer", "embedding", "logits", "control")."""

    bytes_by_tag: dict[str, int] = field(default_factory=dict)
    calls_by_tag: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, tag: str, num_bytes: int, seconds: float) -> None:
        self.bytes_by_tag[tag] = self.bytes_by_tag.get(tag, 0) + num_bytes
        self.calls_by_tag[tag] = self.calls_by_tag.get(tag, 0) + 1
        self.seconds += seconds

    def bytes(self, tag: str) -> int:
        return self.bytes_by_tag.get(tag, 0)

    def calls(self, tag: str) -> int:
        return self.calls_by_tag.get(tag, 0)


def wire_bytes_per_rank(payload_bytes: int, world_size: int) -> float:
    """What a ring all-reduce of `payload_bytes` sends from each rank: 2(N−1)/N × the message."""
    return 2 * (world_size - 1) / world_size * payload_bytes


class Communicator:
    """all_reduce / gather / broadcast over this engine's groups, each one counted."""

    def __init__(self, state: ParallelState) -> None:
        self.state = state
        self.rank, self.world_size = state.rank, state.world_size
        self.step = CommStats()  # since the last begin_step
        self.total = CommStats()

    def begin_step(self) -> None:
        self.step = CommStats()

    def _count(self, tag: str, num_bytes: int, t0: float) -> None:
        dt = time.perf_counter() - t0
        self.step.add(tag, num_bytes, dt)
        self.total.add(tag, num_bytes, dt)

    def all_reduce(self, x: torch.Tensor, tag: str = "layer") -> torch.Tensor:
        """Sum `x` over the ranks, in place; returns x."""
        t0 = time.perf_counter()
        dist.all_reduce(x, group=self.state.device_group)
        self._count(tag, x.numel() * x.element_size(), t0)
        return x

    def gather_last_dim(self, x: torch.Tensor, tag: str = "logits") -> torch.Tensor | None:
        """Rank 0: the ranks' `x` concatenated along the last dim; other ranks: None."""
        x = x.contiguous()
        t0 = time.perf_counter()
        parts = [torch.empty_like(x) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(x, parts, dst=0, group=self.state.device_group)
        self._count(tag, x.numel() * x.element_size() * self.world_size, t0)
        return torch.cat(parts, dim=-1) if parts is not None else None

    def broadcast_control(self, x: torch.Tensor, tag: str = "control") -> torch.Tensor:
        """Rank 0's CPU tensor `x` into every rank's `x` (same shape and dtype), over the control group."""
        t0 = time.perf_counter()
        dist.broadcast(x, src=0, group=self.state.control_group)
        self._count(tag, x.numel() * x.element_size(), t0)
        return x
