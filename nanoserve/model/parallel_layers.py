"""Megatron-style sharded layers for tensor parallelism: each rank holds and computes its share.

- q/k/v and gate/up: column-parallel (`ColumnParallelLinear`), each projection of the stack split on
  its own, so a rank's stacked rows are [its q | its k | its v]; no communication.
- o and down: row-parallel (`RowParallelLinear`): the rank's input columns, then one all-reduce of the
  [T, hidden] partial sums. A bias is added once (rank 0's copy; the others zero theirs).
- embedding: vocab-parallel (`VocabParallelEmbedding`): each rank looks up the token ids in its range
  of the vocabulary, zeros elsewhere, then one all-reduce. lm_head (`ParallelLMHead`): each rank's
  vocab rows, the logits gathered on rank 0. A vocabulary not divisible by N is padded with zero rows.
- heads: q heads split as evenly as can be (the first num_heads % N ranks one more; o's input columns
  follow them). KV heads follow the q heads each rank holds: sharded when N divides them, replicated on
  several ranks when there are fewer KV heads than ranks or when a rank's q heads straddle KV groups, so
  ranks may hold different numbers of KV heads (`shard_heads`).

Every sharded parameter says which slice of its checkpoint tensor it holds (`checkpoint_slice`), so
the loader reads only that slice. With tensor_parallel_size 1 none of these layers is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from nanoserve.errors import ModelLoadError
from nanoserve.model.cpu_linear import FastLinear
from nanoserve.model.layers import GatedMLP

if TYPE_CHECKING:
    from nanoserve.distributed.communicator import Communicator
    from nanoserve.model.llama import DecoderSpec

Ranges = list[tuple[int, int]]  # (start, length) runs of rows/columns of a checkpoint tensor


@dataclass
class CheckpointSlice:
    """Which part of a checkpoint tensor fills which part of a parameter."""

    target: torch.Tensor  # the parameter, or the rows of it, that receives the slice
    full_shape: tuple[int, ...]  # the checkpoint tensor's shape
    dim: int | None = None  # None: the whole tensor
    ranges: Ranges | None = None  # along `dim`, concatenated in order


def split_range(total: int, world_size: int, rank: int) -> tuple[int, int]:
    """(start, length) of rank's share of `total`: as even as can be, the first ranks one more."""
    base, extra = divmod(total, world_size)
    return rank * base + min(rank, extra), base + (rank < extra)


