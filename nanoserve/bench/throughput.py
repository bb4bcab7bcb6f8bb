"""`nanoserve bench throughput`: offline throughput of nanoserve against the transformers baselines.

Every backend gets the same requests (random prompt token ids, vLLM's `random` lengths, greedy,
ignore_eos) in the same run, so the ratios hold even on a noisy shared machine. Throughput follows
vLLM's `bench throughput`: requests/s = N / elapsed, output tok/s = generated tokens / elapsed,
total tok/s = (prompt + generated tokens) / elapsed, with elapsed the wall time of generation alone
(model loading and a small warm-up excluded; load time is reported separately).

`nanoserve:<method>` runs nanoserve with `--quantization <method>` (`nanoserve:none` unquantized), so
several methods share one run; `llama.cpp[:bf16|q8_0|q4_0]` is llama-cpp-python on GGUFs of the same
checkpoint (nanoserve/bench/llamacpp_backend.py: requests one at a time, its only mode).
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from nanoserve.bench.dataset import BenchRequest, random_requests, token_counts
from nanoserve.bench.report import print_table, save_json

BACKENDS = ("nanoserve", "nanoserve:<method>", "hf", "hf-batched", "llama.cpp", "llama.cpp:<type>")


@dataclass
class ThroughputResult:
    backend: str
    num_requests: int
    prompt_tokens: int
    output_tokens: int  # tokens generated and returned (= requested, with ignore_eos)
    elapsed_s: float
    load_s: float
    requests_per_s: float
    output_tok_per_s: float
    total_tok_per_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def _result(
    backend: str,
    requests: list[BenchRequest],
    outputs: list[list[int]],
    elapsed_s: float,
    load_s: float,
    **extra: Any,
) -> ThroughputResult:
    prompt_tokens, _ = token_counts(requests)
    out_tokens = sum(len(o) for o in outputs)
    return ThroughputResult(
        backend,
        len(requests),
        prompt_tokens,
        out_tokens,
        elapsed_s,
        load_s,
        len(requests) / elapsed_s,
        out_tokens / elapsed_s,
        (prompt_tokens + out_tokens) / elapsed_s,
        dict(extra),
    )


def _warmup_prompt(requests: list[BenchRequest]) -> list[int]:
    """16 tokens unlike any request's prefix, so the warm-up leaves nothing in the prefix cache."""
    ids = requests[0].prompt_token_ids
    return [ids[-1]] * 16 if ids[0] != ids[-1] else [ids[0] + 1] * 16


def run_nanoserve(
    model_dir: str,
    requests: list[BenchRequest],
    engine_kwargs: dict[str, Any],
    profile: bool = False,
    progress: bool = False,
    warmup: bool = True,
):
    """Returns (ThroughputResult, StepProfiler | None)."""
    from nanoserve import LLM, SamplingParams
    from nanoserve.bench.linear_paths import linear_paths, quantization_report
    from nanoserve.bench.profile import StepProfiler

    t0 = time.perf_counter()
    llm = LLM(model=model_dir, **engine_kwargs)
    load_s = time.perf_counter() - t0
    paths = linear_paths(llm.llm_engine)
    weights = quantization_report(llm.llm_engine)
    if warmup:  # first calls pay one-off costs (kernel selection, allocator growth)
        llm.generate(
            [{"prompt_token_ids": _warmup_prompt(requests)}],
            SamplingParams(max_tokens=4, ignore_eos=True, temperature=0.0),
            use_tqdm=False,
        )
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [SamplingParams(max_tokens=r.output_len, ignore_eos=True, temperature=0.0) for r in requests]
    profiler = StepProfiler().attach(llm.llm_engine) if profile else None
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=progress)
    elapsed = time.perf_counter() - start
    if profiler is not None:
        profiler.detach()
    outputs = [o.outputs[0].token_ids for o in outs]
    stats = llm.llm_engine.get_stats()
    res = _result(
        "nanoserve",
        requests,
        outputs,
        elapsed,
        load_s,
        num_preemptions=stats.num_preemptions,
        prefix_cache_hits=stats.prefix_cache_hits,
        linear_paths=paths,
        **weights,
    )
    del llm
    gc.collect()
    return res, profiler


def run_hf_backend(
    backend: str,
    model_dir: str,
    requests: list[BenchRequest],
    hf_batch_size: int,
    dtype: str,
    progress: bool = False,
    warmup: bool = True,
) -> ThroughputResult:
    from nanoserve.bench.baselines import run_hf

    batch = 1 if backend == "hf" else hf_batch_size
    if warmup:
        run_hf(model_dir, [BenchRequest(_warmup_prompt(requests), 4)], 1, dtype)
    run = run_hf(model_dir, requests, batch, dtype, progress)
    gc.collect()
    return _result(backend, requests, run.output_token_ids, run.elapsed_s, run.load_s, batch_size=batch)


