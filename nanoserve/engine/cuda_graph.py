"""CUDA graphs for pure-decode steps: `CudaGraphRunner`.

A decode step of a small model on a GPU is hundreds of tiny kernel launches; launching them from
Python costs more than running them. A CUDA graph records the launches of one forward once and
replays them with one call. Replay reuses the recorded shapes and addresses, so:

- batch sizes are bucketed (vLLM's sizes: 1, 2, 4, 8, then every multiple of 8 up to
  min(256, max_num_seqs), plus max_num_seqs itself); a step of B sequences runs the smallest bucket
  >= B, its extra rows padding (token 0 at position 0, K/V written to a scratch block no sequence
  owns; their output is sliced off);
- the inputs and the attention metadata live in static buffers: each step copies its token ids,
  positions and layout into them (the backend's `GraphMetadata.fill`) and replays;
- table widths (blocks per sequence) are bucketed in powers of two from `MIN_GRAPH_TOKENS` tokens up to
  max_seq_len_to_capture (vLLM's name) when the backend's decode cost grows with the width (the
  reference backend gathers the whole table), else one width. Longer contexts, steps with a prefill
  chunk or a speculative verify, and tensor-parallel runs stay eager.

Every batch bucket is captured at start-up at the narrowest width (every width when the backend's
cost does not depend on it); a wider bucket is captured the first time a step needs it (a few
forwards, once). `capture=False` swaps the capture for a direct call of the same forward on the same
static buffers: everything but the capture itself runs, and is tested, on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nanoserve.model.attention.backend import AttentionBackend, GraphMetadata

logger = logging.getLogger(__name__)

MAX_CAPTURE_BATCH = 256  # vLLM's default largest captured batch
MIN_GRAPH_TOKENS = 256  # the narrowest table width captured, in tokens


@dataclass
class CudaGraphConfig:
    max_batch: int  # the largest batch a graph serves: min(MAX_CAPTURE_BATCH, max_num_seqs)
    max_seq_len: int  # the longest context a graph serves: min(max_seq_len_to_capture, max_model_len)
    capture: bool = True  # False: call the forward directly (CPU tests of everything but the capture)


def cuda_graph_config(args: Any, device: torch.device, max_num_seqs: int,
                      max_model_len: int) -> CudaGraphConfig | None:
    """The engine's graph settings, or None (eager): graphs run on CUDA only, in one process, unless
    args.enforce_eager."""
    if device.type != "cuda" or args.enforce_eager or args.tensor_parallel_size > 1:
        return None
    return CudaGraphConfig(min(MAX_CAPTURE_BATCH, max_num_seqs),
                           min(args.max_seq_len_to_capture, max_model_len))


def capture_sizes(max_batch: int) -> list[int]:
    """The batch buckets: 1, 2, 4, 8, 16, 24, ... up to max_batch, and max_batch itself."""
    sizes = [s for s in [1, 2, 4, *range(8, max_batch + 1, 8)] if s <= max_batch]
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


def width_buckets(max_blocks: int, min_blocks: int, fixed_width: bool) -> list[int]:
    """Table widths in blocks: [max_blocks] when fixed, else min_blocks * 2^k below max_blocks, then it."""
    if fixed_width:
        return [max_blocks]
    widths, w = [], max(1, min_blocks)
    while w < max_blocks:
        widths.append(w)
        w *= 2
    return [*widths, max_blocks]


def smallest_at_least(n: int, buckets: list[int]) -> int | None:
    """The first bucket >= n (buckets ascending), or None when n exceeds them all."""
    return next((b for b in buckets if b >= n), None)


def capture_cuda_graph(
    forward: Callable[[], torch.Tensor], pool: Any
) -> tuple[Callable[[], torch.Tensor], Any]:
    """Record `forward` as a CUDA graph (sharing the memory pool `pool`; None: a new one); returns
    (replay, which returns the graph's static output, the pool). The only CUDA-only code here."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: lazy inits, cuBLAS workspaces, Triton compiles
        for _ in range(2):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = forward()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay, graph.pool()


class CudaGraphRunner:
    """Runs the pure-decode steps it `applies` to through captured graphs (one per batch and width bucket)."""

    def __init__(self, model: torch.nn.Module, backend: AttentionBackend, config: CudaGraphConfig,
                 block_size: int, scratch_block: int, device: torch.device) -> None:
        """scratch_block: a pool block no sequence is ever given (the runner allocates one more)."""
        self.model = model
        self.config = config
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.batch_sizes = capture_sizes(config.max_batch)
        max_blocks = -(-config.max_seq_len // block_size)
        # NotImplementedError for a backend without graph metadata: the caller stays eager.
        self.meta: GraphMetadata = backend.graph_metadata(config.max_batch, max_blocks, block_size)
        self.widths = width_buckets(max_blocks, -(-MIN_GRAPH_TOKENS // block_size), self.meta.fixed_width)
        pin = device.type == "cuda"
        self.input_ids = torch.zeros(config.max_batch, dtype=torch.int64, device=device)  # [Bmax]
        self.positions = torch.zeros(config.max_batch, dtype=torch.int64, device=device)  # [Bmax]
        self._ids_h = torch.zeros(config.max_batch, dtype=torch.int64, pin_memory=pin)
        self._pos_h = torch.zeros(config.max_batch, dtype=torch.int64, pin_memory=pin)
        self._copied: torch.cuda.Event | None = None  # after the last step's input copies (CUDA)
        self._graphs: dict[tuple[int, int], Callable[[], torch.Tensor]] = {}
        self._pool: Any = None
        self.replays = 0  # steps served by a graph (for tests and logs)

    def applies(self, input_ids: list[int], layout: Any, has_prompt_rows: bool) -> bool:
        """A step every sequence of which decodes one token, within the largest batch and width bucket."""
        n = layout.num_seqs
        return (0 < n <= self.config.max_batch and len(input_ids) == n and not has_prompt_rows
                and max(layout.context_lens) <= self.widths[-1] * self.block_size)

    def buckets(self, layout: Any) -> tuple[int, int]:
        """(batch bucket, width bucket in blocks) of a step `applies` accepted."""
        blocks = -(-max(layout.context_lens) // self.block_size)
        return smallest_at_least(layout.num_seqs, self.batch_sizes), smallest_at_least(blocks, self.widths)

    @torch.inference_mode()
    def capture_startup(self) -> None:
        """Capture every batch bucket at the narrowest width (every width if the backend's is fixed),
        largest first so the smaller graphs reuse its memory, on all-padding steps (scratch writes only)."""
        from nanoserve.model.attention.backend import StepLayout

        empty = StepLayout([0], [], [], [], self.block_size)
        widths = self.widths if self.meta.fixed_width else self.widths[:1]
        for width in widths:
            for batch in reversed(self.batch_sizes):
                self._stage([], [], batch)
                self.meta.fill(empty, batch, width, self.scratch_block)
                self._graph(batch, width)
        logger.info("CUDA graphs: batch buckets %s captured at widths %s blocks (capture=%s)",
                    self.batch_sizes, widths, self.config.capture)

    def run(self, input_ids: list[int], positions: list[int], layout: Any) -> torch.Tensor:
        """The hidden states [T, hidden] of a step `applies` accepted (a view of the graph's output,
        valid until the next replay)."""
        n = layout.num_seqs
        batch, width = self.buckets(layout)
        self._stage(input_ids, positions, batch)
        self.meta.fill(layout, batch, width, self.scratch_block)
        out = self._graph(batch, width)()  # [batch, hidden]
        self.replays += 1
        return out[:n]

    def _stage(self, input_ids: list[int], positions: list[int], batch: int) -> None:
        """Copy the step's tokens into the static inputs; padding rows: token 0 at position 0."""
        n = len(input_ids)
        if self._copied is not None:  # the host side may still be on its way to the device
            self._copied.synchronize()
        ids, pos = self._ids_h.numpy(), self._pos_h.numpy()
        ids[:n], pos[:n] = input_ids, positions
        ids[n:batch], pos[n:batch] = 0, 0
        copy = self.input_ids.device.type == "cuda"
        self.input_ids[:batch].copy_(self._ids_h[:batch], non_blocking=copy)
        self.positions[:batch].copy_(self._pos_h[:batch], non_blocking=copy)
        if copy:
            self._copied = torch.cuda.Event()
            self._copied.record()

    def _graph(self, batch: int, width: int) -> Callable[[], torch.Tensor]:
        """The graph of (batch, width), captured now if it is new (with the buffers as just filled)."""
        fn = self._graphs.get((batch, width))
        if fn is not None:
            return fn
        meta = self.meta.view(batch, width)
        ids, pos = self.input_ids[:batch], self.positions[:batch]

        def forward() -> torch.Tensor:
            return self.model(ids, pos, meta)  # [batch, hidden]

        if self.config.capture:
            fn, self._pool = capture_cuda_graph(forward, self._pool)
        else:
            fn = forward
        self._graphs[(batch, width)] = fn
        return fn
