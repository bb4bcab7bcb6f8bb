"""Parallelism: tensor (TP), pipeline (PP), data (DP, ZeRO-1/2/3, FSDP), and their 3D product.

Conventions:
- Ring all-reduce of an S-byte message over P GPUs: each GPU sends (and receives) 2·(P−1)/P · S bytes
  (a reduce-scatter then an all-gather, each (P−1)/P · S). All-gather or reduce-scatter alone: (P−1)/P · S.
  Pass `p=None` for the large-P limit the workbooks use (2·S and S).
- Time on a link = bytes sent per GPU / link bytes per second, the link speed being what one GPU can
  push in one direction. Vendors quote NVLink both directions summed (H100: 900 GB/s = 450 each way);
  `Hardware.intra_node_unidir_bytes_per_s` is the per-direction figure.
- ZeRO shards over the data-parallel degree only (the GPUs holding replicas of the same shard), never
  over every GPU: with TP·PP model parallelism, divide by DP, not by TP·PP·DP.
"""

from __future__ import annotations

import math
from fractions import Fraction

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.checks import positive, positive_int
from nanoserve.planner.derivation import Result, derive
from nanoserve.planner.hardware import Hardware, get_hardware
from nanoserve.planner.models import ModelSpec, get_model
from nanoserve.planner.params import param_breakdown


def _params(model: ModelSpec | str | float) -> tuple[str, float]:
    if isinstance(model, (int, float)):
        if model <= 0:
            raise InvalidRequestError("parameter count must be > 0", "params")
        return f"{model / 1e9:g}B-param model", float(model)
    m = get_model(model)
    return m.name, float(param_breakdown(m).total)


# One default ZeRO stage for the API and the CLI (it was 0, 3 and 1 in three places): ZeRO-1, the
# sharded optimizer that DeepSpeed users and Megatron's distributed optimizer start from. Stage 0 is
# plain DDP; ask for 2 or 3 explicitly.
ZERO_STAGE_DEFAULT = 1

_COUNTS = {"tp", "pp", "dp", "layers", "microbatches", "total_gpus", "model_parallel", "micro_batch_seqs",
           "seq_len", "grad_accum", "batch", "hidden"}


def _positive(**kw: float) -> None:
    """Positive numbers; GPU counts, degrees and shapes must also be whole (2.5-way TP is an error)."""
    for name, value in kw.items():
        (positive_int if name in _COUNTS else positive)(name, value)


# ---------------------------------------------------------------- collectives

def ring_factor(p: int | None, kind: str = "allreduce") -> float:
    """Bytes each GPU sends per message byte: all-reduce 2(P−1)/P, all-gather / reduce-scatter (P−1)/P."""
    base = {"allreduce": 2.0, "allgather": 1.0, "reducescatter": 1.0}
    if kind not in base:
        raise InvalidRequestError("kind must be allreduce, allgather or reducescatter", "kind")
    if p is None:
        return base[kind]
    if p < 1:
        raise InvalidRequestError("number of GPUs must be >= 1", "p")
    return base[kind] * (p - 1) / p


# Per-message latency α of one NCCL collective among the GPUs of one node (the α of the α–β model,
# time = α + bytes / β). NVLink-class: ≈ 8 µs, from AIConfigurator's 70B TP=8 batch-1 decode on H100
# (160 all-reduces ≈ 1.3 ms, shared/REFERENCES.md) and in line with nccl-tests' small-message
# all_reduce_perf on 8×H100/A100 NVLink. PCIe without NVLink (L4, L40S): ≈ 25 µs, a typical
# nccl-tests small-message figure through a PCIe switch (an estimate: measure yours with
# `all_reduce_perf -b 8 -e 64K`). Every calculator takes an override.
NVLINK_ALLREDUCE_LATENCY_S = 8e-6
PCIE_ALLREDUCE_LATENCY_S = 25e-6


def collective_latency_s(hardware: Hardware | str) -> float:
    """α of one collective inside a node of `hardware` (a Hardware or a preset name): by link kind."""
    hw = get_hardware(hardware)
    no_nvlink = "no nvlink" in hw.intra_node_link.lower() or hw.intra_node_link.lower().startswith("pcie")
    return PCIE_ALLREDUCE_LATENCY_S if no_nvlink else NVLINK_ALLREDUCE_LATENCY_S