def shard_heads(num_heads: int, num_kv_heads: int, world_size: int, rank: int) -> tuple[int, int, list[int]]:
    """(first q head, q heads, the KV heads in local order) of `rank`.

    The q heads split as evenly as can be (`split_range`: the first num_heads % N ranks one more).
    Local q head i uses local KV head i // g, g the largest divisor of the local q heads whose runs
    never straddle a KV group: grouped attention stays uniform on every rank, and a run that would
    straddle gets KV slots of its own (a KV head then repeated in the local list). Ranks may so hold
    different numbers of KV slots; the pool is sized by the largest (distributed/kv_sizing.py).
    """
    if num_heads < world_size:  # a rank without a q head would have nothing to attend with
        raise ModelLoadError(
            f"{num_heads} attention heads cannot be split over tensor_parallel_size {world_size}: "
            "every rank needs at least one"
        )
    first, local = split_range(num_heads, world_size, rank)
    group = num_heads // num_kv_heads
    kv_of = [(first + i) // group for i in range(local)]  # the full model's KV head of each local q head
    g = max(g for g in range(1, local + 1)
            if local % g == 0 and all(kv_of[i] == kv_of[i - i % g] for i in range(local)))
    return first, local, kv_of[::g]


def _merge(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for start, length in ranges:
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((start, length))
    return out


class ColumnParallelLinear(FastLinear):
    """A stack of projections of which this rank holds some output rows of each (no communication)."""

    def __init__(self, in_features: int, parts: list[tuple[int, Ranges]], bias: bool) -> None:
        """parts: per projection, (its full output rows, the row runs this rank holds)."""
        super().__init__(in_features, [sum(n for _, n in r) for _, r in parts], bias)
        self.parts = [(full, _merge(r)) for full, r in parts]

    def checkpoint_slice(self, leaf: str, index: int) -> CheckpointSlice:
        full, ranges = self.parts[index]
        shape = (full, self.in_features) if leaf == "weight" else (full,)
        return CheckpointSlice(self.shard(leaf, index), shape, 0, ranges)


class RowParallelLinear(FastLinear):
    """This rank's input columns of a projection; the partial outputs are summed over the ranks."""

    def __init__(self, full_in: int, cols: tuple[int, int], out_features: int, bias: bool, rank: int) -> None:
        super().__init__(cols[1], out_features, bias)
        self.full_in, self.cols, self.rank = full_in, cols, rank
        self.comm: Communicator | None = None  # bound by the runner's executor

    def checkpoint_slice(self, leaf: str, index: int | None) -> CheckpointSlice:
        if leaf == "bias":
            return CheckpointSlice(self.bias, (self.out_features,))
        return CheckpointSlice(self.weight, (self.out_features, self.full_in), 1, [self.cols])

    def prepare(self, backend: str = "auto") -> None:
        if self.bias is not None and self.rank != 0:
            with torch.no_grad():
                self.bias.zero_()  # the all-reduce sums the ranks' outputs: the bias counts once
        super().prepare(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(super().forward(x), "layer")  # [T, out]


def vocab_shard(vocab_size: int, world_size: int, rank: int) -> tuple[int, int, int]:
    """(first token id, ids held, padded rows per rank): ceil(vocab / N) rows each, the tail zero."""
    per = -(-vocab_size // world_size)
    start = rank * per
    return start, max(0, min(per, vocab_size - start)), per


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, world_size: int, rank: int) -> None:
        super().__init__()
        self.vocab_size, self.hidden = vocab_size, hidden
        self.start, self.valid, per = vocab_shard(vocab_size, world_size, rank)
        self.weight = nn.Parameter(torch.empty(per, hidden), requires_grad=False)  # [per, hidden]
        self.comm: Communicator | None = None

    def checkpoint_slice(self, leaf: str, index: int | None) -> CheckpointSlice:
        return CheckpointSlice(self.weight.narrow(0, 0, self.valid), (self.vocab_size, self.hidden), 0,
                               [(self.start, self.valid)])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.start  # [T]
        outside = (local < 0) | (local >= self.valid)
        x = F.embedding(local.masked_fill(outside, 0), self.weight)  # [T, hidden]
        x.masked_fill_(outside.unsqueeze(1), 0.0)
        return self.comm.all_reduce(x, "embedding")


class ParallelLMHead(FastLinear):
    """This rank's vocab rows of the head; the logits are gathered on rank 0 (None on the others)."""

    def __init__(self, hidden: int, vocab_size: int, world_size: int, rank: int) -> None:
        self.start, self.valid, per = vocab_shard(vocab_size, world_size, rank)
        super().__init__(hidden, per, bias=False)
        self.vocab_size = vocab_size
        self.comm: Communicator | None = None

    def checkpoint_slice(self, leaf: str, index: int | None) -> CheckpointSlice:
        return CheckpointSlice(self.weight.narrow(0, 0, self.valid), (self.vocab_size, self.in_features), 0,
                               [(self.start, self.valid)])

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        logits = self.comm.gather_last_dim(super().forward(x))  # [N, per · world] on rank 0
        return None if logits is None else logits[:, : self.vocab_size]


def parallel_attention_projections(
    spec: DecoderSpec,
) -> tuple[ColumnParallelLinear, RowParallelLinear, int, int]:
    """(qkv_proj, o_proj, local q heads, local KV heads) of rank spec.tp_rank."""
    d = spec.head_dim
    first, local, kv_heads = shard_heads(spec.num_heads, spec.num_kv_heads, spec.tp_size, spec.tp_rank)
    q_rows = [(first * d, local * d)]
    kv_rows = [(kv * d, d) for kv in kv_heads]
    kv_full = spec.num_kv_heads * d
    parts = [(spec.num_heads * d, q_rows), (kv_full, kv_rows), (kv_full, kv_rows)]
    qkv = ColumnParallelLinear(spec.hidden_size, parts, spec.qkv_bias)
    cols = (first * d, local * d)
    o = RowParallelLinear(spec.num_heads * d, cols, spec.hidden_size, spec.o_bias, spec.tp_rank)
    return qkv, o, local, len(kv_heads)


def parallel_mlp(spec: DecoderSpec) -> GatedMLP:
    """A GatedMLP whose gate/up rows and down columns are rank spec.tp_rank's share of the intermediate."""
    size = spec.intermediate_size
    cols = split_range(size, spec.tp_size, spec.tp_rank)
    mlp = GatedMLP(spec.hidden_size, 1, spec.mlp_bias)
    # The largest share, not this rank's: every rank must cut a step into the same row chunks (each
    # chunk's down projection is an all-reduce).
    mlp.intermediate = -(-size // spec.tp_size)
    mlp.gate_up_proj = ColumnParallelLinear(spec.hidden_size, [(size, [cols]), (size, [cols])], spec.mlp_bias)
    mlp.down_proj = RowParallelLinear(size, cols, spec.hidden_size, spec.mlp_bias, spec.tp_rank)
    return mlp


def bind_communicator(model: nn.Module, comm: Communicator) -> None:
    """Hand every sharded layer of `model` the communicator its collectives go through."""
    for module in model.modules():
        if isinstance(module, RowParallelLinear | VocabParallelEmbedding | ParallelLMHead):
            module.comm = comm
