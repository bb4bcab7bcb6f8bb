"""Capacity search: the cheapest serving configuration that meets TTFT/TPOT SLOs at a request rate.

Unlike `capacity.plan_serving` (the seed's chain, which counts only decode), every request here costs
its prompt's prefill as well as its output's decode. A closed-form steady state per replica of `tp`
GPUs, with P prompt tokens and O output tokens per request:

  decode step at batch b   t_dec(b) = max((weights read / tp + b · KV bytes/token / min(tp, kv_heads) · ctx)
                                          / (HBM bandwidth · e_mem),  b · 2N / tp / (peak · e_mfu))
                                      + 2 · layers · (α + ring(tp) · b · hidden · 2 / link) + step overhead
                           ctx = P + O/2, the mean context a decoding sequence reads
  prefill of one prompt    T_pre = P · (2N + attention FLOPs/token) / (tp · peak · e_mfu)
                                   + 2 · layers · (α + ring(tp) · P · hidden · 2 / link)
  shared pool (chunked prefill, vLLM's default): a step carries the b decodes and up to chunk − b prompt
  tokens; the weights are read once for both, so the decodes' reads hide under the chunk's compute:
      t_mix(b)           = max(decode memory, ((chunk − b)·(2N + attention/token) + b·2N) / (tp·peak·e_mfu))
                           + all-reduces + overhead
      per request        m = P / (chunk − b) mixed steps and max(O/b, m) steps in all (a sequence gets a
                         token per step), so R = m·t_mix + (max(O/b, m) − m)·t_dec replica-seconds
      req/s per replica  λ(b) = 1 / R;   TPOT(b) = R / max(O/b, m) (the mean step)
      TTFT               = S + ρ·S / (2(1 − ρ)),  S = the prompt's chunks' steps,  ρ = λ·S
                           (an M/D/1 queue in front of the one-prompt-at-a-time prefill lane)
  disaggregated pools (prefill replicas hand the KV cache to decode replicas over the network):
      decode             λ_d(b) = b / (O · t_dec(b)),  TPOT = t_dec(b)
      prefill            TTFT = T_pre + KV transfer + ρ·T_pre / (2(1 − ρ)),  λ_p = ρ_max / T_pre with ρ_max
                         the largest load that keeps TTFT within its SLO
  replicas = ceil(ceil(rate / λ) · (1 + headroom)); GPUs = replicas · tp; cost = GPUs · $/h.

The batch b of a configuration is the largest (up to min(max batch, KV concurrency)) that meets both
SLOs; the search enumerates TP degree, weight dtype, max batch and pool layout and ranks by cost.
`Assumptions` switches each term off, so `capstone.py` can walk from the seed's answer to this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from nanoserve.errors import InvalidRequestError
from nanoserve.planner import cost
from nanoserve.planner.checks import positive, positive_int
from nanoserve.planner.derivation import Result, _fmt, derive
from nanoserve.planner.hardware import Hardware, get_hardware
from nanoserve.planner.memory import bytes_per_param, canonical_dtype, kv_cache_per_token, weight_memory
from nanoserve.planner.models import ModelSpec, get_model
from nanoserve.planner.moe import decode_weight_params
from nanoserve.planner.parallel import collective_latency_s, ring_factor
from nanoserve.planner.params import param_breakdown
from nanoserve.planner.serving import prefill_attention_flops_per_token

TP_DEGREES = (1, 2, 4, 8)
DTYPES = ("bf16", "fp8", "int8", "int4")
MAX_BATCHES = (16, 32, 64, 128, 256)
MODES = ("shared", "disaggregated")


@dataclass(frozen=True)
class Workload:
    """What the service must carry: a request rate, each request's prompt and output, the SLOs."""

    request_rate_per_s: float
    prompt_tokens: int = 3584
    output_tokens: int = 512
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 1 / 30

    def __post_init__(self) -> None:
        positive("request_rate_per_s", self.request_rate_per_s)
        positive_int("prompt_tokens", self.prompt_tokens)
        positive_int("output_tokens", self.output_tokens)
        positive("ttft_slo_s", self.ttft_slo_s)
        positive("tpot_slo_s", self.tpot_slo_s)

    @classmethod
    def from_users(
        cls, users: float, active_fraction: float, tok_per_s_per_user: float, **kw: Any
    ) -> Workload:
        """The capstone's way of stating load: rate = users · active · tok/s each / output tokens;
        the TPOT SLO defaults to 1 / (tok/s each)."""
        out = kw.get("output_tokens", 512)
        kw.setdefault("tpot_slo_s", 1 / positive("tok_per_s_per_user", tok_per_s_per_user))
        return cls(users * active_fraction * tok_per_s_per_user / out, **kw)

    @property
    def output_tok_per_s(self) -> float:
        return self.request_rate_per_s * self.output_tokens


