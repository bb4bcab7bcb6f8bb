"""The bill: $ per 1M tokens, spot / on-demand / reserved break-evens, fleet sizing, monthly cost.

$/1M tokens = GPU $/hour / (tokens/s · 3600 · utilisation) · 1e6. Utilisation is the share of paid
time the GPU is producing at that rate; idle time is paid too, which is the whole "utilisation trap".
A month is 30 days (720 h) as the workbooks take it; pass `hours` for another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.checks import fraction as _fraction
from nanoserve.planner.checks import positive as _positive
from nanoserve.planner.checks import positive_int as _positive_int
from nanoserve.planner.derivation import Result, _fmt, derive

HOURS_PER_MONTH = 24 * 30


def cost_per_million_tokens(
    usd_per_hour: float, tok_per_s: float, n_gpus: int = 1, utilization: float = 1.0
) -> Result:
    """$ per 1M tokens: n_gpus · $/h / (tok/s · 3600 · utilisation / 1e6). `usd_per_hour` is per GPU."""
    p = _positive("usd_per_hour", usd_per_hour)
    r = _positive("tok_per_s", tok_per_s)
    n = _positive_int("n_gpus", n_gpus)
    u = _fraction("utilization", utilization)
    hourly = derive("cost per hour", n * p, "$/h", "n_gpus · $/h", f"{n} × {_fmt(p)}")
    tokens = derive(
        "tokens per hour",
        r * 3600 * u,
        "tok/h",
        "tok/s · 3600 · utilisation",
        f"{_fmt(r)} × 3600 × {_fmt(u)}",
    )
    return derive(
        "cost per 1M tokens",
        hourly.value / tokens.value * 1e6,
        "$/1M tok",
        "($/h) / (tokens/h / 1e6)",
        f"{_fmt(hourly.value)} / {_fmt(tokens.value / 1e6)}",
        {"usd_per_hour": p, "n_gpus": n, "tok_per_s": r, "utilization": u},
        [hourly, tokens],
    )


def input_output_cost(
    usd_per_hour: float,
    prefill_tok_per_s: float,
    decode_tok_per_s: float,
    n_gpus: int = 1,
    utilization: float = 1.0,
) -> tuple[Result, Result, Result]:
    """($/1M input, $/1M output, output/input ratio): prefill is faster per token, so input is cheaper."""
    cin = cost_per_million_tokens(usd_per_hour, prefill_tok_per_s, n_gpus, utilization)
    cout = cost_per_million_tokens(usd_per_hour, decode_tok_per_s, n_gpus, utilization)
    ratio = derive(
        "output / input price",
        cout.value / cin.value,
        "×",
        "$/1M out / $/1M in",
        f"{_fmt(cout.value)} / {_fmt(cin.value)}",
    )
    return cin, cout, ratio


def effective_hourly_cost(usd_per_hour: float, utilization: float) -> Result:
    """What a useful GPU-hour costs when only `utilization` of the paid hours do work."""
    p = _positive("usd_per_hour", usd_per_hour)
    u = _fraction("utilization", utilization)
    return derive(
        "effective $/useful hour",
        p / u,
        "$/h",
        "$/h / utilisation",
        f"{_fmt(p)} / {_fmt(u)}",
        {"usd_per_hour": p, "utilization": u},
    )


def effective_spot_price(
    spot_usd_per_hour: float, availability: float, on_demand_usd_per_hour: float | None = None
) -> Result:
    """Spot $/h per hour of work: spot / availability (interrupted hours redo their work)."""
    s = _positive("spot_usd_per_hour", spot_usd_per_hour)
    a = _fraction("availability", availability)
    note = ""
    if on_demand_usd_per_hour:
        saving = on_demand_usd_per_hour - s / a
        note = (
            f"saves {_fmt(saving)} $/h ({_fmt(100 * saving / on_demand_usd_per_hour)}%) vs on-demand "
            f"{_fmt(on_demand_usd_per_hour)} $/h"
            if saving > 0
            else "dearer than on-demand"
        )
    return derive(
        "effective spot $/h",
        s / a,
        "$/h",
        "spot / availability",
        f"{_fmt(s)} / {_fmt(a)}",
        {"spot_usd_per_hour": s, "availability": a, "on_demand_usd_per_hour": on_demand_usd_per_hour},
        note=note,
    )


def reserved_break_even_utilization(reserved_usd_per_hour: float, on_demand_usd_per_hour: float) -> Result:
    """Utilisation above which a reservation (paid every hour) beats on-demand (paid when used)."""
    r = _positive("reserved_usd_per_hour", reserved_usd_per_hour)
    o = _positive("on_demand_usd_per_hour", on_demand_usd_per_hour)
    return derive(
        "break-even utilisation",
        r / o,
        "fraction",
        "reserved / on_demand",
        f"{_fmt(r)} / {_fmt(o)}",
        {"reserved_usd_per_hour": r, "on_demand_usd_per_hour": o},
        note="reserved is cheaper above this utilisation" if r < o else "reserved never pays off",
    )


def throughput_for_price(
    target_usd_per_million: float, usd_per_hour: float, n_gpus: int = 1, utilization: float = 1.0
) -> Result:
    """Tokens/s a deployment must sustain to reach a target $ per 1M tokens."""
    c = _positive("target_usd_per_million", target_usd_per_million)
    p = _positive("usd_per_hour", usd_per_hour)
    u = _fraction("utilization", utilization)
    n = _positive_int("n_gpus", n_gpus)
    return derive(
        "required throughput",
        n * p * 1e6 / (c * 3600 * u),
        "tok/s",
        "n_gpus · $/h · 1e6 / ($/1M target · 3600 · utilisation)",
        f"{n} × {_fmt(p)} × 1e6 / ({_fmt(c)} × 3600 × {_fmt(u)})",
        {"target_usd_per_million": c, "usd_per_hour": p, "n_gpus": n, "utilization": u},
    )


def min_batch_for_price(
    target_usd_per_million: float,
    usd_per_hour: float,
    tok_per_s_at_batch1: float,
    n_gpus: int = 1,
    utilization: float = 1.0,
) -> Result:
    """Smallest decode batch reaching a price, while throughput grows linearly with batch (memory-bound)."""
    need = throughput_for_price(target_usd_per_million, usd_per_hour, n_gpus, utilization)
    r1 = _positive("tok_per_s_at_batch1", tok_per_s_at_batch1)
    b = need.value / r1
    return derive(
        "minimum batch",
        math.ceil(b - 1e-9),
        "sequences",
        "ceil(required tok/s / tok/s at batch 1)",
        f"ceil({_fmt(need.value)} / {_fmt(r1)} = {_fmt(b)})",
        {"tok_per_s_at_batch1": r1},
        [need],
        note="valid only below the compute crossover batch and if the KV cache fits",
    )


@dataclass(frozen=True)
class FleetModel:
    """One model of a fleet: its traffic share and what one replica delivers."""

    name: str
    traffic_fraction: float
    tok_per_s_per_replica: float
    gpus_per_replica: int = 1


def fleet_size(
    models: list[FleetModel], requests_per_s: float, output_tokens_per_request: float, headroom: float = 0.0
) -> tuple[Result, list[Result]]:
    """GPUs for a multi-model fleet: per model ceil(demand / replica throughput) replicas × GPUs each."""
    rps = _positive("requests_per_s", requests_per_s)
    out = _positive("output_tokens_per_request", output_tokens_per_request)
    if not models:
        raise InvalidRequestError("fleet needs at least one model", "models")
    share = sum(m.traffic_fraction for m in models)
    if abs(share - 1) > 1e-6:
        raise InvalidRequestError(f"traffic fractions must sum to 1 (got {_fmt(share)})", "traffic_fraction")
    per_model = []
    for m in models:
        demand = derive(
            f"{m.name} demand",
            m.traffic_fraction * rps * out,
            "tok/s",
            "traffic share · requests/s · output tokens",
            f"{_fmt(m.traffic_fraction)} × {_fmt(rps)} × {_fmt(out)}",
        )
        raw = demand.value / _positive("tok_per_s_per_replica", m.tok_per_s_per_replica)
        replicas = math.ceil(math.ceil(raw - 1e-9) * (1 + headroom) - 1e-9)
        rep = derive(
            f"{m.name} replicas",
            replicas,
            "replicas",
            "ceil(demand / tok/s per replica · (1 + headroom))",
            f"ceil({_fmt(demand.value)} / {_fmt(m.tok_per_s_per_replica)} = {_fmt(raw)})"
            + (f" × {_fmt(1 + headroom)}" if headroom else ""),
            steps=[demand],
        )
        per_model.append(
            derive(
                f"{m.name} GPUs",
                replicas * m.gpus_per_replica,
                "GPUs",
                "replicas · GPUs per replica",
                f"{replicas} × {m.gpus_per_replica}",
                {"model": m.name, "replicas": replicas, "demand_tok_per_s": demand.value},
                [rep],
            )
        )
    total = sum(r.value for r in per_model)
    return (
        derive(
            "fleet GPUs",
            total,
            "GPUs",
            "Σ GPUs per model",
            " + ".join(_fmt(r.value) for r in per_model),
            {"requests_per_s": rps},
            per_model,
        ),
        per_model,
    )


def monthly_bill(n_gpus: int, usd_per_hour: float, hours: float = HOURS_PER_MONTH) -> Result:
    """GPUs · $/h · hours (a 30-day month of 720 h by default)."""
    n = _positive_int("n_gpus", n_gpus)
    p = _positive("usd_per_hour", usd_per_hour)
    h = _positive("hours", hours)
    return derive(
        "monthly cost",
        n * p * h,
        "$/month",
        "n_gpus · $/h · hours",
        f"{n} × {_fmt(p)} × {_fmt(h)}",
        {"n_gpus": n, "usd_per_hour": p, "hours": h},
    )


def tokens_per_month(tok_per_s: float, hours: float = HOURS_PER_MONTH) -> Result:
    r = _positive("tok_per_s", tok_per_s)
    return derive(
        "tokens per month",
        r * 3600 * hours,
        "tok",
        "tok/s · 3600 · hours",
        f"{_fmt(r)} × 3600 × {_fmt(hours)}",
        {"tok_per_s": r, "hours": hours},
    )


def cost_per_million_from_bill(
    monthly_usd: float, tok_per_s: float, hours: float = HOURS_PER_MONTH
) -> Result:
    """Blended $ per 1M tokens of a monthly bill serving `tok_per_s` around the clock."""
    m = _positive("monthly_usd", monthly_usd)
    t = tokens_per_month(tok_per_s, hours)
    return derive(
        "cost per 1M tokens",
        m / (t.value / 1e6),
        "$/1M tok",
        "monthly $ / (tokens per month / 1e6)",
        f"{_fmt(m)} / {_fmt(t.value / 1e6)}",
        {"monthly_usd": m},
        [t],
    )
