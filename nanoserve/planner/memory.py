"""Memory: weights per dtype, the KV cache and its pages, training activations, "does it fit".

Every value is in bytes (decimal GB = 1e9 where a result is converted; the seeds' "KB" of the KV cache
chapter are 1024-byte KiB, and the tests say so where it matters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.checks import positive_int
from nanoserve.planner.derivation import Result, derive
from nanoserve.planner.hardware import Hardware, get_hardware
from nanoserve.planner.models import ModelSpec, get_model
from nanoserve.planner.parallel import ZERO_STAGE_DEFAULT, zero_memory_per_gpu
from nanoserve.planner.params import param_breakdown

DTYPE_BITS: dict[str, float] = {
    "fp32": 32, "tf32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4, "nf4": 4, "fp4": 4,
}
_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
            "float8": "fp8", "e4m3": "fp8", "e5m2": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8",
            "w8a16": "int8", "w4a16": "int4", "gptq": "int4", "awq": "int4", "q4": "int4", "q8": "int8"}


def canonical_dtype(dtype: str) -> str:
    d = str(dtype).lower().replace("torch.", "")
    d = _ALIASES.get(d, d)
    if d not in DTYPE_BITS:
        raise InvalidRequestError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_BITS)}", "dtype")
    return d


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of a dtype (int4 = 0.5)."""
    return DTYPE_BITS[canonical_dtype(dtype)] / 8


# ---------------------------------------------------------------- number formats (seed 001 §30.3)

@dataclass(frozen=True)
class FloatFormat:
    name: str
    bits: int
    exponent_bits: int
    mantissa_bits: int
    max_finite: float
    min_normal: float

    @property
    def epsilon(self) -> float:
        """Gap between 1.0 and the next representable number: the format's relative precision."""
        return 2.0 ** -self.mantissa_bits


def _ieee(name: str, e: int, m: int) -> FloatFormat:
    bias = 2 ** (e - 1) - 1
    max_exp = 2 ** e - 2 - bias             # all-ones exponent is inf/NaN
    return FloatFormat(name, 1 + e + m, e, m, (2 - 2.0 ** -m) * 2.0 ** max_exp, 2.0 ** (1 - bias))


FLOAT_FORMATS: dict[str, FloatFormat] = {
    "fp32": _ieee("fp32", 8, 23),
    "bf16": _ieee("bf16", 8, 7),     # fp32's range, coarse steps: no loss scaling needed
    "fp16": _ieee("fp16", 5, 10),    # fine steps, max 65504: fp16 training needs loss scaling
    "fp8_e5m2": _ieee("fp8_e5m2", 5, 2),
    # e4m3fn (OCP) gives up inf and keeps only one NaN pattern, so its top exponent is usable: max 448
    "fp8_e4m3": FloatFormat("fp8_e4m3", 8, 4, 3, 448.0, 2.0 ** -6),
}


def mixed_precision_bytes_per_param(
    weight_dtype: str = "bf16",
    grad_dtype: str | None = None,
    optimizer: str = "adam",
    master_weights: bool = True,
) -> Result:
    """Training state per parameter: weight + gradient + optimizer (Adam: fp32 master, m, v = 12 B) = 16 B."""
    w = dtype_bytes(weight_dtype)
    g = dtype_bytes(grad_dtype or weight_dtype)
    opt_states = {"adam": 2, "adamw": 2, "sgd_momentum": 1, "sgd": 0}
    if optimizer not in opt_states:
        raise InvalidRequestError(f"optimizer must be one of {', '.join(opt_states)}", "optimizer")
    opt = 4 * opt_states[optimizer] + (4 if master_weights else 0)
    return derive("training state per parameter", w + g + opt, "bytes",
                  "weight + gradient + fp32 (master + optimizer moments)", f"{w:g} + {g:g} + {opt:g}",
                  {"weight_dtype": weight_dtype, "optimizer": optimizer, "master_weights": master_weights})


# ---------------------------------------------------------------- weights

