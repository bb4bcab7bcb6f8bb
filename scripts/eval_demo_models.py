"""Greedy exact-match accuracy of the demo models on the held-out problems, through nanoserve's engine.

    python scripts/eval_demo_models.py                    # both models, 2,000 problems per task
    python scripts/eval_demo_models.py --backend both     # also transformers' greedy, and compare

Every request is submitted at once (temperature 0). Prints the accuracy table per model and task, and
how often the draft model agrees with the main model: the whole reply, and per token when the draft
is fed the main model's reply (the acceptance rate greedy speculative decoding would see).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanoserve.demo import default_draft_model, default_model  # noqa: E402
from nanoserve.demo_tasks import TASKS, Problem, grade, held_out_problems, hf_greedy_ids  # noqa: E402

MAX_NEW_TOKENS = 32


def nanoserve_replies(model_dir: str, prompts: list[str], **engine_kwargs) -> list[str]:
    from nanoserve import LLM, SamplingParams

    llm = LLM(model=model_dir, seed=0, **engine_kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
    return [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=False)]


def hf_replies(model_dir: str, prompts: list[str]) -> list[str]:
    """transformers' greedy replies, the reference nanoserve's engine is compared with."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return [tok.decode(ids, skip_special_tokens=True)
            for ids in hf_greedy_ids(model, tok, prompts, MAX_NEW_TOKENS)]


@torch.no_grad()
def draft_token_acceptance(draft_dir: str, prompts: list[str], main_replies: list[str]) -> float:
    """Share of the main model's reply tokens (EOS included) that the draft predicts greedily when
    given the main model's own prefix: the per-token acceptance of greedy speculative decoding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(draft_dir)
    draft = AutoModelForCausalLM.from_pretrained(draft_dir).eval()
    rows = [(tok.encode(p), tok.encode(r, add_special_tokens=False) + [tok.eos_token_id])
            for p, r in zip(prompts, main_replies, strict=True)]
    by_len: dict[int, list[int]] = {}
    for i, (p, r) in enumerate(rows):
        by_len.setdefault(len(p) + len(r), []).append(i)
    hits = total = 0
    for idx in by_len.values():
        ids = torch.tensor([rows[i][0] + rows[i][1] for i in idx])  # [group, seq_len]
        pred = draft(input_ids=ids).logits.argmax(-1)  # [group, seq_len]
        for row, i in enumerate(idx):
            p, r = rows[i]
            hits += (pred[row, len(p) - 1 : len(p) - 1 + len(r)] == torch.tensor(r)).sum().item()
            total += len(r)
    return hits / max(1, total)


def score(problems: list[Problem], replies: list[str]) -> dict[str, float]:
    acc = {}
    for task in TASKS:
        pairs = [(p, r) for p, r in zip(problems, replies, strict=True) if p.task == task]
        acc[task] = sum(grade(p, r) for p, r in pairs) / len(pairs)
    return acc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="main model directory (default: the bundled one)")
    ap.add_argument("--draft", default=None, help="draft model directory (default: the bundled one)")
    ap.add_argument("--n", type=int, default=2000, help="held-out problems per task")
    ap.add_argument("--backend", choices=("nanoserve", "hf", "both"), default="nanoserve")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {"main": args.model or default_model(), "draft": args.draft or default_draft_model()}
    problems = [p for t in TASKS for p in held_out_problems(t, args.n)]
    prompts = [p.prompt for p in problems]
    backends = ("nanoserve", "hf") if args.backend == "both" else (args.backend,)

    replies: dict[tuple[str, str], list[str]] = {}
    results: dict = {"n_per_task": args.n, "accuracy": {}, "seconds": {}}
    for which, model_dir in models.items():
        for backend in backends:
            t0 = time.monotonic()
            fn = nanoserve_replies if backend == "nanoserve" else hf_replies
            replies[which, backend] = fn(model_dir, prompts)
            results["seconds"][f"{which}/{backend}"] = round(time.monotonic() - t0, 1)
            results["accuracy"][f"{which}/{backend}"] = score(problems, replies[which, backend])

    print(f"\n{args.n} held-out problems per task, greedy exact match")
    print(f"{'model/backend':<20}" + "".join(f"{t:>9}" for t in TASKS) + f"{'seconds':>9}")
    for key, acc in results["accuracy"].items():
        print(f"{key:<20}" + "".join(f"{acc[t]:9.4f}" for t in TASKS) + f"{results['seconds'][key]:9.1f}")

    backend = backends[0]
    main_r, draft_r = replies["main", backend], replies["draft", backend]
    agree = sum(a == b for a, b in zip(main_r, draft_r, strict=True))
    results["draft_reply_agreement"] = agree / len(prompts)
    results["draft_token_acceptance"] = draft_token_acceptance(models["draft"], prompts, main_r)
    print(f"draft agrees with main on the whole reply: {results['draft_reply_agreement']:.4f}; "
          f"per token given main's prefix: {results['draft_token_acceptance']:.4f}")
    if args.backend == "both":
        for which in models:
            same = sum(a == b for a, b in zip(replies[which, "nanoserve"], replies[which, "hf"], strict=True))
            results[f"{which}_nanoserve_equals_hf"] = same / len(prompts)
            print(f"{which}: nanoserve output == transformers output on {same}/{len(prompts)} problems")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
