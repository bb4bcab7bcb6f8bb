"""Batch-1 decode tok/s on SmolLM2-135M-Instruct: nanoserve (bf16 folder; the Q4_1 .gguf kept 4-bit) beside
llama.cpp (llama-cpp-python, the extra `llamacpp`) on the same Q4_1 .gguf.

    nanoserve fetch smollm2 && REPS=3 python benchmarks/smollm2_batch1.py

Same 128-token prompt, 128 greedy tokens with EOS ignored, 2 threads each, the engines alternating, best
of REPS. nanoserve's rate is (tokens after the first) / (last token time - first token time).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nanoserve import LLM, SamplingParams

torch.set_num_threads(2)
CACHE = Path(os.environ.get("NANOSERVE_CACHE", Path.home() / ".cache" / "nanoserve"))
GGUF = str(CACHE / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf")
FOLDER = str(CACHE / "models" / "smollm2-135m-instruct")
N_OUT, REPS = 128, int(os.environ.get("REPS", "3"))
PROMPT_IDS = list(range(100, 228))  # 128 prompt tokens


def nanoserve_rate(llm: LLM) -> float:
    params = SamplingParams(max_tokens=N_OUT, temperature=0, ignore_eos=True)
    out = llm.generate([{"prompt_token_ids": PROMPT_IDS}], params, use_tqdm=False)[0]
    m = out.metrics  # monotonic timestamps
    return (len(out.outputs[0].token_ids) - 1) / (m.last_token_time - m.first_token_time)


def llama_cpp_rate(llm) -> float:
    import time

    llm.reset()
    llm.eval(PROMPT_IDS)
    t0, n = time.perf_counter(), 0
    for _ in llm.generate([], temp=0.0, reset=False):
        n += 1
        if n >= N_OUT:
            break
    return (n - 1) / (time.perf_counter() - t0)


def main() -> None:
    from llama_cpp import Llama

    engines = {
        "nanoserve bf16 (folder)": (LLM(FOLDER, dtype="bfloat16", num_cpu_threads=2), nanoserve_rate),
        "nanoserve Q4_1 gguf (bf16)": (LLM(GGUF, dtype="bfloat16", num_cpu_threads=2), nanoserve_rate),
        "llama.cpp Q4_1 gguf": (Llama(GGUF, n_threads=2, n_ctx=512, verbose=False), llama_cpp_rate),
    }
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(REPS):
        for name, (engine, rate) in engines.items():
            rates[name].append(rate(engine))
    for name, values in rates.items():
        print(f"{name:40s} best {max(values):6.1f} tok/s  all {[round(v, 1) for v in values]}")


if __name__ == "__main__":
    main()