def collective_time(message_bytes: float, link_bytes_per_s: float, p: int | None = None,
                    kind: str = "allreduce", latency_s: float = 0.0) -> Result:
    """Time of a ring collective: α + ring_factor · message / link (α–β model).

    `latency_s` (α) defaults to 0, the bandwidth-only figure the workbooks use; pass
    `collective_latency_s(hw)` for the per-message cost that dominates small messages (decode).
    """
    _positive(link_bytes_per_s=link_bytes_per_s)
    if not latency_s >= 0:
        raise InvalidRequestError(f"latency_s must be >= 0 (got {latency_s!r})", "latency_s")
    f = ring_factor(p, kind)
    beta_s = f * message_bytes / link_bytes_per_s
    if not latency_s:
        return derive(f"{kind} time", beta_s, "s",
                      "ring_factor · message_bytes / link_bytes_per_s",
                      f"{f:g} · {message_bytes:,.0f} / {link_bytes_per_s:,.0f}",
                      {"p": p, "kind": kind, "ring_factor": f})
    return derive(f"{kind} time", latency_s + beta_s, "s",
                  "α + ring_factor · message_bytes / link_bytes_per_s",
                  f"{latency_s:g} + {f:g} · {message_bytes:,.0f} / {link_bytes_per_s:,.0f}",
                  {"p": p, "kind": kind, "ring_factor": f, "latency_s": latency_s, "bandwidth_s": beta_s},
                  note=f"latency {latency_s / (latency_s + beta_s):.0%} of the time")


def tp_forward_allreduce_time(
    layers: int, tokens: int, hidden: int, tp: int, link_bytes_per_s: float, latency_s: float,
    bytes_per_element: float = 2, allreduces_per_layer: int = 2,
) -> Result:
    """All-reduce time of one TP forward over `tokens` tokens (a decode step: the batch; a prefill:
    the prompt): layers · allreduces · (α + 2(TP−1)/TP · tokens·hidden·bytes / β).

    Each layer all-reduces its [tokens, hidden] output twice (after W_O and after W_2). At decode the
    message is a few KB, so α, not bandwidth, sets the time (70B at TP=8: 160 × ≈ 8 µs ≈ 1.3 ms); at
    prefill the bandwidth term dominates. Counted as exposed (not overlapped with the matmuls).
    """
    _positive(layers=layers, tp=tp)
    msg = tp_allreduce_message_bytes(tokens, 1, hidden, bytes_per_element)
    one = collective_time(msg.value, link_bytes_per_s, tp, "allreduce", latency_s)
    n = layers * allreduces_per_layer
    return derive("TP all-reduce time per forward", n * one.value if tp > 1 else 0.0, "s",
                  "layers · allreduces_per_layer · (α + ring_factor · message / link)",
                  f"{layers} × {allreduces_per_layer} × {one.value:.4g}" if tp > 1 else "0 (TP = 1)",
                  {"layers": layers, "tokens": tokens, "allreduces_per_layer": allreduces_per_layer, "tp": tp,
                   "latency_s": latency_s}, [msg, one])


# ---------------------------------------------------------------- tensor parallelism

def tp_params_per_gpu(params: float, tp: int) -> Result:
    """Each GPU holds 1/TP of every sharded weight matrix."""
    _positive(params=params, tp=tp)
    return derive("parameters per GPU", params / tp, "params", "params / tp", f"{params:,.0f} / {tp}",
                  {"params": params, "tp": tp})


def tp_weight_memory_per_gpu(model: ModelSpec | str | float, tp: int, bytes_per_param: float = 2) -> Result:
    """Weight bytes per GPU under TP: params · bytes / tp (norms and biases replicated: ignored, <0.01%)."""
    name, n = _params(model)
    _positive(tp=tp, bytes_per_param=bytes_per_param)
    return derive(f"weights per GPU of {name}", n * bytes_per_param / tp, "bytes",
                  "params · bytes_per_param / tp", f"{n:,.0f} · {bytes_per_param:g} / {tp}",
                  {"params": n, "tp": tp, "bytes_per_param": bytes_per_param})


