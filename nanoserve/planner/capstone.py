"""The workbook's capstone re-answered: the seed's simplified plan beside a realistic one, term by term.

The seed (000, chapter 9) sizes a 70B chat service for 10,000 users (30% active, 30 tok/s each: 90,000
output tok/s) at 36 H100s: it counts only decode, reads only the weights per step at datasheet speed,
and adds 20% headroom. Requests also carry prompts (3,584 tokens beside 512 output tokens, the 4,096-token
context): at 176 req/s the prompts alone need ~9e16 FLOP/s, ~90 H100s at 100% of peak.

`capstone()` walks from one answer to the other at the seed's configuration (shared pool, int4, TP=1,
batch ≤ 32), switching one term on per row, then lets `capacity_search` choose TP, dtype, batch and
pools; each row is a sized `Candidate`, so the difference between rows is that term's share.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from nanoserve.planner.capacity import ServingPlan, plan_serving
from nanoserve.planner.capacity_search import Assumptions, Candidate, Config, Workload, best, evaluate

GiB = 2**30
SEED_PRICE_USD_PER_HOUR = 2.20
SEED_CONFIG = Config("shared", "int4", 1, 0, 32)


@dataclass(frozen=True)
class CapstoneRow:
    term: str
    candidate: Candidate

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, **self.candidate.summary()}


@dataclass(frozen=True)
class Capstone:
    seed: ServingPlan  # the workbook's chain, unchanged (36 GPUs)
    rows: tuple[CapstoneRow, ...]  # seed assumptions → realistic, one term at a time
    realistic: Candidate  # the cheapest configuration meeting the SLOs
    workload: Workload

    def columns(self) -> list[tuple[str, str, str]]:
        """(quantity, seed, realistic) for the two-column table."""
        s, r = self.seed, self.realistic
        t = r.steps["decode step"].inputs
        return [
            ("configuration", f"shared int4 TP={s.tp} batch {s.batch_per_replica}", r.config.label()),
            ("decode batch per replica", str(s.batch_per_replica), str(r.batch)),
            ("prompt prefill per request", "not counted", f"{r.prefill_s * 1e3:.0f} ms (attention incl.)"),
            (
                "decode step",
                f"{1e3 * s.batch_per_replica / (s.tok_per_s_per_gpu * s.tp):.1f} ms weights only",
                f"{r.decode_step_s * 1e3:.1f} ms",
            ),
            ("  of which KV reads", "0", f"{t['kv_read_s'] * 1e3:.1f} ms"),
            ("  of which all-reduces (α–β)", "0", f"{t['allreduce_s'] * 1e3:.1f} ms"),
            ("  of which step overhead", "0", f"{t['overhead_s'] * 1e3:.1f} ms"),
            (
                "TPOT (SLO 33 ms)",
                f"{1e3 * s.batch_per_replica / (s.tok_per_s_per_gpu * s.tp):.1f} ms",
                f"{r.tpot_s * 1e3:.1f} ms",
            ),
            ("TTFT (SLO 2 s)", f"{s.prefill_s:.2f} s (prefill alone)", f"{r.ttft_s:.2f} s (with queueing)"),
            ("GPUs for decode", str(s.gpus), str(r.decode_gpus)),
            ("GPUs for prefill", "0", str(r.prefill_gpus)),
            ("GPUs", str(s.gpus), str(r.gpus)),
            ("$/month", f"{s.monthly_usd:,.0f}", f"{r.monthly_usd:,.0f}"),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload.__dict__,
            "seed": self.seed.summary(),
            "realistic": self.realistic.summary(),
            "columns": [{"quantity": q, "seed": a, "realistic": b} for q, a, b in self.columns()],
            "terms": [r.to_dict() for r in self.rows],
        }


def capstone(
    model: str = "llama-3.1-70b",
    hardware: str = "h100",
    *,
    prompt_tokens: int = 3584,
    output_tokens: int = 512,
    usd_per_hour: float = SEED_PRICE_USD_PER_HOUR,
    realistic: Assumptions | None = None,
) -> Capstone:
    """The seed's plan, the term-by-term walk and the realistic plan, priced alike."""
    from nanoserve.planner.hardware import get_hardware

    hw = get_hardware(hardware).with_price(usd_per_hour)
    seed = plan_serving(model, hw, n_params=70e9, max_batch=32, gpu_memory_bytes=80 * GiB)
    w = Workload.from_users(10_000, 0.30, 30, prompt_tokens=prompt_tokens, output_tokens=output_tokens)
    real = realistic or Assumptions()
    seed_kw: dict[str, Any] = {"n_params": 70e9, "gpu_memory_bytes": 80 * GiB}
    a = Assumptions.seed()
    walk: list[tuple[str, Assumptions, dict[str, Any]]] = [("seed assumptions, closed form", a, seed_kw)]
    a = replace(a, kv_reads=True)
    walk.append((f"+ KV reads (mean context {prompt_tokens + output_tokens // 2:,} tokens)", a, seed_kw))
    a = replace(a, count_prefill=True)
    walk.append((f"+ prompt prefill (2N · {prompt_tokens:,} tokens per request)", a, seed_kw))
    a = replace(a, count_attention=True)
    walk.append(("+ attention FLOPs in prefill", a, seed_kw))
    a = replace(a, memory_efficiency=real.memory_efficiency, compute_efficiency=real.compute_efficiency)
    walk.append(
        (
            f"+ achievable speed ({real.memory_efficiency:g} of HBM bandwidth, "
            f"{real.compute_efficiency:g} MFU), exact 70.55B params, 80 GB",
            a,
            {},
        )
    )
    a = replace(a, step_overhead_s=real.step_overhead_s, allreduce_latency_s=real.allreduce_latency_s)
    walk.append(
        (f"+ per-step overhead {real.step_overhead_s * 1e3:g} ms (all-reduce α: none at TP=1)", a, {})
    )
    a = replace(a, enforce_slos=True, headroom=real.headroom)
    walk.append(
        (
            f"+ SLOs (TPOT ≤ {w.tpot_slo_s * 1e3:.1f} ms, TTFT ≤ {w.ttft_slo_s:g} s with queueing) "
            f"instead of {Assumptions.seed().headroom:.0%} headroom",
            a,
            {},
        )
    )
    rows = [CapstoneRow(term, evaluate(model, hw, w, SEED_CONFIG, asm, **kw)) for term, asm, kw in walk]
    win = best(model, hw, w, real)
    rows.append(CapstoneRow("+ search TP, dtype, max batch, shared vs disaggregated pools", win))
    return Capstone(seed, tuple(rows), win, w)