def run_llamacpp_backend(
    backend: str,
    model_dir: str,
    requests: list[BenchRequest],
    threads: int,
    converter: str | None = None,
    progress: bool = False,
    warmup: bool = True,
) -> ThroughputResult:
    from nanoserve.bench.llamacpp_backend import gguf_type_of, run_llamacpp

    run = run_llamacpp(model_dir, requests, gguf_type_of(backend), threads, converter, progress, warmup)
    gc.collect()
    return _result(backend, requests, run.output_token_ids, run.elapsed_s, run.load_s,
                   mode=run.mode, gguf=run.gguf_path, threads=run.threads)


def nanoserve_method_kwargs(backend: str, engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`nanoserve:<method>`: the engine flags with quantization = method (`none`: unquantized). An
    unquantized row drops `quantization_lm_head` (it only qualifies a method), so one command can time
    bf16 beside int8 with its lm_head quantized."""
    kwargs = dict(engine_kwargs)
    if ":" in backend:
        method = backend.split(":", 1)[1]
        kwargs["quantization"] = None if method == "none" else method
    if kwargs.get("quantization") is None:
        kwargs.pop("quantization_lm_head", None)
    return kwargs


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_benchmark(
    model_dir: str,
    requests: list[BenchRequest],
    backends: list[str],
    *,
    engine_kwargs=None,
    hf_batch_size: int = 8,
    dtype: str = "auto",
    profile: bool = False,
    progress: bool = False,
    warmup: bool = True,
    llama_cpp_converter: str | None = None,
) -> tuple[list[ThroughputResult], Any]:
    results: list[ThroughputResult] = []
    profiler = None
    for backend in backends:
        if backend == "nanoserve" or backend.startswith("nanoserve:"):
            kwargs = nanoserve_method_kwargs(backend, engine_kwargs or {"dtype": dtype})
            res, prof = run_nanoserve(model_dir, requests, kwargs, profile, progress, warmup)
            res.backend = backend
            profiler = profiler or prof
        elif backend.startswith("llama.cpp:"):
            res = run_llamacpp_backend(backend, model_dir, requests, _threads(), llama_cpp_converter,
                                       progress, warmup)
        elif backend in ("hf", "hf-batched"):
            res = run_hf_backend(backend, model_dir, requests, hf_batch_size, dtype, progress, warmup)
        else:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        results.append(res)
    return results, profiler


def _is_ours(backend: str) -> bool:
    return backend == "nanoserve" or backend.startswith("nanoserve:")


def ratios(results: list[ThroughputResult]) -> dict[str, float]:
    """Output tok/s of each nanoserve row ÷ each other backend's."""
    return {
        f"{ours.backend}/{r.backend}": ours.output_tok_per_s / r.output_tok_per_s
        for ours in results
        if _is_ours(ours.backend)
        for r in results
        if not _is_ours(r.backend) and r.output_tok_per_s > 0
    }


def print_results(results: list[ThroughputResult]) -> None:
    rows = [
        [
            r.backend,
            r.num_requests,
            r.prompt_tokens,
            r.output_tokens,
            f"{r.elapsed_s:.2f}",
            f"{r.requests_per_s:.3f}",
            f"{r.output_tok_per_s:.1f}",
            f"{r.total_tok_per_s:.1f}",
            f"{r.load_s:.1f}",
        ]
        for r in results
    ]
    print_table(
        [
            "backend",
            "requests",
            "prompt tok",
            "output tok",
            "elapsed s",
            "req/s",
            "output tok/s",
            "total tok/s",
            "load s",
        ],
        rows,
        title="offline throughput",
    )
    for r in results:
        if "mode" in r.extra:
            print(f"{r.backend}: {r.extra['mode']}, {r.extra['threads']} threads")
    for name, value in ratios(results).items():
        print(f"{name} (output tok/s): {value:.2f}x")
    from nanoserve.bench.linear_paths import describe_quantization

    for r in results:
        if "weight_bytes" in r.extra:  # nanoserve's: which weights the figures are for
            print(f"{r.backend} {describe_quantization(r.extra)}")


def add_llamacpp_arguments(p: argparse.ArgumentParser) -> None:
    """The llama.cpp backend's options (bench throughput and latency)."""
    p.add_argument("--llama-cpp-types", default="bf16,q8_0,q4_0",
                   help="GGUF types the `llama.cpp` backend runs, comma-separated (default: %(default)s)")
    p.add_argument("--llama-cpp-converter", default=None, metavar="PATH",
                   help="llama.cpp's convert_hf_to_gguf.py (default: $NANOSERVE_LLAMA_CPP_CONVERTER, else "
                   "the installed llama-cpp-python's sdist, downloaded once into the cache)")


def parse_backends(spec: str, llama_cpp_types: str) -> list[str]:
    """The --backend list, `llama.cpp` expanded to one backend per type; SystemExit on an unknown one."""
    from nanoserve.bench.llamacpp_backend import expand_backends
    from nanoserve.errors import NanoserveError

    backends = [b.strip() for b in spec.split(",") if b.strip()]
    types = [t.strip() for t in llama_cpp_types.split(",") if t.strip()]
    try:
        backends = expand_backends(backends, types)
    except NanoserveError as e:
        raise SystemExit(f"--backend: {e}") from None
    known = ("nanoserve", "hf", "hf-batched")
    unknown = [b for b in backends if b not in known and not b.startswith(("nanoserve:", "llama.cpp:"))]
    if unknown or not backends:
        raise SystemExit(f"--backend: unknown {unknown}; choose from {', '.join(BACKENDS)}")
    return backends


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nanoserve.bench.engine_flags import add_engine_arguments

    p.add_argument(
        "--backend",
        default="nanoserve,hf,hf-batched",
        help=f"comma-separated, several in one run: {', '.join(BACKENDS)}",
    )
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=None,
                   help="prompt tokens (default: 128, or what fits the model's context)")
    p.add_argument("--output-len", type=int, default=None,
                   help="output tokens (default: 128, or what fits the model's context)")
    p.add_argument(
        "--range-ratio",
        type=float,
        default=0.0,
        help="lengths uniform in [L·(1−r), L·(1+r)] (vLLM's --random-range-ratio)",
    )
    p.add_argument("--input-range-ratio", type=float, default=None, help="--range-ratio for inputs")
    p.add_argument("--output-range-ratio", type=float, default=None, help="--range-ratio for outputs")
    p.add_argument("--hf-batch-size", type=int, default=8, help="static batch size of the hf-batched backend")
    add_llamacpp_arguments(p)
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument(
        "--profile",
        action="store_true",
        help="time each engine step: schedule, prepare, forward (linear/attention/fused native step/"
        "other), sample, output processing",
    )
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--save-result", default=None, metavar="FILE.json")
    # --seed also seeds the random prompts; --dtype and --num-cpu-threads apply to the hf backends too.
    add_engine_arguments(p)


