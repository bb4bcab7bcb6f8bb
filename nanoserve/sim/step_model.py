"""Step-time models: how long one engine step takes, given what the scheduler put in it.

A step is summarised as a StepShape (decode sequences, prefill tokens, context tokens read, query-key
pairs attended). Two models turn it into seconds:

- AnalyticStepModel, from the planner's presets (any GPU, any TP degree), every term the planner's own
  function:  step = max(memory, compute) + TP all-reduces + overhead, where
    memory  = (weights / TP + KV bytes of every context token read / TP)
              / (HBM bandwidth · memory_efficiency)
    compute = (2 · N_matmul · tokens + 4 · layers · q_dim · query-key pairs) / TP
              / (peak · compute_efficiency)
    all-reduce = 2 per layer of [tokens, hidden] activations: α (latency per message) + ring bytes / link
  (the attention term is flops_per_token's 4·layers·ctx·q_dim summed over the step's exact query-key
  pairs, so prefill counts its attention too). Efficiencies are overridable; the defaults are typical of
  a well-tuned engine on a datacenter GPU (about 80% of HBM bandwidth in decode GEMVs, about 60% of dense
  peak in prefill GEMMs), a 10 µs all-reduce latency (NCCL on NVLink, small messages) and 2 ms of
  per-step host overhead (scheduling, input preparation, sampling). They are not calibrated.
- CalibratedStepModel, from a JSON profile of measured steps (`nanoserve bench calibrate`): a
  least-squares fit of  step_s = c0 + c_decode · decode_batch + c_prefill · prefill_tokens
  + c_context · context_tokens [+ c_pairs · attention_pairs + c_seq · num_seqs + ...], the bracketed
  terms when the profile's samples carry them, plus a hinge c_k · max(0, decode_batch − k) at every
  decode batch k the profile measured between its smallest and largest (a matmul's time per row is not
  constant: the decode curve bends, most at the smallest batches), and a cold-start cost
  c_cold · (1 − exp(−idle_s / COLD_TAU_S)) + c_slow · (1 − exp(−idle_s / COLD_SLOW_TAU_S)) for a step
  that follows an idle engine (the weights and the allocator's pages leave the caches, the cores
  clock down). Two time constants because the cost keeps growing long after the first: on the 2-core
  box a demo-model prompt step costs +0.2 ms after 5 ms of sleep, +0.3 ms after 20 ms and +0.8 ms after
  100 ms (one constant of 6 ms made every gap past 20 ms cost the same, and light-load TTFTs of
  requests arriving 50–200 ms apart came out 11–18% short). The steps after a wake-up still pay part
  of it: c_warm · cold_start(wake idle) · exp(−steps since the wake-up / WARM_STEPS) (warming()).
  Decode-only steps are read off the measured decode points instead of the fit (decode_table.py: the
  fit's compromise missed light load's batch-1 steps by 11%), plus the warming term fitted over them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.hardware import Hardware, get_hardware
from nanoserve.planner.memory import kv_cache_per_token, weight_memory
from nanoserve.planner.models import ModelSpec, get_model
from nanoserve.planner.parallel import collective_time
from nanoserve.planner.params import matmul_params
from nanoserve.planner.roofline import compute_time, memory_time
from nanoserve.sim.decode_table import DecodeTable


@dataclass(frozen=True)
class StepShape:
    num_decode_seqs: int = 0  # sequences computing one token after their prompt
    num_prefill_tokens: int = 0  # prompt (or recompute) tokens computed this step
    context_tokens: int = 0  # KV entries read: every scheduled sequence's context up to its last new token
    attention_pairs: int = 0  # (query, key) pairs attended, causal: n·start + n(n+1)/2 per sequence
    num_seqs: int = 0  # sequences scheduled (0: unknown, taken as the decodes plus one prompt chunk)
    idle_s: float = 0.0  # how long the engine sat idle (no request) right before this step
    # Since the engine last woke from idle: how long it had slept, and how many steps ago it woke (the
    # step after the wake-up step is 1). The steps after a wake-up still run slower (the warming term).
    wake_idle_s: float = 0.0
    steps_since_wake: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_decode_seqs + self.num_prefill_tokens

    @classmethod
    def of(cls, chunks: list[tuple[int, int, bool]]) -> StepShape:
        """From (start, num_new_tokens, is_decode) per scheduled sequence."""
        decode = prefill = ctx = pairs = 0
        for start, n, is_decode in chunks:
            if is_decode:
                decode += n
            else:
                prefill += n
            ctx += start + n
            pairs += n * start + n * (n + 1) // 2
        return cls(decode, prefill, ctx, pairs, len(chunks))


class StepModel(Protocol):
    # From a request's arrival at an idle engine to the start of its first step (the serving loop's
    # wake-up and admitting the request); the simulator adds it after every idle gap.
    wake_s: float

    def step_time_s(self, shape: StepShape) -> float: ...

    def describe(self) -> dict: ...


@dataclass
class AnalyticStepModel:
    model: ModelSpec
    hardware: Hardware
    tp: int = 1
    dtype: str = "bf16"  # weights and compute
    kv_dtype: str = "bf16"
    memory_efficiency: float = 0.8
    compute_efficiency: float = 0.6
    allreduce_latency_s: float = 10e-6
    overhead_s: float = 2e-3
    wake_s: float = 0.0  # not modelled for a GPU server

    def __post_init__(self) -> None:
        self.model = get_model(self.model)
        self.hardware = get_hardware(self.hardware)
        if not isinstance(self.tp, int) or self.tp < 1:
            raise InvalidRequestError(f"tp must be a positive integer (got {self.tp!r})", "tp")
        for name in ("memory_efficiency", "compute_efficiency"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise InvalidRequestError(f"{name} must be in (0, 1] (got {v})", name)
        if self.allreduce_latency_s < 0 or self.overhead_s < 0:
            raise InvalidRequestError("latencies and overheads must be >= 0", "overhead_s")

    @property
    def weight_bytes_per_gpu(self) -> float:
        return weight_memory(self.model, self.dtype).value / self.tp

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        """KV heads are split over TP ranks (replicated when there are fewer heads than ranks)."""
        per = kv_cache_per_token(self.model, kv_dtype=self.kv_dtype).value
        return per / min(self.tp, self.model.kv_heads)

    def terms_s(self, shape: StepShape) -> dict[str, float]:
        """Each term of the step time, in seconds."""
        m, hw = self.model, self.hardware
        moved = self.weight_bytes_per_gpu + shape.context_tokens * self.kv_bytes_per_token_per_gpu
        flops = (2 * matmul_params(m) * shape.num_tokens + 4 * m.layers * m.q_dim * shape.attention_pairs)
        t_mem = memory_time(moved, hw.hbm_bytes_per_s, self.memory_efficiency).value
        t_cmp = compute_time(flops / self.tp, hw.flops_per_s(self.dtype), self.compute_efficiency).value \
            if flops else 0.0
        t_comm = 0.0
        if self.tp > 1 and shape.num_tokens:
            msg_bytes = shape.num_tokens * m.hidden * 2  # bf16 activations [tokens, hidden]
            one = collective_time(msg_bytes, hw.intra_node_unidir_bytes_per_s, self.tp).value
            t_comm = 2 * m.layers * (self.allreduce_latency_s + one)
        return {"memory_s": t_mem, "compute_s": t_cmp, "allreduce_s": t_comm, "overhead_s": self.overhead_s}

    def step_time_s(self, shape: StepShape) -> float:
        t = self.terms_s(shape)
        return max(t["memory_s"], t["compute_s"]) + t["allreduce_s"] + t["overhead_s"]

    def describe(self) -> dict:
        return {
            "kind": "analytic", "model": self.model.name, "gpu": self.hardware.name, "tp": self.tp,
            "dtype": self.dtype, "kv_dtype": self.kv_dtype, "memory_efficiency": self.memory_efficiency,
            "compute_efficiency": self.compute_efficiency, "allreduce_latency_s": self.allreduce_latency_s,
            "overhead_s": self.overhead_s,
        }


PROFILE_FEATURES = ("decode_batch", "prefill_tokens", "context_tokens")
# Optional terms, fitted when every sample has them (bench calibrate's profiles do): the quadratic
# attention of prefill chunks, a cost per prompt chunk (its own attention call, first-token output
# processing), a fixed cost of any step that carries a prompt chunk (the prefill path's setup) and the
# cold start after an idle engine, fast and slow part (fitted only when the samples include steps
# after idle; the slow part only with at least three idle gaps, so that the two can be told apart).
EXTRA_FEATURES = ("attention_pairs", "prefill_seqs", "prefill_step", "cold_start", "cold_start_slow",
                  "warming")
ALL_FEATURES = PROFILE_FEATURES + EXTRA_FEATURES
# The cold start's time constant: the extra cost of a step after idle_s of sleep grows as
# 1 − exp(−idle_s / COLD_TAU_S) (measured on the dev box: half of it after 5 ms, all after ~20 ms).
COLD_TAU_S = 0.006
COLD_SLOW_TAU_S = 0.1
# The steps after a wake-up: their extra cost decays as exp(−steps_since_wake / WARM_STEPS). Demo model,
# light load (a request every 50 ms), batch-1 decode steps: 0.325 ms for the first three after the
# wake-up step, 0.213 ms for the next four, 0.19 ms from the eighth on (0.157 ms run back to back).
WARM_STEPS = 2.0
# Terms a decode-only step read off the decode table still adds (the table holds warm steps only).
DECODE_EXTRAS = ("cold_start", "cold_start_slow")
HINGE_PREFIX = "decode_batch_over_"  # coefficient name of the hinge at decode batch k: "decode_batch_over_8"


def cold_start(idle_s: float, tau_s: float = COLD_TAU_S) -> float:
    """The cold-start feature of a step after `idle_s` seconds of idle engine: 0 (warm) .. 1 (cold),
    with time constant tau_s (COLD_TAU_S: the fast part; COLD_SLOW_TAU_S: the slow part)."""
    return 1.0 - math.exp(-max(0.0, idle_s) / tau_s)


def shape_features(shape: StepShape) -> dict[str, float]:
    """A step's features by profile name."""
    has_prefill = int(shape.num_prefill_tokens > 0)
    prefill_seqs = shape.num_seqs - shape.num_decode_seqs if shape.num_seqs else has_prefill
    return {"decode_batch": shape.num_decode_seqs, "prefill_tokens": shape.num_prefill_tokens,
            "context_tokens": shape.context_tokens, "attention_pairs": shape.attention_pairs,
            "prefill_seqs": prefill_seqs, "prefill_step": has_prefill, "cold_start": cold_start(shape.idle_s),
            "cold_start_slow": cold_start(shape.idle_s, COLD_SLOW_TAU_S), "warming": warming(shape)}


