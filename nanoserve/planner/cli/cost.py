"""Topic cost: $ per 1M tokens, spot and reserved break-even, fleet sizing, the monthly bill."""

from __future__ import annotations

import argparse

from nanoserve.errors import InvalidRequestError
from nanoserve.planner import cost
from nanoserve.planner.cli.flags import GPU, Topic, number
from nanoserve.planner.cli.inputs import hardware_of, need
from nanoserve.planner.cli.output import Output
from nanoserve.planner.derivation import Result


def _fleet(specs: list[str]) -> list[cost.FleetModel]:
    """--fleet NAME:SHARE:TOK_PER_S[:GPUS], repeated → one FleetModel each."""
    out = []
    for s in specs:
        parts = s.split(":")
        if len(parts) not in (3, 4):
            raise InvalidRequestError(f"--fleet wants NAME:SHARE:TOK_PER_S[:GPUS], got {s!r}", "fleet")
        try:
            out.append(
                cost.FleetModel(
                    parts[0],
                    number(parts[1]),
                    number(parts[2]),
                    int(number(parts[3])) if len(parts) == 4 else 1,
                )
            )
        except argparse.ArgumentTypeError as e:
            raise InvalidRequestError(f"--fleet {s!r}: {e}", "fleet") from e
    return out


def t_cost(args: argparse.Namespace) -> Output:
    price = args.price if args.price is not None else hardware_of(args).usd_per_hour
    n_gpus = int(args.gpus or 1)
    res: list[Result] = []
    if args.tok_s:
        res.append(cost.cost_per_million_tokens(price, args.tok_s, n_gpus, args.utilization))
    if args.prefill_tok_s and args.tok_s:
        res += list(cost.input_output_cost(price, args.prefill_tok_s, args.tok_s, n_gpus, args.utilization))[
            ::2
        ]
    if args.target_price:
        res.append(cost.throughput_for_price(args.target_price, price, n_gpus, args.utilization))
    if args.spot:
        res.append(cost.effective_spot_price(args.spot, args.availability, price))
    if args.reserved:
        res.append(cost.reserved_break_even_utilization(args.reserved, price))
    if args.fleet:
        need(args, "requests-per-s", "output-tokens")
        total, per_model = cost.fleet_size(
            _fleet(args.fleet), args.requests_per_s, args.output_tokens, args.headroom
        )
        res += per_model + [total]
        n_gpus = int(total.value)
    res.append(cost.monthly_bill(n_gpus, price, args.hours))
    res.append(cost.effective_hourly_cost(price, args.utilization))
    return Output(f"cost at ${price:g}/GPU-hour", res)


TOPICS = {
    "cost": Topic(
        t_cost,
        "$ per 1M tokens, spot / reserved break-even, fleet sizing, monthly bill",
        GPU
        + ("gpus", "tok-s", "prefill-tok-s", "utilization", "target-price", "spot", "availability")
        + ("reserved", "fleet", "requests-per-s", "output-tokens", "headroom", "hours"),
        defaults={"headroom": 0.0},
    ),
}
