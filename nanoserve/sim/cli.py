"""`nanoserve simulate`: a serving run simulated on the engine's own scheduler, no model needed.

  nanoserve simulate --model llama-3.1-8b --gpu h100 --num-prompts 200 --input-len 1024 \\
      --output-len 256 --request-rate 4 --goodput ttft:500 tpot:50 --json
  nanoserve simulate --profile profile.json --num-gpu-blocks-override 2048 --trace trace.jsonl
  nanoserve simulate ... --batching static          # seed 004 exercise 17
  nanoserve simulate ... --plot run.png             # queue, KV usage, preemptions over time

The engine's scheduling flags keep EngineArgs' names and defaults. The KV pool is
--num-gpu-blocks-override blocks, else --kv-cache-memory-bytes per GPU, else (analytic model) what
--gpu-memory-utilization of the GPU's HBM leaves after the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from typing import Any

from nanoserve.config import DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, EngineArgs
from nanoserve.errors import InvalidRequestError

# EngineArgs fields that mean something without a model runner.
ENGINE_FLAGS = ("block_size", "max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill",
                "enable_prefix_caching", "num_gpu_blocks_override", "kv_cache_memory_bytes",
                "gpu_memory_utilization", "max_model_len")


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    """The flags' names, defaults and help from EngineArgs' fields, as serve and bench spell them."""
    group = p.add_argument_group("engine", "the engine's scheduling arguments (EngineArgs' fields)")
    by_name = {f.name: f for f in fields(EngineArgs)}
    for name in ENGINE_FLAGS:
        f = by_name[name]
        flag = "--" + name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            kind = float if name == "gpu_memory_utilization" else int
            group.add_argument(flag, type=kind, default=f.default, help=help_text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("step-time model", "analytic (--model and --gpu) or calibrated (--profile)")
    m.add_argument("--model", default=None, help="planner model preset (nanoserve plan models)")
    m.add_argument("--gpu", default=None, help="planner hardware preset (nanoserve plan hardware)")
    m.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    m.add_argument("--dtype", default="bf16", help="weights and compute dtype")
    m.add_argument("--kv-dtype", default="bf16")
    m.add_argument("--memory-efficiency", type=float, default=0.8)
    m.add_argument("--compute-efficiency", type=float, default=0.6)
    m.add_argument("--allreduce-latency-us", type=float, default=10.0)
    m.add_argument("--step-overhead-ms", type=float, default=2.0)
    m.add_argument("--profile", default=None, metavar="FILE.json", help="measured step times (calibrated)")
    w = p.add_argument_group("workload", "bench serve's random dataset and arrivals, or a JSONL trace")
    w.add_argument("--num-prompts", type=int, default=100)
    w.add_argument("--input-len", type=int, default=1024)
    w.add_argument("--output-len", type=int, default=128)
    w.add_argument("--range-ratio", type=float, default=0.0)
    w.add_argument("--request-rate", type=float, default=math.inf, help="requests/s (inf: all at once)")
    w.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the gaps (1 = Poisson)")
    w.add_argument("--trace", default=None, metavar="FILE.jsonl", help="{arrival_s, prompt_len, output_len}")
    w.add_argument("--seed", type=int, default=0)
    f = p.add_argument_group("serving front end", "an HTTP server before the engine (measured by "
                             "python -m nanoserve.sim.frontend; 0: the engine alone)")
    f.add_argument("--frontend-latency-ms", type=float, default=0.0,
                   help="from a request's sending to its arrival at the engine, plus its first token's "
                   "way back")
    f.add_argument("--frontend-token-ms", type=float, default=0.0,
                   help="front-end work per emitted token that lengthens the engine's step")
    s = p.add_argument_group("batching")
    s.add_argument("--batching", choices=("continuous", "static"), default="continuous")
    s.add_argument("--static-batch-size", type=int, default=None, help="static B (default: max-num-seqs)")
    _add_engine_flags(p)
    o = p.add_argument_group("output")
    o.add_argument("--goodput", nargs="+", default=None, metavar="METRIC:MS", help="e.g. ttft:500 tpot:50")
    o.add_argument("--percentiles", default="50,90,99")
    o.add_argument("--json", action="store_true", help="print the result as JSON")
    o.add_argument("--save-result", default=None, metavar="FILE.json")
    o.add_argument("--timeline", action="store_true", help="add queue, KV usage and preemptions per step")
    o.add_argument("--plot", default=None, metavar="FILE.png",
                   help="chart running/waiting requests, KV usage and preemptions over time (plots extra)")


def _step_model(args: argparse.Namespace) -> Any:
    from nanoserve.sim.step_model import AnalyticStepModel, CalibratedStepModel

    if args.profile:
        return CalibratedStepModel.from_file(args.profile)
    if not args.model or not args.gpu:
        raise InvalidRequestError("give --model and --gpu (analytic) or --profile (calibrated)", "model")
    return AnalyticStepModel(args.model, args.gpu, args.tp, args.dtype, args.kv_dtype, args.memory_efficiency,
                             args.compute_efficiency, args.allreduce_latency_us * 1e-6,
                             args.step_overhead_ms * 1e-3)


def _num_blocks(args: argparse.Namespace, step_model: Any) -> int:
    if args.num_gpu_blocks_override is not None:
        return args.num_gpu_blocks_override
    per_token = getattr(step_model, "kv_bytes_per_token_per_gpu", None)
    if per_token is None:
        if args.model is None:
            raise InvalidRequestError(
                "with --profile give --num-gpu-blocks-override, or --model and --kv-cache-memory-bytes",
                "num_gpu_blocks_override")
        from nanoserve.planner.memory import kv_cache_per_token

        per_token = kv_cache_per_token(args.model, kv_dtype=args.kv_dtype).value
    budget = args.kv_cache_memory_bytes
    if budget is None:
        if not hasattr(step_model, "hardware"):
            raise InvalidRequestError("give --kv-cache-memory-bytes or --num-gpu-blocks-override", "kv")
        budget = step_model.hardware.hbm_bytes * args.gpu_memory_utilization - step_model.weight_bytes_per_gpu
    blocks = int(budget // (per_token * args.block_size))
    if blocks < 1:
        raise InvalidRequestError("the weights leave no room for a KV block on this GPU at this TP", "tp")
    return blocks


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON result of `nanoserve simulate` for parsed arguments."""
    from nanoserve.bench.serve import parse_goodput
    from nanoserve.planner.models import get_model
    from nanoserve.sim.metrics import serve_metrics, timeline
    from nanoserve.sim.simulator import SimConfig, Simulator
    from nanoserve.sim.workload import synthetic_workload, trace_workload

    try:
        slos = parse_goodput(args.goodput)
    except ValueError as e:
        raise InvalidRequestError(str(e), "goodput") from None
    step_model = _step_model(args)
    if args.trace:
        workload = trace_workload(args.trace, args.seed)
    else:
        workload = synthetic_workload(args.num_prompts, args.input_len, args.output_len, args.range_ratio,
                                      args.request_rate, args.burstiness, args.seed)
    max_model_len = args.max_model_len
    if max_model_len is None:
        longest = max(r.prompt_len + r.output_len for r in workload)
        max_model_len = get_model(args.model).max_position or longest if args.model else longest
    tokens = args.max_num_batched_tokens
    if tokens is None:
        tokens = DEFAULT_MAX_NUM_BATCHED_TOKENS if args.enable_chunked_prefill else max(
            DEFAULT_MAX_NUM_BATCHED_TOKENS, max_model_len)
    config = SimConfig(
        num_blocks=_num_blocks(args, step_model), block_size=args.block_size,
        max_num_seqs=args.max_num_seqs or DEFAULT_MAX_NUM_SEQS, max_num_batched_tokens=tokens,
        max_model_len=max_model_len, enable_chunked_prefill=args.enable_chunked_prefill,
        enable_prefix_caching=args.enable_prefix_caching, batching=args.batching,
        static_batch_size=args.static_batch_size,
        frontend_latency_s=args.frontend_latency_ms / 1e3,
        frontend_token_s=args.frontend_token_ms / 1e3,
    )
    result = Simulator(config, step_model).run(workload)
    percentiles = tuple(float(x) for x in args.percentiles.split(","))
    out: dict[str, Any] = {
        "benchmark": "simulate",
        "batching": args.batching,
        "step_model": step_model.describe(),
        "num_gpu_blocks": config.num_blocks,
        "max_num_seqs": config.max_num_seqs,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "request_rate": args.request_rate if not args.trace else None,
        "burstiness": args.burstiness,
        **serve_metrics(result, slos, args.request_rate, args.burstiness, percentiles),
        "num_preemptions": result.num_preemptions,
        "num_steps": len(result.steps),
        "max_kv_usage": max((s.kv_usage for s in result.steps), default=0.0),
        "max_num_waiting": max((s.num_waiting for s in result.steps), default=0),
    }
    if args.timeline or getattr(args, "plot", None):
        out["timeline"] = timeline(result)
    return out