@dataclass(frozen=True)
class Assumptions:
    """Which terms count and how efficient the GPU is. `Assumptions.seed()` is the workbook's."""

    count_prefill: bool = True
    count_attention: bool = True
    kv_reads: bool = True
    memory_efficiency: float = 0.8  # of datasheet HBM bandwidth in decode GEMVs (AIConfigurator ≈ 0.8)
    compute_efficiency: float = 0.6  # MFU of prefill GEMMs (sim.step_model's default)
    allreduce_latency_s: float | None = None  # α per all-reduce; None = by interconnect (NVLink 8 µs)
    step_overhead_s: float = 2e-3  # host work per engine step (scheduling, sampling)
    enforce_slos: bool = True  # False: fill the batch to its cap, check only the per-user speed
    headroom: float = 0.0  # spare replicas; with SLOs priced by queueing, 0
    chunk_tokens: int = 2048  # token budget of a chunked-prefill step (max_num_batched_tokens)
    overhead_bytes: float = 5e9  # per-GPU runtime memory outside weights and KV

    @classmethod
    def seed(cls) -> Assumptions:
        """The workbook's capstone: weights-only decode at datasheet speed, no prompts, 20% headroom."""
        return cls(False, False, False, 1.0, 1.0, 0.0, 0.0, False, 0.2)


@dataclass(frozen=True)
class Config:
    mode: str = "shared"
    dtype: str = "bf16"
    tp: int = 1  # decode (or shared) replica
    prefill_tp: int = 0  # disaggregated prefill replica; 0 = same as tp
    max_batch: int = 256

    def label(self) -> str:
        pre = f", prefill TP={self.prefill_tp or self.tp}" if self.mode == "disaggregated" else ""
        return f"{self.mode} {self.dtype} TP={self.tp}{pre} max batch {self.max_batch}"


@dataclass(frozen=True)
class Candidate:
    """One configuration sized for the workload (a `feasible` one meets every SLO)."""

    config: Config
    feasible: bool
    reason: str
    gpus: int = 0
    decode_gpus: int = 0
    prefill_gpus: int = 0
    replicas: int = 0
    prefill_replicas: int = 0
    batch: int = 0
    tpot_s: float = 0.0
    ttft_s: float = 0.0
    decode_step_s: float = 0.0
    prefill_s: float = 0.0
    req_per_s_per_replica: float = 0.0
    mixed_step_s: float = 0.0  # shared pool: a decode step carrying a chunk of prompts
    monthly_usd: float = 0.0
    steps: dict[str, Result] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        c = self.config
        return {
            "config": c.label(),
            "mode": c.mode,
            "dtype": c.dtype,
            "tp": c.tp,
            "prefill_tp": c.prefill_tp or c.tp,
            "max_batch": c.max_batch,
            "feasible": self.feasible,
            "reason": self.reason,
            "gpus": self.gpus,
            "decode_gpus": self.decode_gpus,
            "prefill_gpus": self.prefill_gpus,
            "replicas": self.replicas,
            "prefill_replicas": self.prefill_replicas,
            "batch": self.batch,
            "tpot_s": self.tpot_s,
            "ttft_s": self.ttft_s,
            "decode_step_s": self.decode_step_s,
            "prefill_s": self.prefill_s,
            "req_per_s_per_replica": self.req_per_s_per_replica,
            "mixed_step_s": self.mixed_step_s,
            "monthly_usd": self.monthly_usd,
        }


