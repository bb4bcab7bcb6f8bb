"""The quantized KV cache on the demo model: greedy replies with kv_cache_dtype int8 / fp8_e4m3 against
kv_cache_dtype=auto (same model dtype), and the accuracy of each, over the held-out problems.

    python scripts/eval_kv_cache_dtype.py --n 300              # float32 (the checkpoint's) and bfloat16

Prints, per model dtype and kv_cache_dtype: accuracy per task and the fraction of problems whose reply
is identical to the auto run's.
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
from nanoserve.demo_tasks import TASKS, held_out_problems  # noqa: E402
from scripts.eval_demo_models import nanoserve_replies, score  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the bundled demo model)")
    ap.add_argument("--n", type=int, default=300, help="held-out problems per task")
    ap.add_argument("--dtypes", default="auto,bfloat16", help="model dtypes, comma-separated")
    ap.add_argument("--kv-cache-dtypes", default="int8,fp8_e4m3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = args.model or default_model()
    problems = [p for t in TASKS for p in held_out_problems(t, args.n)]
    prompts = [p.prompt for p in problems]
    results: dict = {"n_per_task": args.n, "runs": []}
    print(f"{args.n} held-out problems per task, greedy")
    print(f"{'dtype':<10}{'kv cache':<10}" + "".join(f"{t:>9}" for t in TASKS) + f"{'same':>9}{'seconds':>9}")
    for dtype in args.dtypes.split(","):
        base = None
        for kv in ["auto", *args.kv_cache_dtypes.split(",")]:
            t0 = time.monotonic()
            replies = nanoserve_replies(model, prompts, dtype=dtype, kv_cache_dtype=kv)
            seconds = time.monotonic() - t0
            base = replies if kv == "auto" else base
            same = sum(a == b for a, b in zip(replies, base, strict=True)) / len(prompts)
            acc = score(problems, replies)
            results["runs"].append({"dtype": dtype, "kv_cache_dtype": kv, "accuracy": acc,
                                    "identical_to_auto": same, "seconds": round(seconds, 1)})
            cells = "".join(f"{acc[t]:9.4f}" for t in TASKS)
            print(f"{dtype:<10}{kv:<10}{cells}{same:9.4f}{seconds:9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
