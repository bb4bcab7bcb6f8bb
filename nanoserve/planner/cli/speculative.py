"""Topic spec: speculative decoding's tokens per step, speedup, break-even acceptance, best k."""

from __future__ import annotations

import argparse

from nanoserve.planner import speculative as s
from nanoserve.planner.cli.flags import Topic
from nanoserve.planner.cli.inputs import labelled
from nanoserve.planner.cli.output import Output


def t_spec(args: argparse.Namespace) -> Output:
    a, k, tt, td = args.alpha, args.spec_k, args.target_ms / 1e3, args.draft_ms / 1e3
    par = args.draft_parallel
    res = []
    for method, label in (("exact", "exact"), ("approx", "kα+1")):
        res += [
            labelled(s.expected_tokens(a, k, method), label),
            labelled(s.speedup(a, k, tt, td, method, draft_parallel=par), label),
            labelled(s.break_even_acceptance(k, tt, td, method, draft_parallel=par), label),
        ]
    res.append(s.optimal_k(a, tt, td, draft_parallel=par))
    return Output(
        f"speculative decoding (α={a}, k={k}, target {args.target_ms} ms, draft {args.draft_ms} ms)", res
    )


TOPICS = {
    "spec": Topic(
        t_spec,
        "speculative decoding: tokens per step, speedup, break-even acceptance",
        ("alpha", "spec-k", "target-ms", "draft-ms", "draft-parallel"),
    ),
}