def warming(shape: StepShape) -> float:
    """The warming feature of a step `steps_since_wake` steps after the engine woke from
    `wake_idle_s` of idle: cold_start(wake_idle_s) · exp(−steps_since_wake / WARM_STEPS); 0 for the
    wake-up step itself (its cost is cold_start's) and for an engine that never slept."""
    if shape.steps_since_wake < 1 or shape.idle_s > 0:
        return 0.0
    return cold_start(shape.wake_idle_s) * math.exp(-shape.steps_since_wake / WARM_STEPS)


def _hinge_knots(samples: list[dict]) -> list[int]:
    """The decode batches measured alone (decode-only samples), without the smallest and largest; a
    batch within 10% of the previous one (a point whose batch shrank by a few sequences) is the same."""
    batches: list[int] = []
    for b in sorted({int(round(float(s["decode_batch"]))) for s in samples
                     if not s.get("prefill_tokens") and s.get("decode_batch")}):
        if not batches or b > 1.1 * batches[-1]:
            batches.append(b)
    return batches[1:-1]


def _feature(features: dict[str, float], name: str) -> float:
    if name.startswith(HINGE_PREFIX):
        return max(0.0, features.get("decode_batch", 0) - float(name[len(HINGE_PREFIX):]))
    return features.get(name, 0)