class _Replica:
    """The float model of one replica (dtype, TP) of `spec` on `hw` under `a` (formulas: module doc)."""

    def __init__(
        self,
        spec: ModelSpec,
        hw: Hardware,
        dtype: str,
        tp: int,
        w: Workload,
        a: Assumptions,
        n_params: float | None,
        gpu_memory_bytes: float,
        kv_dtype: str,
    ) -> None:
        self.spec, self.hw, self.dtype, self.tp, self.w, self.a = spec, hw, dtype, tp, w, a
        self.n = float(n_params) if n_params else _active(spec)
        self.bpp = bytes_per_param(dtype).value
        self.peak = hw.flops_per_s(dtype if dtype in ("fp8", "int8") else "bf16")
        self.bw = hw.hbm_bytes_per_s
        self.alpha = collective_latency_s(hw) if a.allreduce_latency_s is None else a.allreduce_latency_s
        # an explicit parameter count (the workbook's "70B") sizes the weights too
        self.weights_gpu = (n_params * self.bpp if n_params else weight_memory(spec, dtype).value) / tp
        self.kv_tok_gpu = kv_cache_per_token(spec, kv_dtype=kv_dtype).value / min(tp, spec.kv_heads)
        ctx = w.prompt_tokens + w.output_tokens
        self.kv_budget = gpu_memory_bytes - self.weights_gpu - a.overhead_bytes
        self.kv_concurrency = max(0, math.floor(self.kv_budget / (self.kv_tok_gpu * ctx) + 1e-9))
        self.ctx_read = (w.prompt_tokens + w.output_tokens / 2) if a.kv_reads else 0.0
        self.attn = (
            prefill_attention_flops_per_token(spec, w.prompt_tokens).value if a.count_attention else 0.0
        )

    def allreduce_s(self, tokens: int) -> float:
        if self.tp == 1:
            return 0.0
        beta = ring_factor(self.tp) * tokens * self.spec.hidden * 2 / self.hw.intra_node_unidir_bytes_per_s
        return 2 * self.spec.layers * (self.alpha + beta)

    def weights_read_gpu(self, b: int) -> float:
        if self.spec.is_moe:
            return decode_weight_params(self.spec, b).value * self.bpp / self.tp
        return self.weights_gpu

    def decode_terms(self, b: int) -> dict[str, float]:
        kv = b * self.kv_tok_gpu * self.ctx_read
        mem = (self.weights_read_gpu(b) + kv) / (self.bw * self.a.memory_efficiency)
        cmp = b * 2 * self.n / self.tp / (self.peak * self.a.compute_efficiency)
        return {
            "memory_s": mem,
            "kv_read_s": kv / (self.bw * self.a.memory_efficiency),
            "compute_s": cmp,
            "allreduce_s": self.allreduce_s(b),
            "overhead_s": self.a.step_overhead_s,
        }

    def decode_step_s(self, b: int) -> float:
        t = self.decode_terms(b)
        return max(t["memory_s"], t["compute_s"]) + t["allreduce_s"] + t["overhead_s"]

    def mixed_step_s(self, b: int, prompt_tokens: int) -> float:
        """A decode step of b sequences that also computes `prompt_tokens` prompt tokens (chunked
        prefill): the weights are read once for both, so the decodes' memory time hides under the
        chunk's compute."""
        t = self.decode_terms(b)
        cmp = (prompt_tokens * (2 * self.n + self.attn) + b * 2 * self.n) / (
            self.tp * self.peak * self.a.compute_efficiency
        )
        return max(t["memory_s"], cmp) + self.allreduce_s(b + prompt_tokens) + t["overhead_s"]

    def prefill_s(self) -> float:
        if not self.a.count_prefill:
            return 0.0
        p = self.w.prompt_tokens
        return p * (2 * self.n + self.attn) / (
            self.tp * self.peak * self.a.compute_efficiency
        ) + self.allreduce_s(p)


def _active(spec: ModelSpec) -> float:
    return float(param_breakdown(spec).active)


def _mdl_wait(rho: float, service_s: float) -> float:
    """Mean wait in an M/D/1 queue: ρ·S / (2(1 − ρ))."""
    return math.inf if rho >= 1 else rho * service_s / (2 * (1 - rho))


def _replicas(rate: float, per_replica: float, headroom: float) -> int:
    return math.ceil(math.ceil(rate / per_replica - 1e-9) * (1 + headroom) - 1e-9)