def run(args: argparse.Namespace) -> int:
    from nanoserve.bench.report import print_table, save_json

    try:
        out = simulate(args)
    except InvalidRequestError as e:
        print(f"nanoserve simulate: error: {e}", file=sys.stderr)
        return 2
    if args.plot:
        from nanoserve.sim.plots import plot_timeline

        plot_timeline(out["timeline"], args.plot, f"simulated: {out['completed']} requests, "
                      f"{out['num_preemptions']} preemptions, {out['num_gpu_blocks']} KV blocks")
        if not args.timeline:
            del out["timeline"]
    if args.save_result:
        save_json(args.save_result, {**out, "args": vars(args)})
    if args.json:
        print(json.dumps({k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
                          for k, v in out.items()}, indent=2))
        return 0
    print(f"simulated {out['completed']} requests ({args.batching} batching, {out['num_steps']} steps, "
          f"{out['num_preemptions']} preemptions, {out['num_gpu_blocks']} KV blocks)")
    print(f"duration: {out['duration']:.2f} s   request throughput: {out['request_throughput']:.3f} req/s   "
          f"output: {out['output_throughput']:.1f} tok/s")
    if "request_goodput" in out:
        print(f"goodput: {out['request_goodput']:.3f} req/s")
    stats = [k.split("_ttft_ms")[0] for k in out if k.endswith("_ttft_ms")]
    print_table(["ms"] + stats, [[m.upper()] + [f"{out[f'{s}_{m}_ms']:.2f}" for s in stats]
                                 for m in ("ttft", "tpot", "itl", "e2el")])
    return 0
