"""Check a capacity-search plan by simulation: one replica of a shared-pool candidate, its share of the
request rate, the engine's own scheduler and the analytic step model with the plan's efficiencies.

The closed form (planner/capacity_search.py) assumes a steady state: the batch equals Little's
concurrency, prefill spreads evenly over decode steps, and the prefill lane is an M/D/1 queue. The
simulator drops those assumptions (Poisson arrivals, chunked prefill as the scheduler actually packs
it, KV blocks, preemption), so its mean TPOT and TTFT say how far the closed form is from the policy.
"""

from __future__ import annotations

from typing import Any

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.capacity_search import Assumptions, Candidate, Workload
from nanoserve.planner.hardware import Hardware, get_hardware
from nanoserve.planner.memory import kv_cache_per_token, weight_memory
from nanoserve.planner.models import ModelSpec, get_model
from nanoserve.planner.parallel import collective_latency_s
from nanoserve.sim.metrics import serve_metrics
from nanoserve.sim.simulator import SimConfig, Simulator
from nanoserve.sim.step_model import AnalyticStepModel
from nanoserve.sim.workload import synthetic_workload


def simulate_replica(
    model: ModelSpec | str,
    hardware: Hardware | str,
    workload: Workload,
    plan: Candidate,
    assumptions: Assumptions | None = None,
    num_requests: int = 1000,
    seed: int = 0,
    at_capacity: bool = True,
) -> dict[str, Any]:
    """Simulate one replica of a shared-pool `plan`: at the closed form's capacity per replica (where its
    TPOT/TTFT are computed) or, with `at_capacity=False`, at rate / replicas. Closed form and simulation
    side by side (mean TPOT and TTFT in ms, request throughput)."""
    if plan.config.mode != "shared" or not plan.feasible:
        raise InvalidRequestError("only a feasible shared-pool plan runs on one simulated replica", "mode")
    spec, hw, a, c = get_model(model), get_hardware(hardware), assumptions or Assumptions(), plan.config
    alpha = collective_latency_s(hw) if a.allreduce_latency_s is None else a.allreduce_latency_s
    step = AnalyticStepModel(
        spec,
        hw,
        c.tp,
        c.dtype,
        memory_efficiency=a.memory_efficiency,
        compute_efficiency=a.compute_efficiency,
        allreduce_latency_s=alpha,
        overhead_s=a.step_overhead_s,
    )
    block = 16
    kv_budget = hw.hbm_bytes - weight_memory(spec, c.dtype).value / c.tp - a.overhead_bytes
    kv_block = kv_cache_per_token(spec).value / min(c.tp, spec.kv_heads) * block
    ctx = workload.prompt_tokens + workload.output_tokens
    cfg = SimConfig(
        num_blocks=int(kv_budget // kv_block),
        block_size=block,
        max_num_seqs=c.max_batch,
        max_num_batched_tokens=a.chunk_tokens,
        max_model_len=ctx,
        enable_prefix_caching=False,
    )
    rate = plan.req_per_s_per_replica if at_capacity else workload.request_rate_per_s / plan.replicas
    reqs = synthetic_workload(
        num_requests, workload.prompt_tokens, workload.output_tokens, request_rate=rate, seed=seed
    )
    m = serve_metrics(Simulator(cfg, step).run(reqs), request_rate=rate)
    return {
        "config": c.label(),
        "rate_per_replica": rate,
        "num_requests": num_requests,
        "closed_form": {
            "mean_tpot_ms": plan.tpot_s * 1e3,
            "mean_ttft_ms": plan.ttft_s * 1e3,
            "batch": plan.batch,
        },
        "simulated": {
            "mean_tpot_ms": m["mean_tpot_ms"],
            "mean_ttft_ms": m["mean_ttft_ms"],
            "p99_ttft_ms": m["p99_ttft_ms"],
            "request_throughput": m["request_throughput"],
        },
    }
