"""A simulation's results in `vllm bench serve`'s JSON field names, computed by `bench serve`'s own code.

Each simulated request becomes a bench/serve.py RequestResult (send time = arrival, TTFT = first token
− arrival, ITL = gaps between tokens, E2EL = last token − arrival), and bench serve's
summarize_results computes throughput, goodput and the latency statistics, so TTFT/TPOT/ITL/E2EL mean
exactly what they mean in a measured run. The duration runs from time 0 to the last token. The result
is flattened to vLLM's names (mean_ttft_ms, p99_itl_ms, request_goodput, ...), and the time series
(queue length, KV usage, preemptions per step) are added beside them.
"""

from __future__ import annotations

from typing import Any

from nanoserve.bench.serve import METRICS, RequestResult, summarize_results
from nanoserve.sim.simulator import SimResult


def request_results(result: SimResult) -> list[RequestResult]:
    out = []
    for r in result.requests:
        times = r.token_times_s
        out.append(RequestResult(
            success=True,
            prompt_len=r.prompt_len,
            output_len=len(times),
            ttft_s=times[0] - r.arrival_s,
            itl_s=[b - a for a, b in zip(times, times[1:], strict=False)],
            latency_s=times[-1] - r.arrival_s,
            start_s=r.arrival_s,
        ))
    return out


def serve_metrics(
    result: SimResult,
    slos_s: dict[str, float] | None = None,
    request_rate: float = float("inf"),
    burstiness: float = 1.0,
    percentiles: tuple[float, ...] = (50, 90, 99),
) -> dict[str, Any]:
    """vLLM bench serve's summary fields for the simulated run (goodput only with SLOs)."""
    s = summarize_results(request_results(result), result.duration_s, slos_s or {}, request_rate, burstiness,
                          None, percentiles)
    out: dict[str, Any] = {
        "duration": s.duration_s,
        "completed": s.completed,
        "total_input_tokens": s.total_input_tokens,
        "total_output_tokens": s.total_output_tokens,
        "request_throughput": s.request_throughput,
        "output_throughput": s.output_throughput,
        "total_token_throughput": s.total_token_throughput,
    }
    if s.goodput is not None:
        out["request_goodput"] = s.goodput
    for m in METRICS:
        for stat, v in s.metrics_ms[m].items():
            if stat != "p50":  # vLLM reports it as median_*
                out[f"{stat}_{m}_ms"] = v
    return out


def timeline(result: SimResult) -> dict[str, list[float]]:
    """Per step (at the step's end): time, running and queued requests, KV usage, preemptions so far."""
    t, running, waiting, kv, preempt = [], [], [], [], []
    total = 0
    for s in result.steps:
        total += len(s.preempted)
        t.append(s.start_s + s.duration_s)
        running.append(s.num_running)
        waiting.append(s.num_waiting)
        kv.append(s.kv_usage)
        preempt.append(total)
    return {"time_s": t, "num_running": running, "num_waiting": waiting, "kv_usage": kv,
            "num_preemptions": preempt}
