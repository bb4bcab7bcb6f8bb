"""TP=1 against TP=2 on one machine: decode throughput and the time rank 0 spends in collectives.

    PYTHONPATH=. python benchmarks/tensor_parallel.py [--random-model qwen2.5-0.5b] [--threads 2]

TP=1 runs with --threads intra-op threads, TP=2 with --threads / 2 per rank (the same cores). Each
batch size B runs B requests of --prompt-len random tokens, greedy, --output-len tokens each
(ignore_eos), after a warm-up; "collectives" is rank 0's wall time inside all-reduce / gather /
broadcast (distributed/communicator.py) during the timed run.
"""

from __future__ import annotations

import argparse
import random
import time

from nanoserve import LLM, SamplingParams
from nanoserve.bench.models import build_random_model


def run(model: str, tp: int, threads: int, batches: list[int], prompt_len: int,
        output_len: int) -> list[dict]:
    llm = LLM(model, tensor_parallel_size=tp, num_cpu_threads=threads, max_model_len=1024,
              enable_prefix_caching=False)
    rows = []
    try:
        rng = random.Random(0)
        params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
        llm.generate([[rng.randrange(1000, 50000) for _ in range(8)]], SamplingParams(max_tokens=4),
                     use_tqdm=False)  # warm-up
        sink = llm.llm_engine.runner.step_sink
        for batch in batches:
            prompts = [[rng.randrange(1000, 50000) for _ in range(prompt_len)] for _ in range(batch)]
            comm_s0 = sink.comm.total.seconds if sink else 0.0
            t0 = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - t0
            comm_s = (sink.comm.total.seconds - comm_s0) if sink else 0.0
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            rows.append({"tp": tp, "threads/rank": threads, "batch": batch, "elapsed_s": elapsed,
                         "out_tok/s": tokens / elapsed, "collectives_s": comm_s,
                         "collectives_%": 100 * comm_s / elapsed})
    finally:
        llm.shutdown()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--random-model", default="qwen2.5-0.5b")
    p.add_argument("--threads", type=int, default=2, help="threads of TP=1; TP=2 gets half per rank")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    a = p.parse_args()
    model = str(build_random_model(a.random_model))
    batches = [int(b) for b in a.batches.split(",")]
    rows = run(model, 1, a.threads, batches, a.prompt_len, a.output_len)
    rows += run(model, 2, max(1, a.threads // 2), batches, a.prompt_len, a.output_len)
    print("| TP | threads/rank | batch | elapsed s | output tok/s | collectives s | collectives % |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tp']} | {r['threads/rank']} | {r['batch']} | {r['elapsed_s']:.2f} "
              f"| {r['out_tok/s']:.1f} | {r['collectives_s']:.2f} | {r['collectives_%']:.0f} |")


if __name__ == "__main__":
    main()
