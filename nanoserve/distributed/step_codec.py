"""A step's plan as int64 tensors: what rank 0 broadcasts to the other ranks before each forward.

Two messages per step over the control group: a fixed-size header (the command and every length),
then one flat payload holding every list of the plan back to back. No pickling, no Python objects:
the same bytes could cross machines or feed a pipeline stage.
"""

from __future__ import annotations

from itertools import accumulate

import torch

from nanoserve.engine.model_runner import StepPlan
from nanoserve.model.attention import StepLayout

CMD_SHUTDOWN, CMD_STEP = 0, 1
HEADER_LEN = 8  # [command, T, B, S, R, total block-table entries, block_size, payload length]


def encode(plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """(header [HEADER_LEN], payload [P]) int64 tensors of `plan`."""
    lay = plan.layout
    table_lens = [len(t) for t in lay.block_tables]
    flat_tables = [b for t in lay.block_tables for b in t]
    payload = (plan.input_ids + plan.positions + lay.slot_mapping + lay.query_start + lay.context_lens
               + table_lens + flat_tables + plan.logits_rows + plan.prompt_rows)
    header = [CMD_STEP, len(plan.input_ids), lay.num_seqs, len(plan.logits_rows), len(plan.prompt_rows),
              len(flat_tables), lay.block_size, len(payload)]
    return torch.tensor(header, dtype=torch.int64), torch.tensor(payload, dtype=torch.int64)


def shutdown_header() -> torch.Tensor:
    return torch.tensor([CMD_SHUTDOWN] + [0] * (HEADER_LEN - 1), dtype=torch.int64)


def decode(header: torch.Tensor, payload: torch.Tensor) -> StepPlan:
    """Inverse of `encode`."""
    _, t, b, s, r, n_tables, block_size, _ = header.tolist()
    values = payload.tolist()
    sizes = [t, t, t, b + 1, b, b, n_tables, s, r]
    ends = list(accumulate(sizes))
    ids, pos, slots, qstart, ctx, table_lens, flat, logits_rows, prompt_rows = (
        values[e - n : e] for n, e in zip(sizes, ends, strict=True)
    )
    tables, i = [], 0
    for n in table_lens:
        tables.append(flat[i : i + n])
        i += n
    return StepPlan(ids, pos, StepLayout(qstart, ctx, tables, slots, block_size), logits_rows, prompt_rows)
