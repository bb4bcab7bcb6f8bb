"""The process groups of one tensor-parallel engine: who this process is and whom it talks to.

Two groups over the same ranks: the device group (gloo on CPU, NCCL on CUDA) carries the model's
collectives with a short timeout, so a dead peer turns into an error, not a hang; the control group
(always gloo, CPU tensors) carries the step messages rank 0 broadcasts, with a long timeout, because a
worker waits on it for as long as the engine is idle. One engine per process: a second one while the
first is up is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from nanoserve.errors import InvalidRequestError

# A collective of the forward taking longer than this means a peer is gone (or wedged).
DEFAULT_COLLECTIVE_TIMEOUT_S = float(os.environ.get("NANOSERVE_TP_TIMEOUT_S", "60"))
# A worker waits this long for the next step before giving up: an idle engine is not an error.
CONTROL_TIMEOUT_S = 7 * 24 * 3600.0


@dataclass
class ParallelState:
    rank: int
    world_size: int
    device: torch.device
    device_group: dist.ProcessGroup
    control_group: dist.ProcessGroup

    @property
    def is_driver(self) -> bool:
        """Rank 0: the engine's own process, which schedules and samples."""
        return self.rank == 0


_state: ParallelState | None = None


def init_parallel_state(
    rank: int, world_size: int, init_method: str, device: torch.device,
    timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
) -> ParallelState:
    """Join the rendezvous at `init_method` (tcp://host:port or env://) as `rank` of `world_size`."""
    global _state
    if _state is not None:
        raise InvalidRequestError(
            "a tensor-parallel engine is already running in this process; shut it down first",
            "tensor_parallel_size",
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    control = dist.new_group(backend="gloo", timeout=timedelta(seconds=CONTROL_TIMEOUT_S))
    _state = ParallelState(rank, world_size, device, dist.group.WORLD, control)
    return _state


def get_parallel_state() -> ParallelState | None:
    """This process's state, or None outside a tensor-parallel engine."""
    return _state


def destroy_parallel_state() -> None:
    global _state
    if _state is None:
        return
    _state = None
    if dist.is_initialized():
        dist.destroy_process_group()