def evaluate(
    model: ModelSpec | str,
    hardware: Hardware | str,
    workload: Workload,
    config: Config,
    assumptions: Assumptions | None = None,
    *,
    n_params: float | None = None,
    gpu_memory_bytes: float | None = None,
    kv_dtype: str = "bf16",
    hours_per_month: float = cost.HOURS_PER_MONTH,
) -> Candidate:
    """Size one configuration for the workload: the best batch, replicas, GPUs, TPOT, TTFT, cost."""
    spec, hw, a, w = get_model(model), get_hardware(hardware), assumptions or Assumptions(), workload
    if config.mode not in MODES:
        raise InvalidRequestError(f"mode must be one of {MODES}", "mode")
    c = replace(config, dtype=canonical_dtype(config.dtype))
    positive_int("tp", c.tp)
    positive_int("max_batch", c.max_batch)
    n = n_params
    mem = hw.hbm_bytes if gpu_memory_bytes is None else gpu_memory_bytes
    r = _Replica(spec, hw, c.dtype, c.tp, w, a, n, mem, kv_dtype)
    cap = min(c.max_batch, r.kv_concurrency)
    if cap < 1:
        return Candidate(c, False, f"no {w.prompt_tokens + w.output_tokens}-token request fits in memory")
    o = w.output_tokens
    shared = c.mode == "shared"
    t_pre = r.prefill_s() if shared else 0.0
    p_tok = w.prompt_tokens if shared and a.count_prefill else 0
    best: tuple[float, int, float, float, float] | None = None  # (req/s per replica, b, tpot, ttft, t_mix)
    for b in range(1, cap + 1):
        t_dec = r.decode_step_s(b)
        t_mix, ttft, mixed = 0.0, 0.0, 0.0
        if p_tok:
            chunk = a.chunk_tokens - b  # prompt tokens a mixed step carries beside its b decodes
            if chunk < 1:
                break
            t_mix = r.mixed_step_s(b, chunk)
            mixed = p_tok / chunk  # mixed steps per request
        steps = max(o / b, mixed)  # steps per request: decodes ride on the mixed ones
        per_request = mixed * t_mix + (steps - mixed) * t_dec  # replica-seconds
        lam, tpot = 1 / per_request, per_request / steps
        if p_tok:
            full, rest = divmod(p_tok, chunk)
            service = full * t_mix + (r.mixed_step_s(b, rest) if rest else 0.0)
            ttft = service + _mdl_wait(lam * service, service)
        ok = tpot <= w.tpot_slo_s and ttft <= w.ttft_slo_s if a.enforce_slos else tpot <= w.tpot_slo_s
        if ok and (best is None or lam > best[0]):
            best = (lam, b, tpot, ttft, t_mix)
    if best is None:
        return Candidate(
            c, False, f"TPOT {_fmt(r.decode_step_s(1) * 1e3)} ms at batch 1 or TTFT misses the SLO"
        )
    lam, b, tpot, ttft, t_mix = best
    reps = _replicas(w.request_rate_per_s, lam, a.headroom)
    pre_reps, pre_gpus, pre_tp = 0, 0, c.prefill_tp or c.tp
    if not shared:
        p = _Replica(spec, hw, c.dtype, pre_tp, w, a, n, mem, kv_dtype)
        if p.kv_budget <= 0:
            return Candidate(c, False, f"weights do not fit a prefill replica at TP={pre_tp}")
        t_pre = p.prefill_s()
        transfer = (
            kv_cache_per_token(spec, kv_dtype=kv_dtype).value * w.prompt_tokens / hw.inter_node_bytes_per_s
        )
        slack = w.ttft_slo_s - t_pre - transfer
        if a.enforce_slos and slack <= 0:
            return Candidate(c, False, f"prefill {_fmt(t_pre)} s + KV transfer exceed the TTFT SLO")
        rho = min(0.95, 2 * slack / (t_pre + 2 * slack)) if a.enforce_slos else 1.0
        lam_p = rho / t_pre if t_pre else math.inf
        pre_reps = _replicas(w.request_rate_per_s, lam_p, a.headroom) if t_pre else 0
        pre_gpus = pre_reps * pre_tp
        ttft = t_pre + transfer + _mdl_wait(rho, t_pre) if t_pre else 0.0
    gpus = reps * c.tp + pre_gpus
    cand = Candidate(
        c,
        True,
        "",
        gpus,
        reps * c.tp,
        pre_gpus,
        reps,
        pre_reps,
        b,
        tpot,
        ttft,
        r.decode_step_s(b),
        t_pre,
        lam,
        t_mix,
        gpus * hw.usd_per_hour * hours_per_month,
    )
    return replace(cand, steps=_derivation(cand, r, w, a, hw, hours_per_month))