def bytes_per_param(
    dtype: str, group_size: int | None = None, scale_dtype: str = "fp16", zero_point: bool = False,
) -> Result:
    """Storage per weight: bits/8, plus one scale (and zero-point) per `group_size` weights."""
    b = dtype_bytes(dtype)
    if group_size is None:
        bits = DTYPE_BITS[canonical_dtype(dtype)]
        return derive(f"bytes per {dtype} weight", b, "bytes", "bits / 8", f"{bits:g} / 8")
    if group_size <= 0:
        raise InvalidRequestError("group_size must be > 0", "group_size")
    s = dtype_bytes(scale_dtype) * (2 if zero_point else 1)
    return derive(
        f"bytes per {dtype} weight, groups of {group_size}", b + s / group_size, "bytes",
        "bits/8 + (scale" + (" + zero_point" if zero_point else "") + ") bytes / group_size",
        f"{b:g} + {s:g} / {group_size}", {"group_size": group_size, "scale_dtype": scale_dtype},
    )


def weight_memory(
    model: ModelSpec | str | float,
    dtype: str = "bf16",
    group_size: int | None = None,
    scale_dtype: str = "fp16",
    zero_point: bool = False,
    quantize_embeddings: bool = True,
) -> Result:
    """Bytes to hold the weights. `model` is a spec/preset or a plain parameter count.

    With `quantize_embeddings=False` (what bitsandbytes/GPTQ/AWQ checkpoints do), the embedding, the
    lm_head and the norms stay in bf16 and only the linear layers take the quantized size.
    """
    per = bytes_per_param(dtype, group_size, scale_dtype, zero_point)
    if isinstance(model, (int, float)):
        n = float(model)
        if n <= 0:
            raise InvalidRequestError("parameter count must be > 0", "params")
        return derive(f"weights in {dtype}", n * per.value, "bytes", "params · bytes_per_param",
                      f"{n:,.0f} · {per.value:g}", {"params": n, "dtype": dtype}, [per])
    m = get_model(model)
    b = param_breakdown(m)
    if quantize_embeddings or dtype_bytes(dtype) >= 2:
        return derive(f"weights of {m.name} in {dtype}", b.total * per.value, "bytes",
                      "params · bytes_per_param", f"{b.total:,} · {per.value:g}",
                      {"params": b.total, "dtype": dtype}, [per])
    kept = b.embedding + b.position_embedding + b.lm_head + b.norms + b.qk_norm
    quant = b.total - kept
    value = quant * per.value + kept * 2
    return derive(f"weights of {m.name} in {dtype} (embeddings bf16)", value, "bytes",
                  "linear_params · bytes_per_param + other_params · 2",
                  f"{quant:,} · {per.value:g} + {kept:,} · 2", {"params": b.total, "dtype": dtype}, [per])


@dataclass(frozen=True)
class Quantized:
    codes: list[int]
    scale: float
    dequantized: list[float]
    original: list[float]

    @property
    def max_abs_error(self) -> float:
        return max(abs(a - b) for a, b in zip(self.dequantized, self.original, strict=True))


def quantize_symmetric(weights: list[float], bits: int = 8) -> Quantized:
    """Per-tensor symmetric quantization: s = max|w| / (2^(b-1) − 1), q = round(w / s), ŵ = s·q."""
    if not weights:
        raise InvalidRequestError("weights must not be empty", "weights")
    if not 2 <= bits <= 16:
        raise InvalidRequestError("bits must be in 2..16", "bits")
    qmax = 2 ** (bits - 1) - 1
    amax = max(abs(w) for w in weights)
    scale = amax / qmax if amax > 0 else 1.0
    codes = [int(round(w / scale)) for w in weights]
    return Quantized(codes, scale, [c * scale for c in codes], list(weights))


# ---------------------------------------------------------------- KV cache

