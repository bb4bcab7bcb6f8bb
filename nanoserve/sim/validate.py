"""Simulated vs measured: one workload simulated with a calibrated profile and replayed on the real engine.

  python -m nanoserve.sim.validate --random-model qwen2.5-0.5b --num-cpu-threads 2 --profile qwen.json \\
      --num-prompts 32 --input-len 128 --output-len 32 --request-rate inf [--num-gpu-blocks-override 64]

The measured side is the engine as `bench throughput` drives it (LLMEngine.step() in a loop, no HTTP),
with requests added at their arrival times (`bench serve`'s gaps for the same --request-rate,
--burstiness and --seed: sim/workload.py), so a rate below saturation is an open-loop online run. A
token's time is when the engine.step() that made it returns (after output processing), as a streaming
server would send it. The clock stops while the harness does its own work between steps (stamping
the outputs, the step timer's bookkeeping): at a batch of 256 on the demo model that work took ~0.35 ms a
step, 3-4% of the run, which no engine term of the simulation has. The workload is replayed --replays
times (fresh random prompts of the same lengths each time, so the prefix cache never hits across
replays) and each measure is the median over the replays, with their spread: this shared box's speed
moves 5-10% between identical runs a few seconds apart. Both sides are summarised by `bench serve`'s
summarize_results, so throughput, TTFT, TPOT and ITL mean the same thing. The simulation uses the
engine's own resolved configuration (pool size, budgets, flags), read from the loaded engine. The
process freezes its startup objects out of the collector's reach once loaded, as `nanoserve serve` (and
`bench calibrate`) do.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

from nanoserve.bench.canary import CanaryLog, slow_fraction
from nanoserve.bench.serve import RequestResult, summarize_results
from nanoserve.sim.workload import SimRequest

COMPARED = ("request_throughput", "output_throughput", "median_ttft_ms", "median_tpot_ms", "median_itl_ms",
            "mean_ttft_ms", "mean_tpot_ms")


def replay(
    engine: Any, workload: list[SimRequest], timer: Any = None, canaries: CanaryLog | None = None
) -> tuple[list[RequestResult], float, int]:
    """Run `workload` on the engine at its arrival times; (results, duration_s, preemptions). With a
    bench/calibrate.py StepTimer, each step's shape and time are recorded too; with a CanaryLog, the
    machine's speed state between busy steps. Times are on the engine's clock: the harness's own work
    after each step (the canary included) is taken off it."""
    from nanoserve import SamplingParams

    arrivals = sorted(workload, key=lambda r: r.arrival_s)
    times: dict[str, list[float]] = {r.request_id: [] for r in arrivals}
    preempt0 = engine.get_stats().num_preemptions
    t0 = time.perf_counter()  # advanced by the harness's own time, so perf_counter() - t0 is the engine's
    i = 0
    while i < len(arrivals) or engine.has_unfinished_requests():
        now = time.perf_counter() - t0
        while i < len(arrivals) and arrivals[i].arrival_s <= now:
            r = arrivals[i]
            engine.add_request(r.request_id, {"prompt_token_ids": list(r.prompt_token_ids)},
                               SamplingParams(max_tokens=r.output_len, ignore_eos=True, temperature=0.0))
            i += 1
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, arrivals[i].arrival_s - (time.perf_counter() - t0)))
            continue
        if timer is not None:
            outs = timer.step("replay")
            end = timer.last_end
        else:
            outs = engine.step()
            end = time.perf_counter()
        stamp = end - t0
        for out in outs:
            got = times.get(out.request_id)
            if got is None:  # an earlier run's aborted request, reported by this step
                continue
            got.extend([stamp] * (len(out.outputs[0].token_ids) - len(got)))
        if canaries is not None and engine.has_unfinished_requests():
            canaries.maybe_sample(stamp)
        t0 += time.perf_counter() - end
    duration = max(t[-1] for t in times.values())
    results = []
    for r in arrivals:
        t = times[r.request_id]
        results.append(RequestResult(True, r.prompt_len, len(t), t[0] - r.arrival_s,
                                     [b - a for a, b in zip(t, t[1:], strict=False)], t[-1] - r.arrival_s,
                                     r.arrival_s))
    return results, duration, engine.get_stats().num_preemptions - preempt0


def fresh_prompts(workload: list[SimRequest], seed: int, vocab_size: int) -> list[SimRequest]:
    """The same arrivals and lengths with new random prompt ids (a replay the prefix cache cannot hit)."""
    rng = random.Random(seed)
    return [SimRequest(r.request_id, r.arrival_s, [rng.randrange(vocab_size) for _ in r.prompt_token_ids],
                       r.output_len) for r in workload]


def median_summary(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each measure's median over the replays, and its spread (max / min - 1) under "spread"."""
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["spread"] = {k: max(r[k] for r in runs) / min(r[k] for r in runs) - 1
                     for k in COMPARED if min(r[k] for r in runs) > 0}
    return out


