"""Quantization on the demo model: accuracy per evaluation set with each weight method and KV-cache
dtype, and how many greedy replies stay identical to the unquantized model's (issue #12's quality check).

    python scripts/eval_demo_quantized.py                          # fp32 (the checkpoint's), 2,000 per set
    python scripts/eval_demo_quantized.py --dtypes auto,bfloat16 --n 300

Runs, per model dtype: the unquantized model (the reference), each `--quantizations` method on the
weights (KV cache as the model), and each `--kv-cache-dtypes` cache with unquantized weights. Every set
of nanoserve.demo_tasks.evaluation_sets (each task, add/sub also with uniform operands) is submitted at
once, greedy. Prints accuracy per set and the fraction of replies identical to the reference's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanoserve.demo import default_model  # noqa: E402
from nanoserve.demo_tasks import evaluation_sets  # noqa: E402
from scripts.eval_demo_models import nanoserve_replies, score  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the bundled demo model)")
    ap.add_argument("--n", type=int, default=2000, help="held-out problems per set")
    ap.add_argument("--dtypes", default="auto", help="model dtypes, comma-separated (auto: the checkpoint's)")
    ap.add_argument("--quantizations", default="int8,w8a8,int4", help="weight methods, comma-separated")
    ap.add_argument("--kv-cache-dtypes", default="int8,fp8_e4m3", help="KV-cache dtypes, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = args.model or default_model()
    sets = evaluation_sets(args.n)
    labels = [name for name, problems in sets.items() for _ in problems]
    problems = [p for ps in sets.values() for p in ps]
    prompts = [p.prompt for p in problems]
    runs = [(None, "auto")] + [(q, "auto") for q in filter(None, args.quantizations.split(","))]
    runs += [(None, kv) for kv in filter(None, args.kv_cache_dtypes.split(","))]
    results: dict = {"n_per_set": args.n, "runs": []}
    print(f"{args.n} held-out problems per set, greedy; 'same': replies identical to the unquantized run's")
    print(f"{'dtype':<10}{'weights':<9}{'kv cache':<10}" + "".join(f"{s[:11]:>12}" for s in sets)
          + f"{'same':>9}{'seconds':>9}")
    for dtype in args.dtypes.split(","):
        base = None
        for quantization, kv in runs:
            t0 = time.monotonic()
            replies = nanoserve_replies(model, prompts, dtype=dtype, kv_cache_dtype=kv,
                                        quantization=quantization)
            seconds = time.monotonic() - t0
            base = replies if base is None else base  # the first run is the unquantized one
            same = sum(a == b for a, b in zip(replies, base, strict=True)) / len(prompts)
            acc = score(labels, problems, replies)
            results["runs"].append({"dtype": dtype, "quantization": quantization, "kv_cache_dtype": kv,
                                    "accuracy": acc, "identical_to_unquantized": same,
                                    "seconds": round(seconds, 1)})
            cells = "".join(f"{acc[s]:12.4f}" for s in sets)
            name = quantization or "none"
            print(f"{dtype:<10}{name:<9}{kv:<10}{cells}{same:9.4f}{seconds:9.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