def _kv_shape(model: ModelSpec | str | None, layers: int | None, kv_heads: int | None,
              head_dim: int | None) -> tuple[str, int, int, int]:
    if model is not None:
        m = get_model(model)
        name = m.name
        # an explicit 0 is an error below, not "use the preset's" (only None means that)
        layers = m.layers if layers is None else layers
        kv_heads = m.kv_heads if kv_heads is None else kv_heads
        head_dim = m.head_dim if head_dim is None else head_dim
    else:
        name = "model"
    if layers is None or kv_heads is None or head_dim is None:
        raise InvalidRequestError("give a model, or layers, kv_heads and head_dim", "model")
    layers, kv_heads, head_dim = (positive_int(k, v) for k, v in
                                  (("layers", layers), ("kv_heads", kv_heads), ("head_dim", head_dim)))
    return name, layers, kv_heads, head_dim


def kv_cache_per_token(
    model: ModelSpec | str | None = None, *, layers: int | None = None, kv_heads: int | None = None,
    head_dim: int | None = None, kv_dtype: str = "bf16", scale_bytes: float = 0,
) -> Result:
    """2 (K and V) · layers · kv_heads · head_dim · bytes. GQA-correct: kv_heads, not attention heads.

    scale_bytes: a quantized cache's scale bytes per token per kv head, for K and for V each (the
    engine's int8 / fp8_e4m3 cache: one float32 scale, 4)."""
    name, L, kv, hd = _kv_shape(model, layers, kv_heads, head_dim)
    b = dtype_bytes(kv_dtype)
    if scale_bytes < 0:
        raise InvalidRequestError("scale_bytes must be >= 0", "scale_bytes")
    inputs = {"layers": L, "kv_heads": kv, "head_dim": hd, "kv_dtype": kv_dtype}
    if not scale_bytes:
        return derive(f"KV cache per token of {name}", 2 * L * kv * hd * b, "bytes",
                      "2 · layers · kv_heads · head_dim · bytes_per_element",
                      f"2 · {L} · {kv} · {hd} · {b:g}", inputs)
    return derive(f"KV cache per token of {name}", 2 * L * kv * (hd * b + scale_bytes), "bytes",
                  "2 · layers · kv_heads · (head_dim · bytes_per_element + scale_bytes)",
                  f"2 · {L} · {kv} · ({hd} · {b:g} + {scale_bytes:g})",
                  {**inputs, "scale_bytes": scale_bytes})


def kv_cache_bytes(
    model: ModelSpec | str | None = None, *, seq_len: int, batch: int = 1, layers: int | None = None,
    kv_heads: int | None = None, head_dim: int | None = None, kv_dtype: str = "bf16", scale_bytes: float = 0,
) -> Result:
    """KV cache of `batch` sequences of `seq_len` tokens each (a request: batch=1)."""
    if seq_len < 0 or batch < 1:
        raise InvalidRequestError("seq_len must be >= 0 and batch >= 1", "seq_len")
    per = kv_cache_per_token(model, layers=layers, kv_heads=kv_heads, head_dim=head_dim, kv_dtype=kv_dtype,
                             scale_bytes=scale_bytes)
    return derive(f"KV cache for {batch} × {seq_len} tokens", per.value * seq_len * batch, "bytes",
                  "per_token · seq_len · batch", f"{per.value:,.0f} · {seq_len} · {batch}",
                  {"seq_len": seq_len, "batch": batch}, [per])


def kv_pages(seq_lens: int | list[int], block_size: int = 16) -> Result:
    """KV blocks (pages) a paged cache allocates: Σ ceil(len / block_size)."""
    if block_size <= 0:
        raise InvalidRequestError("block_size must be > 0", "block_size")
    lens = [seq_lens] if isinstance(seq_lens, int) else list(seq_lens)
    if any(n < 0 for n in lens):
        raise InvalidRequestError("sequence lengths must be >= 0", "seq_lens")
    pages = sum(math.ceil(n / block_size) for n in lens)
    if len(lens) == 1:
        sub = f"ceil({lens[0]} / {block_size})"
    elif len(set(lens)) == 1:
        sub = f"{len(lens)} · ceil({lens[0]} / {block_size})"
    else:
        sub = f"Σ ceil(len / {block_size}) over {len(lens)} sequences"
    return derive("KV pages", pages, "pages", "Σ ceil(tokens / block_size)", sub,
                  {"sequences": len(lens), "block_size": block_size})