def _derivation(
    c: Candidate, r: _Replica, w: Workload, a: Assumptions, hw: Hardware, hours: float
) -> dict[str, Result]:
    """The winning numbers with their inputs, formulas and substitutions."""
    b, cfg = c.batch, c.config
    t = r.decode_terms(b)
    steps: dict[str, Result] = {}
    steps["request rate"] = derive(
        "request rate",
        w.request_rate_per_s,
        "req/s",
        "given (or users · active · tok/s each / output tokens)",
        _fmt(w.request_rate_per_s),
        {"prompt_tokens": w.prompt_tokens, "output_tokens": w.output_tokens},
    )
    steps["decode step"] = derive(
        "decode step time",
        c.decode_step_s,
        "s",
        "max((weights read/tp + b·KV/token/tp·ctx) / (bw·e_mem), b·2N/tp / (peak·e_mfu))"
        " + all-reduces + overhead",
        f"max(({_fmt(r.weights_read_gpu(b))} + {b} × {_fmt(r.kv_tok_gpu)} × {_fmt(r.ctx_read)}) / "
        f"({_fmt(r.bw)} × {a.memory_efficiency:g}), {b} × 2 × {_fmt(r.n)} / {cfg.tp} / ({_fmt(r.peak)} × "
        f"{a.compute_efficiency:g})) + {_fmt(t['allreduce_s'])} + {_fmt(t['overhead_s'])}",
        {"batch": b, **t, "allreduce_latency_s": r.alpha},
    )
    pre_tp = cfg.tp if cfg.mode == "shared" else (cfg.prefill_tp or cfg.tp)
    mixed = w.prompt_tokens / (a.chunk_tokens - b) if c.mixed_step_s else 0.0
    steps_per_req = max(w.output_tokens / b, mixed)
    steps["prefill per request"] = derive(
        "prefill time per request",
        c.prefill_s,
        "s",
        "P · (2N + attention FLOPs/token) / (tp · peak · e_mfu) + prompt all-reduces",
        f"{w.prompt_tokens:,} × (2 × {_fmt(r.n)} + {_fmt(r.attn)}) / ({pre_tp} × {_fmt(r.peak)} × "
        f"{a.compute_efficiency:g}) + all-reduces"
        if a.count_prefill
        else "0 (prompts not counted)",
        {"prompt_tokens": w.prompt_tokens, "tp": pre_tp},
    )
    if cfg.mode == "shared":
        steps["replica rate"] = derive(
            "requests/s per replica",
            c.req_per_s_per_replica,
            "req/s",
            "1 / (m · t_mix + (max(O/b, m) − m) · t_dec), m = P / (chunk − b) mixed steps per request",
            f"1 / ({_fmt(mixed)} × {_fmt(c.mixed_step_s)} + ({_fmt(steps_per_req)} − {_fmt(mixed)}) × "
            f"{_fmt(c.decode_step_s)})",
            {
                "batch": b,
                "kv_concurrency": r.kv_concurrency,
                "max_batch": cfg.max_batch,
                "chunk_tokens": a.chunk_tokens,
            },
        )
        if c.mixed_step_s:
            steps["mixed step"] = derive(
                "decode step with a prefill chunk",
                c.mixed_step_s,
                "s",
                "max(decode memory, (chunk·(2N + attention/token) + b·2N) / (tp·peak·e_mfu))"
                " + all-reduces + overhead",
                f"max({_fmt(t['memory_s'])}, ({a.chunk_tokens - b} × (2 × {_fmt(r.n)} + {_fmt(r.attn)}) + "
                f"{b} × 2 × {_fmt(r.n)}) / ({cfg.tp} × {_fmt(r.peak)} × {a.compute_efficiency:g})) + …",
                {"batch": b, "prompt_tokens_in_step": a.chunk_tokens - b},
            )
        steps["TPOT"] = derive(
            "TPOT",
            c.tpot_s,
            "s",
            "replica-seconds per request / steps per request (the mean step)",
            f"{_fmt(1 / c.req_per_s_per_replica)} / {_fmt(steps_per_req)}",
            {"slo_s": w.tpot_slo_s},
        )
    else:
        steps["replica rate"] = derive(
            "requests/s per decode replica",
            c.req_per_s_per_replica,
            "req/s",
            "b / (O · t_dec)",
            f"{b} / ({w.output_tokens} × {_fmt(c.decode_step_s)})",
            {"batch": b, "kv_concurrency": r.kv_concurrency, "max_batch": cfg.max_batch},
        )
        steps["TPOT"] = derive("TPOT", c.tpot_s, "s", "t_dec", _fmt(c.decode_step_s), {"slo_s": w.tpot_slo_s})
        steps["prefill replicas"] = derive(
            "prefill replicas",
            c.prefill_replicas,
            "replicas",
            "ceil(rate · T_pre / ρ_max), ρ_max keeps TTFT = T_pre + KV transfer + M/D/1 wait within the SLO",
            f"ceil({_fmt(w.request_rate_per_s)} × {_fmt(c.prefill_s)} / ρ_max)",
            {"prefill_tp": pre_tp},
        )
    steps["TTFT"] = derive(
        "TTFT",
        c.ttft_s,
        "s",
        "prefill service + M/D/1 queueing (+ KV transfer)",
        _fmt(c.ttft_s),
        {"slo_s": w.ttft_slo_s},
    )
    steps["replicas"] = derive(
        "replicas",
        c.replicas,
        "replicas",
        "ceil(ceil(rate / per replica) · (1 + headroom))",
        f"ceil(ceil({_fmt(w.request_rate_per_s)} / {_fmt(c.req_per_s_per_replica)}) × {1 + a.headroom:g})",
        {"headroom": a.headroom},
    )
    steps["GPUs"] = derive(
        "GPUs",
        c.gpus,
        "GPUs",
        "replicas · tp + prefill replicas · prefill tp",
        f"{c.replicas} × {cfg.tp} + {c.prefill_replicas} × {pre_tp}",
    )
    steps["monthly cost"] = cost.monthly_bill(c.gpus, hw.usd_per_hour, hours)
    return steps


