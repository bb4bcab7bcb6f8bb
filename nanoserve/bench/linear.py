"""`nanoserve bench linear`: the decode step's linear layers alone, one path against another.

Builds distinct random bf16 weights for every linear layer of a model shape (so, as in a real step,
each weight streams from memory, not from cache), then times one pass through all of them — q/k/v
fused, o, gate/up fused, down per layer, and the lm_head — for each `cpu_linear` backend at each
batch size. The effective bandwidth is the weight bytes read divided by the time.

The backends "w8a16", "w4a16" and "w8a8" quantize the same weights (int8 per output channel; int4
symmetric in groups of 128) and time the native quantized kernels (model/quant_kernels.py) instead; every
linear, the lm_head included, is quantized, and the bytes are the packed weight's (codes and scales).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass

from nanoserve.bench.report import print_table, save_json


@dataclass
class LinearResult:
    backend: str  # requested backend
    used: str  # path actually taken (after fallbacks)
    batch: int  # activation rows per call
    step_ms: float  # median time for all linears of one decode step
    weight_bytes: int
    bandwidth_gb_s: float  # weight_bytes / step time
    gflop_s: float


def linear_shapes(spec) -> list[tuple[int, int, bool]]:
    """(out_features, in_features, has_bias) of every linear of one forward, lm_head last."""
    per_layer = [
        (spec.q_dim + 2 * spec.kv_dim, spec.hidden, spec.qkv_bias),
        (spec.hidden, spec.q_dim, spec.o_bias),
        (2 * spec.intermediate, spec.hidden, spec.mlp_bias),
        (spec.hidden, spec.intermediate, spec.mlp_bias),
    ]
    return per_layer * spec.layers + [(spec.vocab, spec.hidden, False)]


def bench_linears(
    model: str = "qwen2.5-0.5b",
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    backends: tuple[str, ...] = ("torch", "mkldnn", "avx512"),
    repeats: int = 10,
    layers: int | None = None,
    threads: int | None = None,
) -> list[LinearResult]:
    import torch

    from nanoserve.model.cpu_linear import prepare_linear
    from nanoserve.planner.models import get_model

    if threads:
        torch.set_num_threads(threads)
    spec = get_model(model)
    if layers:
        spec = spec.with_(layers=layers)
    shapes = linear_shapes(spec)
    gen = torch.Generator().manual_seed(0)
    weights = [
        (
            torch.randn(n, k, generator=gen, dtype=torch.bfloat16) * 0.02,
            torch.randn(n, generator=gen, dtype=torch.bfloat16) * 0.02 if b else None,
        )
        for n, k, b in shapes
    ]
    weight_bytes = sum(w.numel() * w.element_size() for w, _ in weights)
    results: list[LinearResult] = []
    with torch.inference_mode():
        for backend in backends:
            if backend in QUANT_BACKENDS:
                fns, nbytes = _quantized_linears(weights, backend)
                used = [backend]
            else:
                fns = [prepare_linear(w, b, backend) for w, b in weights]
                used, nbytes = sorted({f.backend for f in fns}), weight_bytes
            for m in batch_sizes:
                xs = {k: torch.randn(m, k, dtype=torch.bfloat16) for k in {k for _, k, _ in shapes}}

                _step(fns, shapes, xs)  # warm-up: page in packed weights, first-call dispatch
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    _step(fns, shapes, xs)
                    times.append(time.perf_counter() - t0)
                t = sorted(times)[len(times) // 2]
                flops = 2 * m * sum(n * k for n, k, _ in shapes)
                results.append(
                    LinearResult(
                        backend,
                        ",".join(used),
                        m,
                        t * 1e3,
                        nbytes,
                        nbytes / t / 1e9,
                        flops / t / 1e9,
                    )
                )
            del fns
    return results


QUANT_BACKENDS = ("w8a16", "w4a16", "w8a8")
INT4_GROUP_SIZE = 128


def _quantize(w, bits: int, act_quant: bool):
    """Round-to-nearest symmetric codes of a bf16 weight [N, K]: what the kernels read (speed only)."""
    import torch

    from nanoserve.model.quantization.quantized_weight import QuantizedWeight

    n, k = w.shape
    gs = k if bits == 8 else INT4_GROUP_SIZE
    g = -(-k // gs)
    wf = torch.nn.functional.pad(w.float(), (0, g * gs - k)).reshape(n, g, gs)  # [N, G, gs]
    qmax = 127 if bits == 8 else 7
    scales = (wf.abs().amax(-1) / qmax).clamp_min(1e-8)  # [N, G]
    q = torch.round(wf / scales[..., None]).clamp(-qmax, qmax).reshape(n, -1)[:, :k]  # [N, K]
    q = q.to(torch.int8) if bits == 8 else (q + 8).to(torch.uint8)
    return QuantizedWeight(q, scales, None, bits, gs, act_quant)


def _quantized_linears(weights, method: str):
    """One callable per (weight, bias) through the `method` kernel, and the packed bytes of them all."""
    from nanoserve.model import quant_kernels as qk

    if qk.load_quant_kernels() is None:
        raise SystemExit(f"{method}: quantized kernels unavailable ({qk.quant_kernels_unavailable_reason()})")
    bits = 4 if method == "w4a16" else 8
    packed = [(qk.PACKERS[method](_quantize(w, bits, method == "w8a8")), b) for w, b in weights]
    fns = [lambda x, p=p, b=b: qk.quant_linear(x, p, b) for p, b in packed]
    return fns, sum(p.nbytes for p, _ in packed)


def _step(fns, shapes, xs) -> None:
    for f, (_, k, _) in zip(fns, shapes, strict=True):
        f(xs[k])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-shape", default="qwen2.5-0.5b", help="planner preset or config.json")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--backends", default="torch,mkldnn,avx512",
                   help="cpu_linear backends, and the quantized kernels " + ",".join(QUANT_BACKENDS))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--layers", type=int, default=None, help="fewer layers for a quick run")
    # No engine here, but the same spelling as the engine's flag for the same setting.
    p.add_argument("--num-cpu-threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--save-result", default=None, metavar="FILE.json")


def run(args: argparse.Namespace) -> int:
    res = bench_linears(
        args.model_shape,
        tuple(int(b) for b in args.batch_sizes.split(",")),
        tuple(args.backends.split(",")),
        args.repeats,
        args.layers,
        args.num_cpu_threads,
    )
    print_table(
        ["backend", "used", "batch", "step ms", "GB/s", "GFLOP/s"],
        [
            [r.backend, r.used, r.batch, f"{r.step_ms:.1f}", f"{r.bandwidth_gb_s:.1f}", f"{r.gflop_s:.0f}"]
            for r in res
        ],
        title=f"linear layers of one decode step ({args.model_shape}, bf16 activations)",
    )
    if args.save_result:
        save_json(args.save_result, {"benchmark": "linear", "results": [asdict(r) for r in res]})
    return 0