def tp_allreduce_message_bytes(batch: int, seq_len: int, hidden: int, bytes_per_element: float = 2) -> Result:
    """One TP all-reduce carries the full activation [batch, seq_len, hidden]."""
    _positive(batch=batch, seq_len=seq_len, hidden=hidden, bytes_per_element=bytes_per_element)
    return derive("all-reduce message", batch * seq_len * hidden * bytes_per_element, "bytes",
                  "batch · seq_len · hidden · bytes_per_element",
                  f"{batch} · {seq_len} · {hidden} · {bytes_per_element:g}",
                  {"batch": batch, "seq_len": seq_len, "hidden": hidden})


def tp_allreduce_bytes_per_layer(
    batch: int, seq_len: int, hidden: int, tp: int | None = None, bytes_per_element: float = 2,
    allreduces_per_layer: int = 2, ring: bool = True,
) -> Result:
    """Bytes each GPU sends per layer in the forward pass (2 all-reduces: after W_O and after W_2).

    ring=True: 2·(TP−1)/TP · message each (the exact ring cost); ring=False: the message size itself,
    the workbook's "≈1× the message" simplification. Backward adds the same again.
    """
    msg = tp_allreduce_message_bytes(batch, seq_len, hidden, bytes_per_element)
    f = ring_factor(tp) if ring else 1.0
    return derive("TP all-reduce bytes per GPU per layer", allreduces_per_layer * f * msg.value, "bytes",
                  "allreduces · ring_factor · message" if ring else "allreduces · message",
                  f"{allreduces_per_layer} · {f:g} · {msg.value:,.0f}",
                  {"tp": tp, "allreduces_per_layer": allreduces_per_layer, "ring": ring}, [msg])


def tp_comm_time(bytes_per_layer: Result | float, layers: int, link_bytes_per_s: float) -> Result:
    """Pure communication time of one forward pass: layers · bytes_per_layer / link bandwidth."""
    per = bytes_per_layer.value if isinstance(bytes_per_layer, Result) else float(bytes_per_layer)
    _positive(layers=layers, link_bytes_per_s=link_bytes_per_s)
    steps = [bytes_per_layer] if isinstance(bytes_per_layer, Result) else []
    return derive("TP communication time per forward", layers * per / link_bytes_per_s, "s",
                  "layers · bytes_per_layer / link_bytes_per_s",
                  f"{layers} · {per:,.0f} / {link_bytes_per_s:,.0f}",
                  {"layers": layers, "link_bytes_per_s": link_bytes_per_s}, steps)


# ---------------------------------------------------------------- pipeline parallelism

def pipeline_bubble_fraction(pp: int, microbatches: int) -> Result:
    """GPipe / 1F1B idle fraction: (PP − 1) / (PP − 1 + M)."""
    _positive(pp=pp, microbatches=microbatches)
    return derive("pipeline bubble fraction", (pp - 1) / (pp - 1 + microbatches), "fraction",
                  "(pp − 1) / (pp − 1 + m)", f"({pp} − 1) / ({pp} − 1 + {microbatches})",
                  {"pp": pp, "microbatches": microbatches})


def microbatches_for_bubble(pp: int, target: float, strict: bool = True) -> Result:
    """Smallest M with bubble < target (strict) or ≤ target: M > (PP−1)(1−target)/target."""
    _positive(pp=pp)
    if not 0 < target < 1:
        raise InvalidRequestError("target bubble fraction must be in (0, 1)", "target")
    t = Fraction(str(target))  # exact: 0.1 must give a bound of exactly 27 for pp=4, not 26.999…
    exact = (pp - 1) * (1 - t) / t
    m = max(1, math.floor(exact) + 1 if strict else math.ceil(exact))
    bound = float(exact)
    return derive("microbatches for the bubble target", m, "microbatches",
                  f"smallest m with (pp−1)/(pp−1+m) {'<' if strict else '≤'} target, i.e. m "
                  f"{'>' if strict else '≥'} (pp−1)(1−target)/target",
                  f"m {'>' if strict else '≥'} ({pp}−1)(1−{target:g})/{target:g} = {bound:g}",
                  {"pp": pp, "target": target, "strict": strict},
                  [pipeline_bubble_fraction(pp, m)])