def internal_fragmentation(tokens: int, block_size: int = 16, bytes_per_token: float | None = None) -> Result:
    """Fraction of the last page left empty; steps give the wasted slots (and bytes)."""
    pages = kv_pages(tokens, block_size)
    wasted = int(pages.value) * block_size - tokens
    steps = [pages, derive("wasted slots", wasted, "tokens", "pages · block_size − tokens",
                           f"{int(pages.value)} · {block_size} − {tokens}")]
    if bytes_per_token is not None:
        steps.append(derive("wasted bytes", wasted * bytes_per_token, "bytes",
                            "wasted_slots · bytes_per_token", f"{wasted} · {bytes_per_token:,.0f}"))
    return derive("internal fragmentation of the last page", wasted / block_size, "fraction",
                  "wasted_slots / block_size", f"{wasted} / {block_size}",
                  {"tokens": tokens, "block_size": block_size}, steps)


def expected_fragmentation(block_size: int, bytes_per_token: float, num_requests: int = 1) -> Result:
    """Mean bytes wasted in last pages when lengths are spread evenly mod block_size: (B−1)/2 slots each."""
    if block_size <= 0 or num_requests < 1:
        raise InvalidRequestError("block_size and num_requests must be positive", "block_size")
    slots = (block_size - 1) / 2
    return derive("expected internal fragmentation", slots * bytes_per_token * num_requests, "bytes",
                  "(block_size − 1)/2 · bytes_per_token · requests",
                  f"{slots:g} · {bytes_per_token:,.0f} · {num_requests}",
                  {"block_size": block_size, "requests": num_requests},
                  note="the seeds round the mean waste to block_size/2 slots")


def paged_savings(max_len: int, avg_len: int, block_size: int = 16) -> Result:
    """KV memory of preallocating max_len per request over paging avg_len (rounded up to whole pages)."""
    if avg_len <= 0 or max_len < avg_len:
        raise InvalidRequestError("need 0 < avg_len <= max_len", "avg_len")
    pages = kv_pages(avg_len, block_size)
    paged = int(pages.value) * block_size
    return derive("paged vs preallocated KV memory", max_len / paged, "×",
                  "max_len / (ceil(avg_len / block_size) · block_size)", f"{max_len} / {paged}",
                  {"max_len": max_len, "avg_len": avg_len, "block_size": block_size}, [pages])


def preallocation_waste(max_len: int, used_len: int, bytes_per_token: float) -> Result:
    """Bytes a contiguous max_len reservation wastes for a request that used used_len tokens."""
    if not 0 <= used_len <= max_len:
        raise InvalidRequestError("need 0 <= used_len <= max_len", "used_len")
    return derive("preallocation waste per request", (max_len - used_len) * bytes_per_token, "bytes",
                  "(max_len − used_len) · bytes_per_token",
                  f"({max_len} − {used_len}) · {bytes_per_token:,.0f}",
                  {"max_len": max_len, "used_len": used_len})


# ---------------------------------------------------------------- training activations

def stored_activation_bytes(batch: int, seq_len: int, hidden: int, heads: int,
                            bytes_per_element: float = 2) -> Result:
    """The simplified per-layer activation count of the scaling workbook (seed 002, 4.5): the layer
    input [b·s, d] plus the materialised attention scores [b, heads, s, s], nothing else. Use
    `activation_memory` for the full Korthikanti count; this one shows why the s² term dominates."""
    for name, v in (("batch", batch), ("seq_len", seq_len), ("hidden", hidden), ("heads", heads)):
        if v <= 0:
            raise InvalidRequestError(f"{name} must be > 0", name)
    inputs_b = batch * seq_len * hidden * bytes_per_element
    scores_b = batch * heads * seq_len * seq_len * bytes_per_element
    return derive("stored activations per layer (input + attention scores)", inputs_b + scores_b, "bytes",
                  "b·s·d·bytes + b·heads·s²·bytes",
                  f"{batch}·{seq_len}·{hidden}·{bytes_per_element:g} + {batch}·{heads}·{seq_len}²·"
                  f"{bytes_per_element:g} = {inputs_b:,.0f} + {scores_b:,.0f}",
                  {"batch": batch, "seq_len": seq_len, "hidden": hidden, "heads": heads,
                   "bytes_per_element": bytes_per_element})


