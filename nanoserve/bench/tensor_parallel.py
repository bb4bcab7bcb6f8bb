"""`nanoserve bench tp`: TP=1 against TP=2 on one machine, with the time in collectives and the bytes.

TP=1 runs with --num-cpu-threads intra-op threads, TP=2 with half of them per rank (the same cores).
Each batch size B runs B requests of --input-len random tokens, greedy, --output-len tokens each
(ignore_eos), after a warm-up. "collectives" is rank 0's wall time inside all-reduce / gather /
broadcast (distributed/communicator.py) during the timed run, which includes waiting for the slower
rank. The bytes check runs one decode step of B sequences and compares the bytes rank 0 all-reduced
in the decoder layers with the planner's `tp_allreduce_bytes_per_layer` × layers.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nanoserve.bench.models import add_model_arguments

    p.add_argument("--model", default=None, help="checkpoint directory (default: the bundled demo model)")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--num-cpu-threads", type=int, default=2, help="threads of TP=1; TP=2 gets half per rank")
    p.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    add_model_arguments(p)


def measure(model: str, tp: int, threads: int, batches: list[int], input_len: int,
            output_len: int, dtype: str) -> list[dict[str, Any]]:
    from nanoserve import LLM, SamplingParams
    from nanoserve.planner.parallel import tp_allreduce_bytes_per_layer

    llm = LLM(model, tensor_parallel_size=tp, num_cpu_threads=threads, max_model_len=1024,
              enable_prefix_caching=False, dtype=dtype)
    rows = []
    try:
        rng = random.Random(0)
        vocab = llm.llm_engine.model_config.vocab_size
        hi = min(30000, vocab - 1)  # random ids clear of the low (often special) ones
        lo = min(1000, hi // 2)
        params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
        llm.generate([[rng.randrange(lo, hi) for _ in range(8)]], SamplingParams(max_tokens=4),
                     use_tqdm=False)  # warm-up
        sink = llm.llm_engine.runner.step_sink
        mc = llm.llm_engine.model_config
        for batch in batches:
            prompts = [[rng.randrange(lo, hi) for _ in range(input_len)] for _ in range(batch)]
            comm_s0 = sink.comm.total.seconds if sink else 0.0
            t0 = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - t0
            comm_s = (sink.comm.total.seconds - comm_s0) if sink else 0.0
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            row = {"tp": tp, "threads/rank": threads, "batch": batch, "elapsed_s": elapsed,
                   "out_tok/s": tokens / elapsed, "collectives_s": comm_s,
                   "collectives_%": 100 * comm_s / elapsed}
            if sink:  # the last step was a decode of `batch` sequences (equal lengths, same start)
                elem = 4 if mc.dtype == "float32" else 2
                planned = tp_allreduce_bytes_per_layer(batch, 1, mc.hidden_size, tp=tp,
                                                       bytes_per_element=elem).value * mc.num_layers
                row["layer_bytes_step"] = sink.comm.step.bytes("layer")
                row["planner_bytes_step"] = planned
            rows.append(row)
    finally:
        llm.shutdown()
    return rows


def run(args: argparse.Namespace) -> int:
    from nanoserve.bench.models import resolve_model

    model = resolve_model(args.model, args.random_model, args.random_layers)
    dtype = args.dtype
    batches = [int(b) for b in args.batch_sizes.split(",")]
    threads = args.num_cpu_threads
    rows = measure(model, 1, threads, batches, args.input_len, args.output_len, dtype)
    rows += measure(model, 2, max(1, threads // 2), batches, args.input_len, args.output_len, dtype)
    print("| TP | threads/rank | batch | elapsed s | output tok/s | collectives s | collectives % "
          "| bytes all-reduced, last decode step | planner |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        measured = f"{r['layer_bytes_step']:,}" if "layer_bytes_step" in r else "–"
        planned = f"{r['planner_bytes_step']:,.0f}" if "planner_bytes_step" in r else "–"
        print(f"| {r['tp']} | {r['threads/rank']} | {r['batch']} | {r['elapsed_s']:.2f} "
              f"| {r['out_tok/s']:.1f} | {r['collectives_s']:.2f} | {r['collectives_%']:.0f} "
              f"| {measured} | {planned} |")
    return 0
