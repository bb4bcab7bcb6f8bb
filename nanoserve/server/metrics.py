"""Prometheus metrics with vLLM's names under the `nanoserve:` prefix, in a registry private to one app.

Two sources:
- the engine's cumulative stats (`AsyncLLMEngine.get_replica_stats()`, snapshots taken after every
  step), read at scrape time by a custom collector: gauges for running/waiting requests and KV usage,
  counters for prefix-cache queries/hits (tokens), preemptions, prompt and generation tokens, and
  speculative decoding's drafts, draft tokens and accepted tokens (also by draft position); one
  sample per engine replica, labelled `engine` (always "0" without --data-parallel-size);
- each finished HTTP request: success counter by finish reason, and histograms of TTFT, inter-token
  latency, end-to-end latency and queue time (seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from nanoserve.engine.stats import EngineStats
from nanoserve.outputs import RequestMetrics

if TYPE_CHECKING:
    from nanoserve.engine.async_engine import AsyncLLMEngine
    from nanoserve.engine.data_parallel import DataParallelEngine

PREFIX = "nanoserve:"

# The `_created` timestamp series double every counter for no use here (process-wide switch).
disable_created_metrics()

_StatsField = Callable[[EngineStats], float]
# (metric name, its EngineStats value, help) -- gauges, then counters (exposed with a `_total` suffix).
# Requests are counted as requests, not their n sequences.
_GAUGES: list[tuple[str, _StatsField, str]] = [
    ("num_requests_running", lambda s: s.num_running_requests, "Requests in the running batch."),
    ("num_requests_waiting", lambda s: s.num_waiting_requests, "Requests waiting to be scheduled."),
    ("kv_cache_usage_perc", lambda s: s.kv_cache_usage, "Fraction of KV-cache blocks in use (0 to 1)."),
]
_COUNTERS: list[tuple[str, _StatsField, str]] = [
    ("prefix_cache_queries", lambda s: s.prefix_cache_queries,
     "Prompt tokens looked up in the prefix cache."),
    ("prefix_cache_hits", lambda s: s.prefix_cache_hits, "Prompt tokens found in the prefix cache."),
    ("num_preemptions", lambda s: s.num_preemptions, "Preemptions of running requests (recompute)."),
    ("prompt_tokens", lambda s: s.prompt_tokens, "Prompt tokens computed (prefill)."),
    ("generation_tokens", lambda s: s.generation_tokens, "Tokens generated."),
    ("spec_decode_num_drafts", lambda s: s.spec_decode_num_drafts,
     "Speculative decoding: verify steps of a sequence with draft tokens."),
    ("spec_decode_num_draft_tokens", lambda s: s.spec_decode_num_draft_tokens,
     "Speculative decoding: draft tokens verified."),
    ("spec_decode_num_accepted_tokens", lambda s: s.spec_decode_num_accepted_tokens,
     "Speculative decoding: draft tokens accepted."),
]

_TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                  2.5, 5.0, 10.0)
_E2E_BUCKETS_S = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                  50.0, 60.0, 120.0, 240.0)


class _EngineStatsCollector(Collector):
    def __init__(self, engine: AsyncLLMEngine | DataParallelEngine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        # One sample per engine replica, labelled engine="0", "1", ... as vLLM labels its engines.
        replicas = list(enumerate(self.engine.get_replica_stats()))
        for name, value, doc in _GAUGES:
            g = GaugeMetricFamily(PREFIX + name, doc, labels=["model_name", "engine"])
            for i, stats in replicas:
                g.add_metric([self.model_name, str(i)], float(value(stats)))
            yield g
        for name, value, doc in _COUNTERS:
            c = CounterMetricFamily(PREFIX + name, doc, labels=["model_name", "engine"])
            for i, stats in replicas:
                c.add_metric([self.model_name, str(i)], float(value(stats)))
            yield c
        per_pos = CounterMetricFamily(PREFIX + "spec_decode_num_accepted_tokens_per_pos",
                                      "Speculative decoding: draft tokens accepted by position (0 = first).",
                                      labels=["model_name", "engine", "position"])
        for i, stats in replicas:
            for pos, count in enumerate(stats.spec_decode_num_accepted_tokens_per_pos):
                per_pos.add_metric([self.model_name, str(i), str(pos)], float(count))
        yield per_pos


class ServerMetrics:
    """All of one server's collectors; `render()` is the body of GET /metrics."""

    def __init__(self, engine: AsyncLLMEngine | DataParallelEngine, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self.registry.register(_EngineStatsCollector(engine, model_name))
        labels = ["model_name"]
        self.request_success = Counter(PREFIX + "request_success", "Finished requests by finish reason.",
                                       labels + ["finished_reason"], registry=self.registry)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Time to first token (s).", labels,
                              buckets=_TTFT_BUCKETS_S, registry=self.registry)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds", "Time between output tokens (s).",
                             labels, buckets=_ITL_BUCKETS_S, registry=self.registry)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "Arrival to finish (s).", labels,
                             buckets=_E2E_BUCKETS_S, registry=self.registry)
        self.queue = Histogram(PREFIX + "request_queue_time_seconds", "Arrival to first scheduled (s).",
                               labels, buckets=_E2E_BUCKETS_S, registry=self.registry)

    def observe_request(self, finish_reasons: list[str | None], engine_metrics: list[RequestMetrics],
                        inter_token_s: list[float]) -> None:
        """One finished HTTP request: a success count per choice, latencies per engine request."""
        m = self.model_name
        for reason in finish_reasons:
            self.request_success.labels(m, reason or "abort").inc()
        for em in engine_metrics:
            for hist, value in ((self.ttft, em.ttft_s), (self.e2e, em.e2e_s), (self.queue, em.queue_s)):
                if value is not None:
                    hist.labels(m).observe(value)
        itl = self.itl.labels(m)
        for gap in inter_token_s:
            itl.observe(gap)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