@dataclass
class CalibratedStepModel:
    """step_s = intercept + Σ coefficient · feature, fitted to measured steps (relative least squares).

    Profile JSON: {"samples": [{"decode_batch": 8, "prefill_tokens": 0, "context_tokens": 1024,
    "step_s": 0.0123}, ...]} (at least one more sample than features, spanning them; samples that also
    carry EXTRA_FEATURES, as `nanoserve bench calibrate` writes, fit those terms too, and then the
    decode hinges at the profile's inner decode batches), or the fit itself:
    {"coefficients": {"intercept_s": ..., "decode_batch": ..., "decode_batch_over_8": ..., ...}}.
    """

    intercept_s: float
    coefficients: dict[str, float] = field(default_factory=dict)  # seconds per unit of each feature
    source: str = ""
    wake_s: float = 0.0  # the profile's "wake_s": bench calibrate measures it at its idle points
    # Decode-only steps read off the measured decode points (decode_table.py); None: the fit for all.
    decode_table: DecodeTable | None = None

    @classmethod
    def fit(cls, samples: list[dict], source: str = "") -> CalibratedStepModel:
        import numpy as np

        extra = [f for f in EXTRA_FEATURES if samples and all(f in s for s in samples)]
        if "cold_start" in extra and max(float(s["cold_start"]) for s in samples) < 0.5:
            extra.remove("cold_start")  # no step after idle was measured: the term cannot be fitted
        if "warming" in extra and max(float(s["warming"]) for s in samples) < 0.1:
            extra.remove("warming")  # nor any step soon after one
        if "cold_start_slow" in extra and (
            "cold_start" not in extra
            or len({round(float(s["cold_start_slow"]), 3) for s in samples if s["cold_start"]}) < 3
        ):
            extra.remove("cold_start_slow")  # fewer than three idle gaps: fast and slow are one term
        hinges = [f"{HINGE_PREFIX}{k}" for k in _hinge_knots(samples)] if extra else []
        features = list(PROFILE_FEATURES) + extra + hinges
        if len(samples) < len(features) + 1:
            raise InvalidRequestError(f"a profile needs at least {len(features) + 1} samples", "profile")
        try:
            x = np.array([[1.0] + [float(_feature(s, f)) for f in features] for s in samples])
            y = np.array([float(s["step_s"]) for s in samples])
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidRequestError(f"profile sample without a numeric step_s ({e})", "profile") from None
        if (y <= 0).any():
            raise InvalidRequestError("profile step_s values must be > 0", "profile")
        # Weighted by 1/step_s: a 5 ms decode step matters as much, relatively, as a 2 s prefill.
        w = 1.0 / y
        coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
        coefficients = {f: float(c) for f, c in zip(features, coef[1:], strict=True)}
        table = DecodeTable.from_samples(samples, coefficients["context_tokens"]) if extra else None
        return cls(float(coef[0]), coefficients, source, decode_table=table)

    @classmethod
    def from_file(cls, path: str | Path) -> CalibratedStepModel:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise InvalidRequestError(f"cannot read profile {path}: {e}", "profile") from None
        try:
            wake_s = float(data.get("wake_s", 0.0))
        except (TypeError, ValueError):
            raise InvalidRequestError(f"profile {path}: wake_s must be seconds", "profile") from None
        if not 0.0 <= wake_s < 1.0:
            raise InvalidRequestError(f"profile {path}: wake_s {wake_s} is not in [0, 1) s", "profile")
        if "coefficients" in data:
            c = dict(data["coefficients"])
            return cls(float(c.pop("intercept_s", 0.0)),
                       {f: float(v) for f, v in c.items() if f in ALL_FEATURES or f.startswith(HINGE_PREFIX)},
                       str(path), wake_s)
        model = cls.fit(list(data.get("samples", [])), str(path))
        model.wake_s = wake_s
        return model

    def predict_s(self, features: dict[str, float]) -> float:
        """The step time for features by profile name (a missing one counts 0)."""
        batch = features.get("decode_batch", 0)
        if self.decode_table is not None and batch > 0 and not features.get("prefill_tokens", 0):
            base = self.decode_table.predict_s(batch, features.get("context_tokens", 0),
                                               features.get("warming", 0))
            # a decode right after idle (rare: a wake-up step usually carries the new prompt)
            extra = (c * _feature(features, f) for f, c in self.coefficients.items() if f in DECODE_EXTRAS)
            return max(0.0, base + sum(extra))
        terms = (c * _feature(features, f) for f, c in self.coefficients.items())
        return max(0.0, self.intercept_s + sum(terms))

    def step_time_s(self, shape: StepShape) -> float:
        return self.predict_s(shape_features(shape))

    def describe(self) -> dict:
        table = self.decode_table.describe() if self.decode_table is not None else None
        return {"kind": "calibrated", "profile": self.source, "intercept_s": self.intercept_s,
                "coefficients": self.coefficients, "wake_s": self.wake_s, "decode_table": table}


@dataclass
class ConstantStepModel:
    """Every step takes the same time: for tests and for counting steps."""

    step_s: float = 1.0
    wake_s: float = 0.0

    def step_time_s(self, shape: StepShape) -> float:
        return self.step_s

    def describe(self) -> dict:
        return {"kind": "constant", "step_s": self.step_s}
