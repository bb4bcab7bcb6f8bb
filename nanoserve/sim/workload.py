"""Simulated workloads: when each request arrives and how long its prompt and output are.

Synthetic workloads reuse the benchmarks' own generators, so a simulation and a `bench serve` run with
the same flags see the same requests: lengths from vLLM's `random` dataset (bench/dataset.py) and
arrival gaps from `bench serve` (gamma with shape `burstiness` and mean 1/rate; 1 = Poisson, rate inf
= all at time 0). A trace is JSONL, one request per line: {"arrival_s": 0.12, "prompt_len": 512,
"output_len": 128}. Prompt token ids are random (they matter only to the prefix cache: distinct
random prompts share no block).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from nanoserve.errors import InvalidRequestError

DEFAULT_VOCAB_SIZE = 32_000


@dataclass
class SimRequest:
    request_id: str
    arrival_s: float  # since the start of the run
    prompt_token_ids: list[int]
    output_len: int  # tokens generated before it finishes (ignore_eos)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def synthetic_workload(
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    request_rate: float = math.inf,
    burstiness: float = 1.0,
    seed: int = 0,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> list[SimRequest]:
    """`num_prompts` requests with `bench serve`'s lengths and arrival times for the same flags."""
    from nanoserve.bench.dataset import random_requests
    from nanoserve.bench.serve import arrival_gaps_s

    try:
        gaps = arrival_gaps_s(num_prompts, request_rate, burstiness, seed)
    except ValueError as e:
        raise InvalidRequestError(str(e), "request_rate") from None
    reqs = random_requests(num_prompts, input_len, output_len, vocab_size, range_ratio, seed=seed)
    out, t = [], 0.0
    for i, (r, gap) in enumerate(zip(reqs, gaps, strict=True)):
        t += gap  # bench serve sleeps the gap before sending each request, the first included
        out.append(SimRequest(f"req-{i}", t, r.prompt_token_ids, r.output_len))
    return out


def trace_workload(path: str | Path, seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE) -> list[SimRequest]:
    """Requests from a JSONL trace of {arrival_s, prompt_len, output_len}, sorted by arrival."""
    rng = random.Random(seed)
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            arrival, p_len, o_len = float(row["arrival_s"]), int(row["prompt_len"]), int(row["output_len"])
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidRequestError(
                f"{path}:{n}: expected {{arrival_s, prompt_len, output_len}} ({e})", "trace") from None
        if arrival < 0 or p_len < 1 or o_len < 1:
            raise InvalidRequestError(
                f"{path}:{n}: arrival_s must be >= 0 and the lengths >= 1", "trace")
        ids = [rng.randrange(vocab_size) for _ in range(p_len)]
        out.append(SimRequest(str(row.get("request_id", f"req-{len(out)}")), arrival, ids, o_len))
    if not out:
        raise InvalidRequestError(f"{path}: the trace has no request", "trace")
    return sorted(out, key=lambda r: r.arrival_s)