def run(args: argparse.Namespace) -> int:
    from nanoserve.bench.engine_flags import engine_kwargs
    from nanoserve.bench.models import resolve_model, special_token_ids, vocab_size

    backends = parse_backends(args.backend, args.llama_cpp_types)
    if args.num_cpu_threads:
        import torch

        torch.set_num_threads(args.num_cpu_threads)
    model_dir = resolve_model(args.model, args.random_model, args.random_layers)
    from nanoserve.bench.fit import LengthError, context_len, fit_lengths

    ratio = args.range_ratio
    try:
        input_len, output_len = fit_lengths(
            args.input_len, args.output_len, context_len(model_dir, args.max_model_len),
            ratio if args.input_range_ratio is None else args.input_range_ratio,
            ratio if args.output_range_ratio is None else args.output_range_ratio)
    except LengthError as e:
        raise SystemExit(f"bench throughput: {e}") from None
    requests = random_requests(
        args.num_prompts,
        input_len,
        output_len,
        vocab_size(model_dir),
        args.range_ratio,
        args.input_range_ratio,
        args.output_range_ratio,
        args.seed,
        special_token_ids(model_dir),
    )
    n_in, n_out = token_counts(requests)
    print(
        f"model {model_dir}: {len(requests)} requests, {n_in} prompt tokens, {n_out} output tokens "
        f"(input {min(r.prompt_len for r in requests)}–{max(r.prompt_len for r in requests)}, "
        f"output {min(r.output_len for r in requests)}–{max(r.output_len for r in requests)})"
    )
    results, profiler = run_benchmark(
        model_dir,
        requests,
        backends,
        engine_kwargs=engine_kwargs(args, model_dir),
        hf_batch_size=args.hf_batch_size,
        dtype=args.dtype,
        profile=args.profile,
        progress=args.progress,
        warmup=not args.no_warmup,
        llama_cpp_converter=args.llama_cpp_converter,
    )
    print_results(results)
    spec_results = []
    if args.speculative_config and "nanoserve" in backends:  # the same requests with speculation off
        from nanoserve import SamplingParams
        from nanoserve.bench.spec import compare_on_off

        spec_results = compare_on_off(
            model_dir, engine_kwargs(args, model_dir), "throughput",
            [{"prompt_token_ids": r.prompt_token_ids} for r in requests],
            [SamplingParams(max_tokens=r.output_len, ignore_eos=True, temperature=0.0) for r in requests],
        )
    summaries = []
    if profiler is not None:
        from nanoserve.bench.profile import print_profile

        summaries = profiler.summary()
        print()
        print_profile(summaries)
    if args.save_result:
        save_json(
            args.save_result,
            {
                "benchmark": "throughput",
                "model": model_dir,
                "args": vars(args),
                "results": [asdict(r) for r in results],
                "ratios": ratios(results),
                "profile": [asdict(s) for s in summaries],
                "speculative": [c.as_dict() for c in spec_results],
            },
        )
    return 0