def activation_memory(
    model: ModelSpec | str,
    seq_len: int,
    micro_batch: int = 1,
    recompute: str = "none",
    flash_attention: bool = False,
    tp: int = 1,
    sequence_parallel: bool = False,
    layers: int | None = None,
) -> Result:
    """Activations stored for the backward pass, per GPU, 16-bit (Korthikanti et al. 2022).

    Per layer: s·b·h·(34 + 5·a·s/h) bytes; with TP t: s·b·h·(10 + 24/t + 5·a·s/(h·t)), and with
    sequence parallelism everything divides by t. The 5·a·s²·b term (attention scores, softmax,
    dropout mask) disappears with FlashAttention or selective recomputation. Full recomputation keeps
    only each layer's input, 2·s·b·h (/t with sequence parallelism). The constants assume the textbook
    layer (MHA, 4h GELU MLP, dropout masks); GQA and SwiGLU shift them by a few percent.
    """
    m = get_model(model)
    if seq_len <= 0 or micro_batch <= 0 or tp <= 0:
        raise InvalidRequestError("seq_len, micro_batch and tp must be > 0", "seq_len")
    if recompute not in ("none", "selective", "full"):
        raise InvalidRequestError("recompute must be none, selective or full", "recompute")
    L = layers or m.layers
    s, b, h, a, t = seq_len, micro_batch, m.hidden, m.heads, tp
    sbh = s * b * h
    if recompute == "full":
        div = t if sequence_parallel else 1
        per_layer = 2 * sbh / div
        formula = "layers · 2·s·b·h" + ("/t" if sequence_parallel else "")
        sub = f"{L} · 2·{s}·{b}·{h}" + (f"/{t}" if sequence_parallel else "")
    else:
        keep_scores = not (flash_attention or recompute == "selective")
        scores = 5 * a * s / h if keep_scores else 0.0
        score_txt = f" + 5·{a}·{s}/{h}" if keep_scores else ""
        if sequence_parallel:
            per_layer = sbh * (34 + scores) / t
            formula = "layers · s·b·h·(34" + (" + 5·a·s/h" if keep_scores else "") + ")/t"
            sub = f"{L} · {s}·{b}·{h}·(34{score_txt})/{t}"
        else:
            per_layer = sbh * (10 + 24 / t + scores / t)
            formula = "layers · s·b·h·(10 + 24/t" + (" + 5·a·s/(h·t)" if keep_scores else "") + ")"
            sub = f"{L} · {s}·{b}·{h}·(10 + 24/{t}" + (f" + 5·{a}·{s}/({h}·{t})" if keep_scores else "") + ")"
    return derive(f"activation memory of {m.name}", L * per_layer, "bytes", formula, sub,
                  {"seq_len": s, "micro_batch": b, "recompute": recompute, "flash_attention": flash_attention,
                   "tp": t, "sequence_parallel": sequence_parallel, "layers": L},
                  note="Korthikanti et al. 2022 per-layer constants; 16-bit activations")


# ---------------------------------------------------------------- does it fit (seed 001 §30.7)

@dataclass(frozen=True)
class MemoryEstimate:
    per_gpu: Result                  # bytes needed on each GPU
    capacity_bytes: float
    breakdown: dict[str, float]      # bytes per GPU by item, for tables and bar charts

    @property
    def fits(self) -> bool:
        return self.per_gpu.value <= self.capacity_bytes

    @property
    def headroom_bytes(self) -> float:
        return self.capacity_bytes - self.per_gpu.value

    def to_dict(self) -> dict[str, Any]:
        return {"per_gpu": self.per_gpu.to_dict(), "capacity_bytes": self.capacity_bytes,
                "fits": self.fits, "headroom_bytes": self.headroom_bytes, "breakdown": dict(self.breakdown)}