def search(
    model: ModelSpec | str,
    hardware: Hardware | str,
    workload: Workload,
    assumptions: Assumptions | None = None,
    *,
    tps: tuple[int, ...] = TP_DEGREES,
    dtypes: tuple[str, ...] = DTYPES,
    max_batches: tuple[int, ...] = MAX_BATCHES,
    modes: tuple[str, ...] = MODES,
    **kw: Any,
) -> list[Candidate]:
    """Every configuration, cheapest feasible first (then fewer GPUs, smaller TP); infeasible last.

    Disaggregated candidates pair each decode TP with the prefill TP that costs fewest GPUs.
    """
    hw = get_hardware(hardware)
    out: list[Candidate] = []
    for d in dtypes:
        if (d == "fp8" and hw.fp8_flops_per_s is None) or (d == "int8" and hw.int8_ops_per_s is None):
            continue  # the chip has no such units (a TPU without int8, an A100 without fp8)
        for t in tps:
            for mb in max_batches:
                for m in modes:
                    pre = tps if m == "disaggregated" else (0,)
                    tried = [
                        evaluate(model, hw, workload, Config(m, d, t, p, mb), assumptions, **kw) for p in pre
                    ]
                    ok = [x for x in tried if x.feasible]
                    out.append(min(ok, key=lambda x: (x.gpus, x.config.prefill_tp)) if ok else tried[0])
    return sorted(out, key=lambda x: (not x.feasible, x.monthly_usd, x.gpus, x.config.tp, x.config.max_batch))


def best(
    model: ModelSpec | str,
    hardware: Hardware | str,
    workload: Workload,
    assumptions: Assumptions | None = None,
    **kw: Any,
) -> Candidate:
    """The cheapest feasible configuration (InvalidRequestError when none meets the SLOs)."""
    ranked = search(model, hardware, workload, assumptions, **kw)
    if not ranked or not ranked[0].feasible:
        why = ranked[0].reason if ranked else "nothing to try"
        raise InvalidRequestError(f"no configuration meets the SLOs ({why})", "slo")
    return ranked[0]