def summary(results: list[RequestResult], duration_s: float, rate: float) -> dict[str, float]:
    s = summarize_results(results, duration_s, {}, rate, 1.0, None, (50,))
    out = {"duration": duration_s, "request_throughput": s.request_throughput,
           "output_throughput": s.output_throughput}
    for m in ("ttft", "tpot", "itl"):
        out[f"median_{m}_ms"] = s.metrics_ms[m]["median"]
        out[f"mean_{m}_ms"] = s.metrics_ms[m]["mean"]
    return out


def simulate_like(engine: Any, step_model: Any, workload: list[SimRequest]) -> tuple[dict[str, float], int]:
    """The simulation with the engine's own resolved configuration."""
    from nanoserve.sim.metrics import request_results
    from nanoserve.sim.simulator import SimConfig, Simulator

    sc, cc = engine.scheduler_config, engine.cache_config
    config = SimConfig(cc.num_blocks, cc.block_size, sc.max_num_seqs, sc.max_num_batched_tokens,
                       sc.max_model_len, sc.enable_chunked_prefill, cc.enable_prefix_caching)
    res = Simulator(config, step_model).run(workload)
    return summary(request_results(res), res.duration_s, math.inf), res.num_preemptions


def step_check(samples: list[dict[str, Any]], step_model: Any) -> dict[str, dict[str, float]]:
    """The measured run's own steps: measured vs predicted seconds, decode-only steps and steps with a
    prompt chunk apart, so a miss points at the term of the step model that is wrong."""
    out = {}
    for name, keep in (("decode_only", lambda s: not s["prefill_tokens"]), ("with_prefill",
                                                                            lambda s: s["prefill_tokens"])):
        got = [s for s in samples if keep(s)]
        measured = sum(s["step_s"] for s in got)
        predicted = sum(step_model.predict_s(s) for s in got)
        out[name] = {"num_steps": len(got), "measured_s": measured, "predicted_s": predicted,
                     "error": predicted / measured - 1 if measured else 0.0}
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nanoserve.bench.engine_flags import add_engine_arguments

    p.add_argument("--profile", required=True, metavar="FILE.json", help="from nanoserve bench calibrate")
    p.add_argument("--label", default="", help="the workload's name in the output")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--range-ratio", type=float, default=0.0)
    p.add_argument("--request-rate", type=float, default=math.inf)
    p.add_argument("--burstiness", type=float, default=1.0)
    p.add_argument("--replays", type=int, default=3,
                   help="measured replays of the workload; each measure is their median")
    p.add_argument("--save-result", default=None, metavar="FILE.json")
    add_engine_arguments(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from nanoserve import LLM
    from nanoserve.bench.engine_flags import engine_kwargs
    from nanoserve.bench.models import resolve_model, vocab_size
    from nanoserve.sim.step_model import CalibratedStepModel
    from nanoserve.sim.workload import synthetic_workload

    model_dir = resolve_model(args.model, args.random_model, args.random_layers)
    step_model = CalibratedStepModel.from_file(args.profile)
    seed = args.seed or 0
    workload = synthetic_workload(args.num_prompts, args.input_len, args.output_len, args.range_ratio,
                                  args.request_rate, args.burstiness, seed, vocab_size(model_dir))
    engine = LLM(model=model_dir, **engine_kwargs(args, model_dir)).llm_engine
    from nanoserve import freeze_startup_objects
    from nanoserve.bench.calibrate import StepTimer

    freeze_startup_objects()
    # Simulated first: the warm-up must come right before the replay, as the simulation assumes a warm
    # engine at t=0 (simulating in between left the replay's first step cold: +17 ms, 28%, on the
    # demo model's 64-prompt first step).
    simulated, sim_preempt = simulate_like(engine, step_model, workload)
    vocab = vocab_size(model_dir)
    runs, samples, replay_canaries = [], [], []
    for k in range(args.replays):
        warm = synthetic_workload(2, 8, 4, 0.0, math.inf, 1.0, seed + 1 + k, vocab)
        replay(engine, [SimRequest(f"warm{k}-{r.request_id}", 0.0, r.prompt_token_ids, r.output_len)
                        for r in warm])
        this = workload if k == 0 else fresh_prompts(workload, seed + 1000 + k, vocab)
        timer, canaries = StepTimer(engine), CanaryLog()
        results, duration, preempt = replay(
            engine, [SimRequest(f"r{k}-{r.request_id}", r.arrival_s, r.prompt_token_ids, r.output_len)
                     for r in this], timer, canaries)
        timer.detach()
        runs.append({**summary(results, duration, args.request_rate), "num_preemptions": preempt})
        samples += timer.samples
        replay_canaries.append(canaries)
    measured = median_summary(runs)
    out = {
        "label": args.label, "model": model_dir, "profile": args.profile,
        "num_gpu_blocks": engine.cache_config.num_blocks,
        "workload": {"num_prompts": args.num_prompts, "input_len": args.input_len,
                     "output_len": args.output_len, "range_ratio": args.range_ratio,
                     "request_rate": str(args.request_rate), "seed": seed},
        "simulated": {**simulated, "num_preemptions": sim_preempt},
        "measured": measured,
        "measured_runs": runs,
        "error": {k: simulated[k] / measured[k] - 1 for k in COMPARED if measured[k]},
        "steps": step_check(samples, step_model),
        "canary": canary_report(args.profile, replay_canaries),
    }
    return out


def canary_report(profile: str, replay_canaries: list[CanaryLog]) -> dict[str, Any]:
    """How much of the calibration and of each replay ran in the machine's slow CPU and memory states
    (bench/canary.py), each against the fastest canary of the calibration and the replays."""
    try:
        points = json.loads(Path(profile).read_text()).get("samples", [])
    except (OSError, ValueError):
        points = []
    out: dict[str, Any] = {}
    kinds = (("cpu", "canary_s", "samples_s"), ("memory", "memory_canary_s", "memory_samples_s"))
    for name, key, attr in kinds:
        cal = [c for p in points for c in p.get(f"pass_{key}", [p[key]] if key in p else [])]
        runs = [getattr(log, attr) for log in replay_canaries]
        every = cal + [c for run in runs for c in run]
        if every:
            fastest = min(every)
            out[name] = {"fastest_s": fastest, "calibration_slow_fraction": slow_fraction(cal, fastest),
                         "replay_slow_fraction": [slow_fraction(run, fastest) for run in runs]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanoserve.sim.validate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    if args.replays < 1:
        p.error("--replays must be at least 1")
    from nanoserve.errors import InvalidRequestError

    try:
        out = run(args)
    except InvalidRequestError as e:
        p.error(str(e))
    s, m, e = out["simulated"], out["measured"], out["error"]
    print(f"{out['label'] or 'workload'}: {out['num_gpu_blocks']} KV blocks, preemptions simulated "
          f"{s['num_preemptions']} measured {m['num_preemptions']}")
    for k in COMPARED:
        print(f"  {k:<20} simulated {s[k]:10.3f}   measured {m[k]:10.3f}   error {e.get(k, 0):+7.1%}"
              f"   (replays {m['spread'].get(k, 0):.1%} apart)")
    for name, c in out["canary"].items():
        print(f"  slow {name} state (bench/canary.py): calibration {c['calibration_slow_fraction']:.0%}, "
              f"replays {', '.join(f'{f:.0%}' for f in c['replay_slow_fraction'])}")
    for name, c in out["steps"].items():
        print(f"  steps {name:<13} {c['num_steps']:5d}: measured {c['measured_s']:8.3f} s, "
              f"the profile predicts {c['predicted_s']:8.3f} s ({c['error']:+.1%})")
    if args.save_result:
        with open(args.save_result, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
