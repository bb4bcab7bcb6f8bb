"""`nanoserve bench latency`: batch-1 TTFT and TPOT against prompt length, with a PNG plot.

One request at a time, for each prompt length, `--num-iters` times with fresh random prompts (prefix
caching off, so no run reuses another's KV): TTFT grows with the prompt (prefill is compute-bound,
~2N FLOPs per prompt token), TPOT stays nearly flat (each decode step streams the weights once;
only the KV read grows with the context). Medians are reported. The backends alternate prompt by
prompt (measure), and each backend's TPOT is also given relative to the first backend's on the same
prompts: the ratio that survives the machine's drift.

nanoserve's figures come from its own request metrics (arrival → first token, mean gap after it);
the `hf` baseline's from transformers `generate`: TTFT = time of a 1-token generate, TPOT = the
extra time of an `--output-len`-token generate per extra token. `llama.cpp[:bf16|q8_0|q4_0]` times
llama-cpp-python's token stream the same way (first token, mean gap after it) on GGUFs of the same
checkpoint, with nanoserve's thread count; `nanoserve:<method>` is nanoserve with that quantization.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from nanoserve.bench.dataset import random_requests
from nanoserve.bench.report import print_table, save_json
from nanoserve.extras import require


@dataclass
class LatencyPoint:
    backend: str
    prompt_len: int
    output_len: int
    ttft_ms: float  # median over iterations
    tpot_ms: float  # median over iterations
    ttft_all_ms: list[float]
    tpot_all_ms: list[float]
    weights: dict[str, Any] | None = None  # nanoserve: linear_paths.quantization_report (what was timed)
    # Median over the prompts of this backend's TPOT / the first backend's on the same prompt, run
    # back to back (see measure): > 1 is slower than the first backend.
    tpot_vs_first: float | None = None


def nanoserve_latency(llm, prompt_ids: list[int], output_len: int) -> tuple[float, float]:
    """(TTFT s, TPOT s) of one request alone on the engine."""
    from nanoserve import SamplingParams

    out = llm.generate(
        [{"prompt_token_ids": prompt_ids}],
        SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0.0),
        use_tqdm=False,
    )[0]
    m = out.metrics
    return m.ttft_s, m.tpot_s if m.tpot_s is not None else 0.0


def hf_latency(model, prompt_ids: list[int], output_len: int) -> tuple[float, float]:
    """(TTFT s, TPOT s) of one transformers `generate`, timed per token by a streamer."""
    import torch

    from nanoserve.bench.baselines import _generate

    class _Clock:  # generate calls put() with the prompt first, then once per new token
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    ids = torch.tensor([prompt_ids])
    clock = _Clock()
    with torch.inference_mode():
        t0 = time.perf_counter()
        _generate(model, ids, torch.ones_like(ids), output_len, streamer=clock)
    tokens = clock.times[1:]  # [0] is the prompt
    ttft = tokens[0] - t0
    tpot = (tokens[-1] - tokens[0]) / (len(tokens) - 1) if len(tokens) > 1 else 0.0
    return ttft, tpot


@dataclass
class _Backend:
    name: str
    runner: Any
    # (runner, prompt ids, output len) -> (TTFT s, TPOT s)
    fn: Callable[[Any, list[int], int], tuple[float, float]]
    weights: dict[str, Any] | None


def _load_backend(
    backend: str, model_dir: str, max_len: int, engine_kwargs: dict[str, Any], llama_cpp_converter: str | None
) -> _Backend:
    if backend == "nanoserve" or backend.startswith("nanoserve:"):
        from nanoserve import LLM
        from nanoserve.bench.linear_paths import quantization_report
        from nanoserve.bench.throughput import nanoserve_method_kwargs

        llm = LLM(model=model_dir, **nanoserve_method_kwargs(backend, engine_kwargs))
        return _Backend(backend, llm, nanoserve_latency, quantization_report(llm.llm_engine))
    if backend.startswith("llama.cpp:"):
        import torch

        from nanoserve.bench.llamacpp_backend import generate, gguf_type_of, load_llama
        from nanoserve.bench.llamacpp_gguf import ensure_gguf

        threads = torch.get_num_threads()
        path = ensure_gguf(model_dir, gguf_type_of(backend), llama_cpp_converter, threads)
        llama = load_llama(str(path), -(-max_len // 256) * 256, threads)
        return _Backend(backend, llama, lambda llm, ids, n: generate(llm, ids, n)[1:], None)
    if backend == "hf":
        from nanoserve.bench.baselines import load_hf_model

        model = load_hf_model(model_dir, engine_kwargs.get("dtype", "auto"))
        return _Backend(backend, model, hf_latency, None)
    raise ValueError(f"unknown backend {backend!r}; choose nanoserve[:<method>], hf or llama.cpp[:<type>]")


def measure(
    model_dir: str,
    backends: list[str],
    input_lens: list[int],
    output_len: int,
    num_iters: int,
    engine_kwargs: dict[str, Any],
    seed: int = 0,
    llama_cpp_converter: str | None = None,
) -> list[LatencyPoint]:
    """`engine_kwargs`: LLM's keywords for the nanoserve backend; their dtype also loads the hf one.

    Every backend is loaded first, then each prompt goes to every backend in turn (the order rotating
    from one prompt to the next), so that all of them see the same minutes of the machine: on a shared
    box the memory bandwidth, which sets batch-1 TPOT, drifts by 10-40% between runs a minute apart,
    more than the gaps being measured when the backends ran one after another."""
    import gc

    from nanoserve.bench.models import special_token_ids, vocab_size

    vocab, special = vocab_size(model_dir), special_token_ids(model_dir)
    max_len = max(input_lens) + output_len
    loaded = [_load_backend(b, model_dir, max_len, engine_kwargs, llama_cpp_converter) for b in backends]
    warm = random_requests(1, 16, 2, vocab, seed=seed + 999, special_ids=special)[0]
    for b in loaded:
        b.fn(b.runner, warm.prompt_token_ids, 2)
    points: list[LatencyPoint] = []
    for i, n in enumerate(input_lens):
        reqs = random_requests(num_iters, n, output_len, vocab, seed=seed + 1000 * i, special_ids=special)
        ttfts: dict[str, list[float]] = {b.name: [] for b in loaded}
        tpots: dict[str, list[float]] = {b.name: [] for b in loaded}
        for j, r in enumerate(reqs):
            first = j % len(loaded)
            for b in loaded[first:] + loaded[:first]:
                ttft, tpot = b.fn(b.runner, r.prompt_token_ids, output_len)
                ttfts[b.name].append(ttft * 1e3)
                tpots[b.name].append(tpot * 1e3)
        base = tpots[loaded[0].name]
        for b in loaded:
            paired = [t / t0 for t, t0 in zip(tpots[b.name], base, strict=True) if t0 > 0]
            points.append(
                LatencyPoint(
                    b.name, n, output_len, statistics.median(ttfts[b.name]), statistics.median(tpots[b.name]),
                    ttfts[b.name], tpots[b.name], b.weights,
                    statistics.median(paired) if paired else None,
                )
            )
    del loaded
    gc.collect()
    return points


_CHART = "the latency chart (skip it with --plot '')"


def plot(points: list[LatencyPoint], path: str, title: str = "") -> None:
    matplotlib = require("matplotlib", _CHART)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for backend in dict.fromkeys(p.backend for p in points):
        ps = [p for p in points if p.backend == backend]
        xs = [p.prompt_len for p in ps]
        ax1.plot(xs, [p.ttft_ms for p in ps], marker="o", label=backend)
        ax2.plot(xs, [p.tpot_ms for p in ps], marker="o", label=backend)
    ax1.set(xlabel="prompt tokens", ylabel="TTFT (ms)", title="time to first token (batch 1)")
    ax2.set(xlabel="prompt tokens", ylabel="TPOT (ms)", title="time per output token (batch 1)")
    ax2.set_ylim(bottom=0)
    ax1.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nanoserve.bench.engine_flags import add_engine_arguments
    from nanoserve.bench.throughput import add_llamacpp_arguments

    p.add_argument("--backend", default="nanoserve",
                   help="comma-separated: nanoserve, nanoserve:<method>, hf, llama.cpp, llama.cpp:<type>")
    add_llamacpp_arguments(p)
    p.add_argument("--input-lens", default="16,64,128,256,512,1024", help="prompt lengths to sweep")
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--num-iters", type=int, default=3)
    p.add_argument("--plot", default="latency.png", metavar="FILE.png", help="'' for no plot")
    p.add_argument("--save-result", default=None, metavar="FILE.json")
    # Every measured prompt is a fresh one: a prefix-cache hit would shorten the prefill being timed.
    # --max-num-batched-tokens defaults to the longest prompt (at least 2048): one prefill step each.
    add_engine_arguments(p, enable_prefix_caching=False)


def run(args: argparse.Namespace) -> int:
    from nanoserve.bench.engine_flags import engine_kwargs
    from nanoserve.bench.models import resolve_model

    if args.num_cpu_threads:
        import torch

        torch.set_num_threads(args.num_cpu_threads)
    if args.plot:  # fail now rather than after the sweep
        require("matplotlib", _CHART)
    model_dir = resolve_model(args.model, args.random_model, args.random_layers)
    input_lens = [int(x) for x in args.input_lens.split(",")]
    if args.output_len < 2:
        raise SystemExit("--output-len must be >= 2 to measure TPOT")
    from nanoserve.bench.throughput import parse_backends

    backends = parse_backends(args.backend, args.llama_cpp_types)
    if "hf-batched" in backends:
        raise SystemExit("--backend: bench latency runs batch 1; hf-batched is a throughput backend")
    max_batched_tokens = args.max_num_batched_tokens or max(2048, max(input_lens))
    points = measure(
        model_dir,
        backends,
        input_lens,
        args.output_len,
        args.num_iters,
        engine_kwargs(args, model_dir, max_num_batched_tokens=max_batched_tokens),
        args.seed,
        args.llama_cpp_converter,
    )
    print_table(
        ["backend", "prompt tokens", "TTFT ms", "TPOT ms", "decode tok/s", f"TPOT / {backends[0]}'s"],
        [
            [
                p.backend,
                p.prompt_len,
                f"{p.ttft_ms:.1f}",
                f"{p.tpot_ms:.1f}",
                f"{1e3 / p.tpot_ms:.1f}" if p.tpot_ms else "-",
                f"{p.tpot_vs_first:.3f}" if p.tpot_vs_first is not None else "-",
            ]
            for p in points
        ],
        title=f"batch-1 latency, {args.output_len} output tokens, median of {args.num_iters}; backends "
        "alternate prompt by prompt, the last column is the median of the per-prompt TPOT ratios",
    )
    from nanoserve.bench.linear_paths import describe_quantization

    described = {p.backend: describe_quantization(p.weights) for p in points if p.weights is not None}
    for backend, line in described.items():
        print(f"{backend} {line}")
    spec_results = []
    if args.speculative_config and "nanoserve" in backends:  # each prompt length with speculation off beside
        spec_results = _spec_vs_off(args, model_dir, input_lens, max_batched_tokens)
    if args.plot:
        from nanoserve.bench.report import environment

        env = environment()
        plot(
            points,
            args.plot,
            f"{args.random_model or model_dir}"
            f"{f' ({args.random_layers} layers)' if args.random_layers else ''}"
            f" · {env['date_utc']} · {env.get('torch_threads')} threads"
            f" · cpu-linear {args.cpu_linear}"
            + "".join(f" · {line}" for line in described.values()),
        )
        print(f"plot: {args.plot}")
    if args.save_result:
        save_json(
            args.save_result,
            {
                "benchmark": "latency",
                "model": model_dir,
                "args": vars(args),
                "points": [asdict(p) for p in points],
                "speculative": [c.as_dict() for c in spec_results],
            },
        )
    return 0


def _spec_vs_off(args: argparse.Namespace, model_dir: str, input_lens: list[int], max_batched_tokens: int):
    """bench/spec.py's comparison on this benchmark's prompts, one request at a time."""
    from nanoserve import SamplingParams
    from nanoserve.bench.engine_flags import engine_kwargs
    from nanoserve.bench.models import special_token_ids, vocab_size
    from nanoserve.bench.spec import compare_on_off

    kwargs = engine_kwargs(args, model_dir, max_num_batched_tokens=max_batched_tokens, max_num_seqs=1)
    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True, temperature=0.0)
    results = []
    for i, n in enumerate(input_lens):
        reqs = random_requests(args.num_iters, n, args.output_len, vocab_size(model_dir),
                               seed=args.seed + 1000 * i, special_ids=special_token_ids(model_dir))
        prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
        results += compare_on_off(model_dir, kwargs, f"latency prompt {n}", prompts, params)
    return results
