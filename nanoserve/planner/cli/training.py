"""Topics about training: training (time and cost from 6ND and MFU) and chinchilla."""

from __future__ import annotations

import argparse

from nanoserve.errors import InvalidRequestError
from nanoserve.planner import training
from nanoserve.planner.cli.flags import GPU, MODEL, Topic
from nanoserve.planner.cli.inputs import hardware_of, labelled, n_params, need
from nanoserve.planner.cli.output import Output
from nanoserve.planner.derivation import Result


def t_training(args: argparse.Namespace) -> Output:
    hw = hardware_of(args)
    n = n_params(args)
    need(args, "tokens")
    gpus = int(args.gpus or 1)
    t = training.training_time(n, args.tokens, gpus, hw.bf16_flops_per_s, args.mfu)
    # the API's duration unit is seconds everywhere; the same time in days sits beside it, not only in a note
    res = [t.steps[0], t, labelled(t.to("days", training.SECONDS_PER_DAY), "days"),
           training.training_cost(t.value, gpus, hw.usd_per_hour)]
    if args.tok_s_per_gpu:
        res.append(training.mfu_from_throughput(args.tok_s_per_gpu, n, hw.bf16_flops_per_s))
    return Output(
        f"training {n / 1e9:.4g}B params on {int(args.tokens):,} tokens, {gpus} × {hw.name}",
        res,
        [t.note] + ([res[-1].note] if res[-1].note and args.tok_s_per_gpu else []),
    )


def t_chinchilla(args: argparse.Namespace) -> Output:
    res: list[Result] = []
    if args.compute:
        res += list(training.chinchilla_optimal(args.compute, args.tokens_per_param))
    if args.params or args.model:
        n = n_params(args)
        res.append(training.chinchilla_tokens(n, args.tokens_per_param))
        if args.compute:
            res.append(training.tokens_for_compute(args.compute, n))
    if not res:
        raise InvalidRequestError("topic 'chinchilla' needs --compute and/or --model/--params", "compute")
    return Output("Chinchilla", res)


TOPICS = {
    "training": Topic(
        t_training,
        "training time and cost (6ND, MFU), MFU from throughput",
        MODEL + GPU + ("gpus", "tokens", "mfu", "tok-s-per-gpu"),
        needs="model or params",
    ),
    "chinchilla": Topic(
        t_chinchilla,
        "Chinchilla-optimal size and tokens",
        MODEL + ("compute", "tokens-per-param"),
    ),
}
