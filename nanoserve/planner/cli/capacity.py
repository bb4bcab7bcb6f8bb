"""Topics that size a service counting prompts and SLOs: search (the cheapest configuration) and
capstone (the workbook's capstone, seed and realistic plans side by side)."""

from __future__ import annotations

import argparse

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.capacity_search import MODES, Assumptions, Workload, search
from nanoserve.planner.capstone import capstone
from nanoserve.planner.cli.flags import GPU, MODEL, Topic
from nanoserve.planner.cli.inputs import hardware_of
from nanoserve.planner.cli.output import Output
from nanoserve.planner.derivation import derive

_TOP = 8


def _assumptions(args: argparse.Namespace) -> Assumptions:
    if not 0 < args.mfu <= 1 or not 0 < args.efficiency <= 1:
        raise InvalidRequestError("--mfu and --efficiency must be in (0, 1]", "mfu")
    alpha = None if args.allreduce_latency_us is None else args.allreduce_latency_us * 1e-6
    return Assumptions(
        memory_efficiency=args.efficiency,
        compute_efficiency=args.mfu,
        allreduce_latency_s=alpha,
        step_overhead_s=args.step_overhead_ms * 1e-3,
        headroom=args.headroom,
    )


def _workload(args: argparse.Namespace) -> Workload:
    out = int(args.output_tokens or 512)
    if out != args.output_tokens and args.output_tokens is not None:
        raise InvalidRequestError("--output-tokens must be a whole number", "output_tokens")
    slos = {"prompt_tokens": args.prompt or 3584, "output_tokens": out, "ttft_slo_s": args.ttft_ms * 1e-3}
    if args.request_rate is not None:
        return Workload(
            args.request_rate, tpot_slo_s=(args.tpot_ms or 1e3 / args.tok_per_user) * 1e-3, **slos
        )
    w = Workload.from_users(args.users, args.active, args.tok_per_user, **slos)
    return (
        w if args.tpot_ms is None else Workload(w.request_rate_per_s, tpot_slo_s=args.tpot_ms * 1e-3, **slos)
    )


def t_search(args: argparse.Namespace) -> Output:
    w = _workload(args)
    modes = tuple(m.strip() for m in args.modes.split(","))
    if not set(modes) <= set(MODES):
        raise InvalidRequestError(f"--modes takes {', '.join(MODES)}", "modes")
    dtypes = tuple(d.strip() for d in args.dtypes.split(","))
    tps = (args.tp,) if args.tp else (1, 2, 4, 8)
    ranked = search(
        args.model,
        hardware_of(args),
        w,
        _assumptions(args),
        tps=tps,
        dtypes=dtypes,
        modes=modes,
        n_params=args.params,
        gpu_memory_bytes=args.gpu_mem,
    )
    ok = [c for c in ranked if c.feasible]
    if not ok:
        raise InvalidRequestError(f"no configuration meets the SLOs ({ranked[0].reason})", "slo")
    win = ok[0]
    notes = [f"top {min(_TOP, len(ok))} of {len(ok)} feasible configurations ({len(ranked)} tried):"] + [
        f"{c.gpus:>5} GPUs  ${c.monthly_usd:>12,.0f}/month  batch {c.batch:>3}  "
        f"TPOT {c.tpot_s * 1e3:5.1f} ms  TTFT {c.ttft_s:5.2f} s  {c.config.label()}"
        for c in ok[:_TOP]
    ]
    extra: dict = {}
    shared = [c for c in ok if c.config.mode == "shared"]
    if args.simulate and shared:
        from nanoserve.sim.plan_check import simulate_replica  # the simulator only when asked

        chk = simulate_replica(args.model, hardware_of(args), w, shared[0], _assumptions(args))
        extra["simulated"] = chk
        cf, sim = chk["closed_form"], chk["simulated"]
        notes.append(
            f"simulated one replica of {chk['config']} at {chk['rate_per_replica']:.3g} req/s "
            f"({chk['num_requests']} Poisson requests, the engine's scheduler): mean TPOT "
            f"{sim['mean_tpot_ms']:.1f} ms (closed form {cf['mean_tpot_ms']:.1f}), mean TTFT "
            f"{sim['mean_ttft_ms']:.0f} ms (closed form {cf['mean_ttft_ms']:.0f})"
        )
    return Output(
        f"capacity search: {win.config.label()}",
        list(win.steps.values()),
        notes,
        extra={
            "plan": win.summary(),
            "workload": w.__dict__,
            "candidates": [c.summary() for c in ranked[: _TOP * 4]],
            **extra,
        },
    )


def t_capstone(args: argparse.Namespace) -> Output:
    c = capstone(
        args.model or "llama-3.1-70b",
        args.gpu,
        prompt_tokens=args.prompt or 3584,
        output_tokens=int(args.output_tokens or 512),
        usd_per_hour=args.price or 2.20,
        realistic=_assumptions(args),
    )
    prev = c.seed.gpus
    results = [
        derive("seed plan (plan_serving)", c.seed.gpus, "GPUs", "the workbook's chain", str(c.seed.gpus))
    ]
    for r in c.rows:
        g = r.candidate.gpus
        results.append(
            derive(
                r.term, g, "GPUs", r.candidate.config.label(), f"{prev} {g - prev:+d}", r.candidate.summary()
            )
        )
        prev = g
    width = max(len(q) for q, _, _ in c.columns())
    notes = ["two columns (seed | realistic):"] + [f"{q:<{width}}  {a:<32} {b}" for q, a, b in c.columns()]
    return Output(
        "the capstone re-answered: seed vs realistic, term by term",
        results,
        notes,
        extra={"capstone": c.to_dict()},
    )


_WORKLOAD = (
    "prompt",
    "output-tokens",
    "users",
    "active",
    "tok-per-user",
    "request-rate",
    "ttft-ms",
    "tpot-ms",
)
_SPEED = ("efficiency", "mfu", "allreduce-latency-us", "step-overhead-ms", "headroom")
_DEFAULTS = {"efficiency": 0.8, "mfu": 0.6, "headroom": 0.0, "gpu": "h100"}

TOPICS = {
    "search": Topic(
        t_search,
        "cheapest TP / dtype / max batch / shared or disaggregated pools meeting TTFT and TPOT SLOs "
        "(prompts counted)",
        MODEL + GPU + ("gpu-mem", "tp", "dtypes", "modes", "simulate") + _WORKLOAD + _SPEED,
        needs="model",
        defaults={**_DEFAULTS, "dtypes": "bf16,fp8,int8,int4"},
    ),
    "capstone": Topic(
        t_capstone,
        "the workbook's capstone: the seed's 36-GPU plan beside the realistic one, term by term",
        ("model", "gpu", "price", "prompt", "output-tokens") + _SPEED,
        defaults=_DEFAULTS,
    ),
}