def layers_per_stage(layers: int, pp: int) -> Result:
    """Layers per pipeline stage (the largest stage when pp does not divide layers)."""
    _positive(layers=layers, pp=pp)
    return derive("layers per stage", math.ceil(layers / pp), "layers", "ceil(layers / pp)",
                  f"ceil({layers} / {pp})", {"layers": layers, "pp": pp},
                  note="" if layers % pp == 0 else "uneven: some stages hold one layer fewer")


# ---------------------------------------------------------------- data parallelism, ZeRO, FSDP

def zero_memory_per_gpu(
    model: ModelSpec | str | float, dp: int, stage: int = ZERO_STAGE_DEFAULT, weight_bytes: float = 2,
    grad_bytes: float = 2, optimizer_bytes: float = 12, model_parallel: int = 1,
) -> Result:
    """Model state per GPU: stage 0 (DDP) replicates all; ZeRO-1 shards the optimizer, ZeRO-2 also the
    gradients, ZeRO-3 / FSDP also the weights — each over the data-parallel degree `dp`.

    `model_parallel` (= TP·PP) first splits the model; ZeRO then shards that slice over dp.
    """
    name, n = _params(model)
    _positive(dp=dp, model_parallel=model_parallel)
    if stage not in (0, 1, 2, 3):
        raise InvalidRequestError("ZeRO stage must be 0, 1, 2 or 3", "stage")
    n_slice = n / model_parallel
    w = weight_bytes / (dp if stage >= 3 else 1)
    g = grad_bytes / (dp if stage >= 2 else 1)
    o = optimizer_bytes / (dp if stage >= 1 else 1)
    label = {0: "DDP", 1: "ZeRO-1", 2: "ZeRO-2", 3: "ZeRO-3/FSDP"}[stage]
    fw = f"{weight_bytes:g}" + (f"/{dp}" if stage >= 3 else "")
    fg = f"{grad_bytes:g}" + (f"/{dp}" if stage >= 2 else "")
    fo = f"{optimizer_bytes:g}" + (f"/{dp}" if stage >= 1 else "")
    mp = f" / {model_parallel}" if model_parallel > 1 else ""
    return derive(
        f"{label} model state per GPU of {name}", n_slice * (w + g + o), "bytes",
        "params" + (" / (tp·pp)" if model_parallel > 1 else "") + " · (weights + grads + optimizer), "
        "sharded over dp by stage",
        f"{n:,.0f}{mp} · ({fw} + {fg} + {fo})",
        {"params": n, "dp": dp, "stage": stage, "model_parallel": model_parallel,
         "bytes_per_param": w + g + o},
    )


def fsdp_memory_per_gpu(model: ModelSpec | str | float, dp: int, bytes_per_param: float = 16) -> Result:
    """FSDP (full sharding) = ZeRO-3: bytes_per_param · params / dp."""
    name, n = _params(model)
    _positive(dp=dp, bytes_per_param=bytes_per_param)
    return derive(f"FSDP model state per GPU of {name}", n * bytes_per_param / dp, "bytes",
                  "params · bytes_per_param / dp", f"{n:,.0f} · {bytes_per_param:g} / {dp}",
                  {"params": n, "dp": dp, "bytes_per_param": bytes_per_param})


