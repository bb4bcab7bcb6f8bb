"""The llama.cpp baseline of `bench throughput | latency`: llama-cpp-python on GGUFs of the same checkpoint.

Backends are spelled `llama.cpp:<type>` with type bf16 | q8_0 | q4_0 (`llama.cpp` alone: every type of
`--llama-cpp-types`); the GGUFs come from `llamacpp_gguf.ensure_gguf`. llama.cpp gets the thread count
nanoserve gets (`--num-cpu-threads`, else torch's), for prompt and generation alike.

What it measures, honestly labelled: llama-cpp-python's high-level API decodes one sequence at a time
(no continuous batching), so a throughput run is the requests one after another (mode "sequential");
its batch-1 figures are llama.cpp's real single-sequence speed. Generation is greedy (temp 0, no
repeat penalty) and ignores EOS: exactly `output_len` tokens per request, as for nanoserve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from nanoserve.bench.dataset import BenchRequest
from nanoserve.bench.llamacpp_gguf import GGUF_TYPES, LlamaCppError, ensure_gguf
from nanoserve.extras import require

PREFIX = "llama.cpp"
SEQUENTIAL = "sequential: one request at a time (llama-cpp-python has no batching API)"


def is_llamacpp(backend: str) -> bool:
    return backend == PREFIX or backend.startswith(PREFIX + ":")


def expand_backends(backends: list[str], types: list[str]) -> list[str]:
    """`llama.cpp` becomes one `llama.cpp:<type>` per type; a type of an explicit spelling is checked."""
    out: list[str] = []
    for b in backends:
        if b == PREFIX:
            out += [f"{PREFIX}:{t}" for t in types]
        else:
            out.append(b)
    for b in out:
        if is_llamacpp(b) and b.split(":", 1)[1] not in GGUF_TYPES:
            raise LlamaCppError(f"backend {b!r}: llama.cpp types are {', '.join(GGUF_TYPES)}")
    return out


def gguf_type_of(backend: str) -> str:
    return backend.split(":", 1)[1]


@dataclass
class LlamaCppRun:
    elapsed_s: float
    output_token_ids: list[list[int]]  # per request, in input order
    load_s: float  # GGUF load only (conversion, cached, is not timed)
    gguf_path: str
    threads: int
    mode: str = SEQUENTIAL


def load_llama(gguf_path: str, n_ctx: int, threads: int):
    llama_cpp = require("llama_cpp", "the llama.cpp benchmark backend")
    return llama_cpp.Llama(
        model_path=str(gguf_path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
        verbose=False, seed=0,
    )


def generate(llm: Any, prompt_ids: list[int], output_len: int) -> tuple[list[int], float, float]:
    """(tokens, TTFT s, TPOT s) of one greedy request of exactly `output_len` tokens on a fresh state."""
    llm.reset()  # no prefix reuse between requests: each prompt is prefilled in full
    tokens: list[int] = []
    times: list[float] = []
    t0 = time.perf_counter()
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        tokens.append(int(tok))
        times.append(time.perf_counter())
        if len(tokens) == output_len:
            break
    ttft = times[0] - t0
    tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
    return tokens, ttft, tpot


def context_for(requests: list[BenchRequest]) -> int:
    """n_ctx: the longest request (prompt + output), rounded up to a multiple of 256."""
    longest = max(r.prompt_len + r.output_len for r in requests)
    return -(-longest // 256) * 256


def run_llamacpp(
    model_dir: str,
    requests: list[BenchRequest],
    gguf_type: str,
    threads: int,
    converter: str | None = None,
    progress: bool = False,
    warmup: bool = True,
) -> LlamaCppRun:
    path = ensure_gguf(model_dir, gguf_type, converter, threads)
    t0 = time.perf_counter()
    llm = load_llama(str(path), context_for(requests), threads)
    load_s = time.perf_counter() - t0
    if warmup:
        generate(llm, requests[0].prompt_token_ids[:16], 4)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(requests), desc=f"llama.cpp {gguf_type}", unit="req")
    outputs: list[list[int]] = []
    start = time.perf_counter()
    for r in requests:
        outputs.append(generate(llm, r.prompt_token_ids, r.output_len)[0])
        if bar is not None:
            bar.update(1)
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.close()
    llm.close()
    return LlamaCppRun(elapsed, outputs, load_s, str(path), threads)