def quick_fit(params: float, bytes_per_param: float, n_gpu: int = 1, gpu_bytes: float | Hardware | str = 80e9,
              overhead_bytes: float = 4e9) -> MemoryEstimate:
    """The one-minute check: params · bytes_per_param / n_gpu + overhead ≤ GPU memory?

    `gpu_bytes` is a size, or a Hardware / preset name (its memory), like every planner function
    that takes hardware."""
    if isinstance(gpu_bytes, (Hardware, str)):
        gpu_bytes = get_hardware(gpu_bytes).hbm_bytes
    n_gpu = positive_int("n_gpu", n_gpu)
    if params <= 0 or bytes_per_param <= 0 or n_gpu < 1:
        raise InvalidRequestError("params, bytes_per_param and n_gpu must be positive", "params")
    state = params * bytes_per_param / n_gpu
    verdict = "fits" if state + overhead_bytes <= gpu_bytes else "does not fit"
    r = derive("memory per GPU", state + overhead_bytes, "bytes",
               "params · bytes_per_param / n_gpu + overhead",
               f"{params:,.0f} · {bytes_per_param:g} / {n_gpu} + {overhead_bytes:,.0f}",
               {"params": params, "bytes_per_param": bytes_per_param, "n_gpu": n_gpu},
               note=f"{verdict} in {gpu_bytes / 1e9:g} GB")
    return MemoryEstimate(r, gpu_bytes, {"model state": state, "overhead": overhead_bytes})


def memory_estimate(
    model: ModelSpec | str,
    hardware: Hardware | str = "h100",
    *,
    mode: str = "inference",
    weight_dtype: str = "bf16",
    group_size: int | None = None,
    quantize_embeddings: bool = True,
    kv_dtype: str | None = None,
    seq_len: int = 0,
    batch: int = 1,
    n_gpu: int = 1,
    zero_stage: int = ZERO_STAGE_DEFAULT,
    recompute: str = "full",
    flash_attention: bool = True,
    overhead_bytes: float = 4e9,
) -> MemoryEstimate:
    """Per-GPU memory of serving (weights + KV, split over n_gpu by tensor parallelism) or of training
    (16 B/param mixed-precision Adam state sharded by ZeRO `zero_stage` over n_gpu data-parallel GPUs,
    plus activations of `batch` sequences of `seq_len` per GPU), plus a fixed overhead (CUDA context,
    allocator slack, workspace)."""
    m = get_model(model)
    hw = get_hardware(hardware)
    if n_gpu < 1:
        raise InvalidRequestError("n_gpu must be >= 1", "n_gpu")
    steps: list[Result] = []
    breakdown: dict[str, float] = {}
    if mode == "inference":
        w = weight_memory(m, weight_dtype, group_size, quantize_embeddings=quantize_embeddings)
        kv = kv_cache_bytes(m, seq_len=seq_len, batch=batch, kv_dtype=kv_dtype or "bf16")
        steps += [w, kv]
        # beyond kv_heads GPUs, tensor parallelism replicates KV heads instead of splitting them
        breakdown = {"weights": w.value / n_gpu, "kv cache": kv.value / min(n_gpu, m.kv_heads)}
    elif mode == "training":
        state = zero_memory_per_gpu(param_breakdown(m).total, n_gpu, zero_stage)
        steps.append(state)
        breakdown = {"model state": state.value}
        if seq_len:
            act = activation_memory(m, seq_len, batch, recompute=recompute, flash_attention=flash_attention)
            steps.append(act)
            breakdown["activations"] = act.value
    else:
        raise InvalidRequestError("mode must be inference or training", "mode")
    breakdown["overhead"] = overhead_bytes
    total = sum(breakdown.values())
    r = derive(f"{mode} memory per GPU of {m.name} on {hw.name}", total, "bytes",
               " + ".join(breakdown), " + ".join(f"{v / 1e9:.3g} GB" for v in breakdown.values()),
               {"n_gpu": n_gpu, "hbm_bytes": hw.hbm_bytes}, steps,
               note=f"{'fits' if total <= hw.hbm_bytes else 'does not fit'} in {hw.hbm_bytes / 1e9:g} GB")
    return MemoryEstimate(r, hw.hbm_bytes, breakdown)