def dp_comm_per_step(model: ModelSpec | str | float, dp: int | None = None, strategy: str = "ddp",
                     grad_bytes: float = 2) -> Result:
    """Bytes each GPU sends per optimizer step.

    DDP, ZeRO-1, ZeRO-2: one gradient all-reduce = 2·(N−1)/N · Ψ·b (ZeRO-2 does it as a reduce-scatter
    of gradients plus an all-gather of updated weights: the same volume).
    ZeRO-3 / FSDP: all-gather weights for forward, again for backward, reduce-scatter gradients =
    3·(N−1)/N · Ψ·b, 1.5× DDP. dp=None gives the large-N limit (2·Ψ·b and 3·Ψ·b).
    """
    name, n = _params(model)
    factors = {"ddp": 2, "zero1": 2, "zero2": 2, "zero3": 3, "fsdp": 3}
    key = strategy.lower().replace("-", "").replace("_", "")
    if key not in factors:
        raise InvalidRequestError(f"strategy must be one of {', '.join(factors)}", "strategy")
    if dp is not None:
        _positive(dp=dp)
    ring = 1.0 if dp is None else (dp - 1) / dp
    k = factors[key]
    ring_txt = "" if dp is None else f" · ({dp}−1)/{dp}"
    return derive(f"{strategy} communication per GPU per step", k * ring * n * grad_bytes, "bytes",
                  f"{k} · (N−1)/N · params · bytes" if dp else f"{k} · params · bytes (large-N limit)",
                  f"{k}{ring_txt} · {n:,.0f} · {grad_bytes:g}", {"params": n, "dp": dp, "strategy": strategy})


# ---------------------------------------------------------------- 3D parallelism

def dp_degree(total_gpus: int, tp: int, pp: int) -> Result:
    """DP = total GPUs / (TP · PP); TP·PP must divide the GPU count."""
    _positive(total_gpus=total_gpus, tp=tp, pp=pp)
    if total_gpus % (tp * pp):
        raise InvalidRequestError(f"tp·pp = {tp * pp} does not divide {total_gpus} GPUs", "total_gpus")
    return derive("data-parallel degree", total_gpus // (tp * pp), "replicas", "total_gpus / (tp · pp)",
                  f"{total_gpus} / ({tp} · {pp})", {"total_gpus": total_gpus, "tp": tp, "pp": pp})


def weight_memory_3d(model: ModelSpec | str | float, tp: int, pp: int, bytes_per_param: float = 2) -> Result:
    """Weight bytes per GPU: params · bytes / (TP · PP). DP replicates, so it does not divide."""
    name, n = _params(model)
    _positive(tp=tp, pp=pp)
    return derive(f"weights per GPU of {name}", n * bytes_per_param / (tp * pp), "bytes",
                  "params · bytes_per_param / (tp · pp)", f"{n:,.0f} · {bytes_per_param:g} / ({tp} · {pp})",
                  {"params": n, "tp": tp, "pp": pp}, note="DP replicates weights; only TP and PP shard them")


def memory_per_gpu_3d(
    model: ModelSpec | str | float, tp: int, pp: int, dp: int, zero_stage: int = ZERO_STAGE_DEFAULT,
    weight_bytes: float = 2, grad_bytes: float = 2, optimizer_bytes: float = 12,
) -> Result:
    """Training model state per GPU under TP × PP × DP with ZeRO over DP (activations not included:
    `training_memory.training_memory_per_gpu` adds them)."""
    _positive(tp=tp, pp=pp, dp=dp)
    r = zero_memory_per_gpu(model, dp, zero_stage, weight_bytes, grad_bytes, optimizer_bytes, tp * pp)
    return derive(f"3D-parallel model state per GPU (tp={tp}, pp={pp}, dp={dp}, ZeRO-{zero_stage})", r.value,
                  "bytes", r.formula, r.substituted, r.inputs, [r])


def global_batch_tokens(dp: int, micro_batch_seqs: int, seq_len: int, grad_accum: int = 1) -> Result:
    """Tokens per optimizer step: dp · micro_batch · seq_len · gradient-accumulation steps."""
    _positive(dp=dp, micro_batch_seqs=micro_batch_seqs, seq_len=seq_len, grad_accum=grad_accum)
    return derive("global batch", dp * micro_batch_seqs * seq_len * grad_accum, "tokens",
                  "dp · micro_batch · seq_len · grad_accum",
                  f"{dp} · {micro_batch_seqs} · {seq_len} · {grad_accum}",
                  {"dp": dp, "micro_batch_seqs": micro_batch_seqs, "seq_len": seq_len,
                   "grad_accum": grad_accum})
