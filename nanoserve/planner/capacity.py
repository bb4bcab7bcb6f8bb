"""The serving-plan solver: requirements in, a sized and costed design out (seed 000, chapter 9).

The chain, each link a calculator whose derivation the plan keeps:
  required tok/s = users · active fraction · tok/s per user
  weights        = N · bytes per param (quantized), split over a tensor-parallel replica of `tp` GPUs
  KV budget      = GPU memory − weights / tp − overhead; concurrency = budget / (KV per request / tp)
  decode batch   = min(KV concurrency, max batch, the batch at which a step still meets tok/s per user)
  replica tok/s  = batch / step time, step = max(bytes read / bandwidth, batch · 2N / peak)
  GPUs           = ceil(ceil(required / replica tok/s) · (1 + headroom)) · tp; nodes = GPUs / per node
  TTFT           = 2N · prompt / (tp · peak) ≤ target?
  monthly bill   = GPUs · $/h · 720; $/1M tokens = bill / tokens served per month
and says which constraint binds the batch, and whether latency holds.

The default decode step reads only the weights, like the workbook. Each sequence also reads its KV
cache every step; `kv_read_fraction` (mean context / context, 0.5 for uniformly filled contexts)
adds that traffic, and the plan always warns how much it would change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from nanoserve.errors import InvalidRequestError
from nanoserve.planner import cost, serving
from nanoserve.planner.derivation import Result, _fmt, derive
from nanoserve.planner.hardware import Hardware, get_hardware
from nanoserve.planner.memory import canonical_dtype, kv_cache_per_token, weight_memory
from nanoserve.planner.models import ModelSpec, get_model
from nanoserve.planner.parallel import ring_factor
from nanoserve.planner.params import param_breakdown


@dataclass(frozen=True)
class ServingPlan:
    """A sized, costed serving design. `steps` holds every link of the chain with its derivation."""

    model: str
    hardware: str
    weight_dtype: str
    tp: int
    replicas: int
    gpus: int
    nodes: int
    batch_per_replica: int
    kv_concurrency_per_replica: int
    tok_per_s_per_gpu: float
    required_tok_per_s: float
    prefill_s: float
    ttft_target_s: float
    monthly_usd: float
    usd_per_million_tokens: float
    binding: str
    latency_ok: bool
    steps: dict[str, Result] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def requests_per_gpu(self) -> float:
        return self.batch_per_replica / self.tp

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "hardware": self.hardware,
            "weight_dtype": self.weight_dtype,
            "tp": self.tp,
            "replicas": self.replicas,
            "gpus": self.gpus,
            "nodes": self.nodes,
            "requests_per_gpu": self.requests_per_gpu,
            "batch_per_replica": self.batch_per_replica,
            "kv_concurrency_per_replica": self.kv_concurrency_per_replica,
            "tok_per_s_per_gpu": self.tok_per_s_per_gpu,
            "required_tok_per_s": self.required_tok_per_s,
            "prefill_s": self.prefill_s,
            "ttft_target_s": self.ttft_target_s,
            "latency_ok": self.latency_ok,
            "monthly_usd": self.monthly_usd,
            "usd_per_million_tokens": self.usd_per_million_tokens,
            "binding": self.binding,
        }

    def to_dict(self) -> dict[str, Any]:
        d = self.summary()
        d["steps"] = {k: v.to_dict() for k, v in self.steps.items()}
        d["warnings"] = list(self.warnings)
        return d

    def result(self) -> Result:
        """The whole plan as one Result (value: GPUs) whose steps are the chain."""
        return derive(
            "serving plan",
            self.gpus,
            "GPUs",
            "replicas · tp",
            f"{self.replicas} × {self.tp}",
            self.summary(),
            list(self.steps.values()),
            "; ".join(self.warnings),
        )


def _max_batch_for_rate(
    tok_per_s_per_user: float,
    weight_bytes: float,
    kv_read_bytes: float,
    bandwidth: float,
    flops_per_token: float,
    peak: float,
    efficiency: float,
    comm_s_per_seq: float = 0.0,
) -> float:
    """Largest batch b whose step, max(memory, compute) / efficiency + b · TP comm per sequence, still
    gives each sequence `tok_per_s_per_user`."""
    budget = 1 / tok_per_s_per_user
    fixed = weight_bytes / (bandwidth * efficiency)
    if fixed > budget:
        return 0.0
    per_seq_mem = kv_read_bytes / (bandwidth * efficiency) + comm_s_per_seq
    by_memory = (budget - fixed) / per_seq_mem if per_seq_mem else math.inf
    by_compute = budget / (flops_per_token / (peak * efficiency) + comm_s_per_seq)
    return min(by_memory, by_compute)


def _plan_at_tp(
    model: ModelSpec | str,
    hardware: Hardware | str,
    *,
    weight_dtype: str = "int4",
    kv_dtype: str = "bf16",
    users: float = 10_000,
    active_fraction: float = 0.3,
    tok_per_s_per_user: float = 30.0,
    context_tokens: int = 4096,
    prompt_tokens: int | None = None,
    ttft_target_s: float = 2.0,
    headroom: float = 0.2,
    usd_per_hour: float | None = None,
    overhead_bytes: float = 5e9,
    max_batch: int | None = None,
    tp: int = 1,
    n_params: float | None = None,
    gpu_memory_bytes: float | None = None,
    prefill_efficiency: float = 1.0,
    decode_efficiency: float = 1.0,
    kv_read_fraction: float = 0.0,
    hours_per_month: float = cost.HOURS_PER_MONTH,
) -> ServingPlan:
    """One plan at a fixed tensor-parallel degree `tp` (see `plan_serving`)."""
    spec = get_model(model)
    hw = get_hardware(hardware)
    if not 0 <= kv_read_fraction <= 1:
        raise InvalidRequestError("kv_read_fraction must be in [0, 1]", "kv_read_fraction")
    if context_tokens is None or context_tokens <= 0:
        raise InvalidRequestError("context_tokens must be > 0", "context_tokens")
    if max_batch is not None and max_batch < 1:
        raise InvalidRequestError("max_batch must be >= 1", "max_batch")
    if overhead_bytes < 0:
        raise InvalidRequestError("overhead_bytes must be >= 0", "overhead_bytes")
    wd = canonical_dtype(weight_dtype)
    price = hw.usd_per_hour if usd_per_hour is None else usd_per_hour
    if not price or price <= 0:
        raise InvalidRequestError(f"no price for {hw.name}: pass usd_per_hour", "usd_per_hour")
    mem = hw.hbm_bytes if gpu_memory_bytes is None else gpu_memory_bytes
    if mem <= 0:
        raise InvalidRequestError("gpu_memory_bytes must be > 0", "gpu_memory_bytes")
    prompt = context_tokens if prompt_tokens is None else prompt_tokens
    steps: dict[str, Result] = {}
    warnings: list[str] = []

    need = serving.aggregate_throughput(users, active_fraction, tok_per_s_per_user)
    steps["required throughput"] = need

    n = float(n_params) if n_params else float(param_breakdown(spec).active)
    weights = weight_memory(n if n_params else spec, wd)
    steps["weights"] = weights
    kv_tok = kv_cache_per_token(spec, kv_dtype=kv_dtype)
    kv_req = derive(
        "KV cache per request",
        kv_tok.value * context_tokens,
        "bytes",
        "KV per token · context",
        f"{_fmt(kv_tok.value)} × {context_tokens:,}",
        {"context_tokens": context_tokens},
        [kv_tok],
    )
    steps["KV per request"] = kv_req

    def kv_split(t: int) -> int:  # TP beyond kv_heads replicates KV heads instead of splitting them
        return min(t, spec.kv_heads)

    def budget(t: int) -> float:
        return mem - weights.value / t - overhead_bytes

    if tp < 1:
        raise InvalidRequestError("tp must be >= 1", "tp")
    kv_gpu = budget(tp)
    steps["KV budget per GPU"] = derive(
        "KV budget per GPU",
        kv_gpu,
        "bytes",
        "GPU memory − weights / tp − overhead",
        f"{_fmt(mem)} − {_fmt(weights.value)} / {tp} − {_fmt(overhead_bytes)}",
        {"gpu_memory_bytes": mem, "tp": tp, "overhead_bytes": overhead_bytes},
    )
    if kv_gpu <= 0:
        raise InvalidRequestError(
            f"weights ({_fmt(weights.value / tp / 1e9)} GB per GPU at TP={tp}) plus overhead exceed "
            f"{hw.name}'s {_fmt(mem / 1e9)} GB",
            "tp",
        )
    kv_req_gpu = kv_req.value / kv_split(tp)
    conc = math.floor(kv_gpu / kv_req_gpu + 1e-9)
    steps["KV concurrency"] = derive(
        "concurrent requests per replica (KV)",
        conc,
        "requests",
        "floor(KV budget / (KV per request / tp))",
        f"floor({_fmt(kv_gpu)} / ({_fmt(kv_req.value)} / {kv_split(tp)}) = {_fmt(kv_gpu / kv_req_gpu)})",
    )
    if conc < 1:
        raise InvalidRequestError(
            f"not even one {context_tokens}-token request fits the KV budget at TP={tp}", "kv_cache"
        )

    peak = hw.flops_per_s(wd if wd in ("fp8", "int8") else "bf16")
    bw = hw.hbm_bytes_per_s
    w_gpu = weights.value / tp
    kv_read = kv_read_fraction * kv_req_gpu
    flops_tok = 2 * n / tp
    # TP all-reduces (2 per layer) of each sequence's hidden state, ring-priced on the node's link; the
    # per-message latency is left out, so small batches on many GPUs look better than they are
    comm_seq = (
        2 * spec.layers * ring_factor(tp) * spec.hidden * 2 / hw.intra_node_unidir_bytes_per_s
        if tp > 1
        else 0.0
    )
    rate_cap = _max_batch_for_rate(
        tok_per_s_per_user, w_gpu, kv_read, bw, flops_tok, peak, decode_efficiency, comm_seq
    )
    limits = {"KV cache": conc, f"tok/s per user ({_fmt(tok_per_s_per_user)})": math.floor(rate_cap)}
    if max_batch is not None:
        limits["max batch"] = max_batch
    binding = min(limits, key=lambda k: (limits[k], k != "max batch"))
    batch = limits[binding]
    if batch < 1:
        raise InvalidRequestError(
            f"one {hw.name} replica at TP={tp} cannot give a user {_fmt(tok_per_s_per_user)} tok/s "
            f"(weights alone take {_fmt(w_gpu / bw * 1e3)} ms per step)",
            "tok_per_s_per_user",
        )
    steps["decode batch"] = derive(
        "decode batch per replica",
        batch,
        "sequences",
        "min(" + ", ".join(limits) + ")",
        "min(" + ", ".join(str(v) for v in limits.values()) + ")",
        {"binding": binding},
    )

    step = serving.decode_throughput(w_gpu, bw, batch, kv_read, flops_tok, peak, decode_efficiency)
    if tp > 1:
        comm = derive(
            "TP all-reduce time per step",
            batch * comm_seq,
            "s",
            "2 · layers · ring(tp) · batch · hidden · 2 B / link (one direction)",
            f"2 × {spec.layers} × {_fmt(ring_factor(tp))} × {batch} × {spec.hidden} × 2 / "
            f"{_fmt(hw.intra_node_unidir_bytes_per_s)}",
            {"tp": tp, "batch": batch},
            note="bandwidth only: add ~10-30 µs latency per all-reduce",
        )
        total = step.steps[0].value + comm.value
        step = derive(
            "decode throughput",
            batch / total,
            "tok/s",
            "batch / (step time + TP all-reduce time)",
            f"{batch} / ({_fmt(step.steps[0].value)} + {_fmt(comm.value)}) s",
            {"batch": batch, "bound": step.inputs["bound"]},
            [step.steps[0], comm],
            note=f"{_fmt(1 / total)} tok/s per sequence (TPOT {_fmt(total * 1e3)} ms)",
        )
    per_replica = step.value
    steps["replica throughput"] = step
    per_gpu = derive(
        "throughput per GPU", per_replica / tp, "tok/s", "replica tok/s / tp", f"{_fmt(per_replica)} / {tp}"
    )
    steps["throughput per GPU"] = per_gpu
    reps = serving.replicas_needed(need.value, per_replica, headroom)
    steps["replicas"] = reps
    gpus = int(reps.value) * tp
    steps["GPUs"] = derive("GPUs", gpus, "GPUs", "replicas · tp", f"{int(reps.value)} × {tp}")
    nodes = math.ceil(gpus / hw.devices_per_node)
    steps["nodes"] = derive(
        "nodes",
        nodes,
        "nodes",
        "ceil(GPUs / GPUs per node)",
        f"ceil({gpus} / {hw.devices_per_node} = {_fmt(gpus / hw.devices_per_node)})",
    )

    pre = serving.prefill_time(prompt, n, peak * tp, prefill_efficiency)
    latency_ok = pre.value <= ttft_target_s
    steps["prefill (TTFT floor)"] = derive(
        "prefill time",
        pre.value,
        "s",
        pre.formula + " (tp GPUs share it)",
        pre.substituted,
        {"ttft_target_s": ttft_target_s, "latency_ok": latency_ok},
        pre.steps,
        note=(
            f"meets the {_fmt(ttft_target_s)} s TTFT target with {_fmt(ttft_target_s - pre.value)} s for "
            "queueing, scheduling and network"
        )
        if latency_ok
        else f"misses the {_fmt(ttft_target_s)} s TTFT target: more TP, chunked prefill or shorter prompts",
    )
    if not latency_ok:
        warnings.append(f"prefill alone takes {_fmt(pre.value)} s > TTFT target {_fmt(ttft_target_s)} s")

    bill = cost.monthly_bill(gpus, price, hours_per_month)
    steps["monthly cost"] = bill
    per_m = cost.cost_per_million_from_bill(bill.value, need.value, hours_per_month)
    steps["cost per 1M tokens"] = per_m

    if not kv_read_fraction:
        half = serving.decode_throughput(
            w_gpu, bw, batch, 0.5 * kv_req_gpu, flops_tok, peak, decode_efficiency
        )
        if half.value < 0.95 * per_replica:
            warnings.append(
                f"the step reads weights only; reading each sequence's KV cache at a mean context of "
                f"{context_tokens // 2} tokens adds {_fmt(batch * 0.5 * kv_req_gpu / 1e9)} GB per step and "
                f"cuts a replica to {_fmt(half.value)} tok/s (size with it: kv_read_fraction=0.5)"
            )
    return ServingPlan(
        model=spec.name,
        hardware=hw.name,
        weight_dtype=wd,
        tp=tp,
        replicas=int(reps.value),
        gpus=gpus,
        nodes=nodes,
        batch_per_replica=batch,
        kv_concurrency_per_replica=conc,
        tok_per_s_per_gpu=per_gpu.value,
        required_tok_per_s=need.value,
        prefill_s=pre.value,
        ttft_target_s=ttft_target_s,
        monthly_usd=bill.value,
        usd_per_million_tokens=per_m.value,
        binding=binding,
        latency_ok=latency_ok,
        steps=steps,
        warnings=tuple(warnings),
    )


def plan_serving(
    model: ModelSpec | str, hardware: Hardware | str, *, tp: int | None = None, **kw: Any
) -> ServingPlan:
    """Size and cost a serving deployment (see the module docstring for the chain).

    Keyword arguments (all optional): weight_dtype ("int4"), kv_dtype ("bf16"), users (10,000),
    active_fraction (0.3), tok_per_s_per_user (30), context_tokens (4096), prompt_tokens (= context),
    ttft_target_s (2.0), headroom (0.2), usd_per_hour (the preset's), overhead_bytes (5e9), max_batch
    (vLLM's max_num_seqs; None = no cap), n_params (overrides the exact count, e.g. the workbook's
    "70B"), gpu_memory_bytes (overrides the preset's HBM), prefill_efficiency / decode_efficiency (1.0),
    kv_read_fraction (0.0 = weights-only steps, like the workbook), hours_per_month (720).

    `tp` fixes the tensor-parallel degree; by default every power of two up to a node is tried and the
    plan that meets the TTFT target with the fewest GPUs (then the smallest TP) wins.
    """
    if tp is not None:
        return _plan_at_tp(model, hardware, tp=tp, **kw)
    hw = get_hardware(hardware)
    plans: dict[int, ServingPlan] = {}
    errors: dict[int, str] = {}
    t = 1
    while t <= max(hw.devices_per_node, 1) or (not plans and t <= 64):
        try:
            plans[t] = _plan_at_tp(model, hw, tp=t, **kw)
        except InvalidRequestError as e:
            if e.param not in ("tp", "kv_cache", "tok_per_s_per_user"):
                raise
            errors[t] = e.message
        t *= 2
    if not plans:
        last = max(errors)
        raise InvalidRequestError(f"no tensor-parallel degree up to {last} works: {errors[last]}", "tp")
    best = min(plans.values(), key=lambda p: (not p.latency_ok, p.gpus, p.tp))
    tried = ", ".join(
        f"TP={k}: {plans[k].gpus} GPUs" + ("" if plans[k].latency_ok else " (misses TTFT)")
        if k in plans
        else f"TP={k}: no fit"
        for k in sorted(set(plans) | set(errors))
    )
    choice = derive(
        "tensor-parallel degree",
        best.tp,
        "GPUs per replica",
        "fewest GPUs among TP degrees that meet the TTFT target",
        tried,
        {"tried": tried},
    )
    steps = {"TP choice": choice, **best.steps}
    return replace(best, steps=steps)
