"""Greedy exact-match accuracy of the demo models on the held-out problems, through nanoserve's engine.

    python scripts/eval_demo_models.py                    # both models, 2,000 problems per set
    python scripts/eval_demo_models.py --backend both     # also transformers' greedy, and compare

The sets (nanoserve.demo_tasks.evaluation_sets): every task with add/sub from the training mix, and
add/sub with operands uniform over 0-999 (``add_uniform``, ``sub_uniform``). Every request is
submitted at once (temperature 0). Prints the accuracy table per model and set, and
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
from nanoserve.demo_tasks import Problem, evaluation_sets, grade, hf_greedy_ids  # noqa: E402

MAX_NEW_TOKENS = 64  # the longest answer is a 48-character copy


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


def score(labels: list[str], problems: list[Problem], replies: list[str]) -> dict[str, float]:
    """Accuracy per evaluation set (``labels[i]`` names problem i's set)."""
    acc = {}
    for name in dict.fromkeys(labels):
        pairs = [(p, r) for lab, p, r in zip(labels, problems, replies, strict=True) if lab == name]
        acc[name] = sum(grade(p, r) for p, r in pairs) / len(pairs)
    return acc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="main model directory (default: the bundled one)")
    ap.add_argument("--draft", default=None, help="draft model directory (default: the bundled one)")
    ap.add_argument("--n", type=int, default=2000, help="held-out problems per set")
    ap.add_argument("--backend", choices=("nanoserve", "hf", "both"), default="nanoserve")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {"main": args.model or default_model(), "draft": args.draft or default_draft_model()}
    sets = evaluation_sets(args.n)
    labels = [name for name, ps in sets.items() for _ in ps]
    problems = [p for ps in sets.values() for p in ps]
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
            results["accuracy"][f"{which}/{backend}"] = score(labels, problems, replies[which, backend])
            misses = [(p.prompt, r) for p, r in zip(problems, replies[which, backend], strict=True)
                      if not grade(p, r)]
            results.setdefault("misses", {})[f"{which}/{backend}"] = misses[:200]

    print(f"\n{args.n} held-out problems per set, greedy exact match")
    print(f"{'model/backend':<20}" + "".join(f"{t[:11]:>12}" for t in sets) + f"{'seconds':>9}")
    for key, acc in results["accuracy"].items():
        print(f"{key:<20}" + "".join(f"{acc[t]:12.4f}" for t in sets) + f"{results['seconds'][key]:9.1f}")

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
