"""`nanoserve bench spec`: speculative decoding swept over k and proposers, measured beside the planner.

For each configuration (method × k) an engine with speculation on is built next to one with it off,
and every workload runs on both back to back (the same minute on a loaded machine): the demo tasks
at batch 1 (held-out problems, greedy, to EOS), or with `--random-model` random prompts with
ignore_eos (n-gram only: a draft model needs the target's vocabulary and a trained one to agree with
it), or with `--model CHAT_MODEL --prompt-set quote|open` chat prompts (bench/spec_prompts.py) rendered
through the model's chat template, greedy, to EOS or `--output-len` (n-gram by default there).
The table (bench/spec_analysis.py) gives α, c, the measured decode speed-up and the planner's
prediction; `--markdown FILE` writes it for benchmarks/RESULTS.md. `--repeats N` runs N rounds per
workload and keeps each side's fastest (on a loaded machine one round swings by ±30%).

`bench latency|throughput --speculative-config JSON` use `compare_on_off` on their own workload.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

from nanoserve.bench.spec_analysis import (
    RunMeasure,
    SpecComparison,
    compare,
    first_differences,
    markdown,
    print_comparisons,
)


def measure_run(llm, prompts: list[dict[str, Any]], params) -> tuple[RunMeasure, list[list[int]]]:  # noqa: ANN001
    """Generate `prompts` on `llm` with StepTimers attached; the spec counters as deltas over the run."""
    from nanoserve.engine.spec_decode.step_timers import StepTimers

    engine = llm.llm_engine
    before = engine.get_stats()
    engine.step_timers = timers = StepTimers()
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    engine.step_timers = None
    after = engine.get_stats()
    ids = [list(o.outputs[0].token_ids) for o in outs]
    per_pos = list(after.spec_decode_num_accepted_tokens_per_pos)
    for j, v in enumerate(before.spec_decode_num_accepted_tokens_per_pos):
        per_pos[j] -= v
    return RunMeasure(
        timers, elapsed, sum(len(i) for i in ids),
        after.spec_decode_num_drafts - before.spec_decode_num_drafts,
        after.spec_decode_num_draft_tokens - before.spec_decode_num_draft_tokens,
        after.spec_decode_num_accepted_tokens - before.spec_decode_num_accepted_tokens,
        per_pos,
    ), ids


def _warm(llm, prompts, params) -> None:  # noqa: ANN001
    # params: one SamplingParams, or one per prompt (bench throughput's per-request output lengths)
    llm.generate(prompts[:2], params[:2] if isinstance(params, list) else params, use_tqdm=False)


def compare_workloads(
    model_dir: str,
    engine_kwargs: dict[str, Any],
    spec_config: dict[str, Any],
    workloads: dict[str, tuple[list[dict[str, Any]], Any]],
    repeats: int = 1,
) -> list[SpecComparison]:
    """Each workload (label -> (prompts, params)) run with speculation off, then on, back to back;
    `repeats` > 1: that many rounds, alternating which goes first, each side's fastest run kept (a
    shared machine's load only ever slows a run down).

    Both engines are new, so both start with the same (empty) prefix cache: an off engine reused from
    an earlier configuration would find every prompt cached and prefill only its last token, through
    the decode-row attention instead of the prefill one; in bf16 that alone changes some greedy outputs
    (speculation off on both sides), and it would make the off side's prefill cheaper than the on side's."""
    from nanoserve import LLM

    off = LLM(model=model_dir, **{**engine_kwargs, "speculative_config": None})
    on = LLM(model=model_dir, **{**engine_kwargs, "speculative_config": spec_config})
    k = int(spec_config["num_speculative_tokens"])
    results = []
    for label, (prompts, params) in workloads.items():
        _warm(off, prompts, params)
        _warm(on, prompts, params)
        greedy = all(p.temperature == 0 for p in (params if isinstance(params, list) else [params]))
        best: dict[str, RunMeasure] = {}
        same: bool | None = True if greedy else None
        for r in range(max(1, repeats)):
            ids: dict[str, list[list[int]]] = {}
            for side, llm in (("off", off), ("on", on)) if r % 2 == 0 else (("on", on), ("off", off)):
                m, ids[side] = measure_run(llm, prompts, params)
                if side not in best or m.elapsed_s < best[side].elapsed_s:
                    best[side] = m
            if r == 0 or ids["off"] != ids["on"]:  # a differing round is the one to report
                ids_off, ids_on = ids["off"], ids["on"]
            if greedy and ids["off"] != ids["on"]:
                same = False
        m_off, m_on = best["off"], best["on"]
        r = compare(label, spec_config["method"], k, m_off, m_on, same)
        if same is False:
            r.mismatches = first_differences(ids_off, ids_on)
            print(f"ERROR: {label} {spec_config['method']} k={k}: greedy output differs on/off for "
                  f"{len(r.mismatches)}/{len(ids_off)} prompts ([prompt, first differing token, tokens off]: "
                  f"{r.mismatches})")
        results.append(r)
    del on, off
    gc.collect()
    return results


def compare_on_off(model_dir: str, engine_kwargs: dict[str, Any], label: str,
                   prompts: list[dict[str, Any]], params) -> list[SpecComparison]:  # noqa: ANN001
    """For `bench latency|throughput --speculative-config`: the same workload with speculation off."""
    from nanoserve.engine.spec_decode.config import parse_speculative_config

    spec = parse_speculative_config(engine_kwargs["speculative_config"])
    cfg = {"method": spec.method, "num_speculative_tokens": spec.num_speculative_tokens,
           "prompt_lookup_max": spec.prompt_lookup_max, "prompt_lookup_min": spec.prompt_lookup_min,
           "disable_by_batch_size": spec.disable_by_batch_size}
    if spec.model:
        cfg["model"] = spec.model
    results = compare_workloads(model_dir, engine_kwargs, cfg, {label: (prompts, params)})
    print_comparisons(results, "speculative decoding: measured vs planner (decode steps; same run)")
    return results


def demo_workloads(tasks: list[str], n: int, max_tokens: int) -> dict[str, tuple[list[dict[str, Any]], Any]]:
    from nanoserve import SamplingParams
    from nanoserve.demo_tasks import held_out_problems

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return {t: ([{"prompt": p.prompt} for p in held_out_problems(t, n)], params) for t in tasks}


def random_workload(model_dir: str, n: int, input_len: int, output_len: int,
                    seed: int) -> dict[str, tuple[list[dict[str, Any]], Any]]:
    from nanoserve import SamplingParams
    from nanoserve.bench.dataset import random_requests
    from nanoserve.bench.models import special_token_ids, vocab_size

    reqs = random_requests(n, input_len, output_len, vocab_size(model_dir), seed=seed,
                           special_ids=special_token_ids(model_dir))
    params = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0.0)
    return {"random": ([{"prompt_token_ids": r.prompt_token_ids} for r in reqs], params)}


def chat_workload(model_dir: str, prompt_set_name: str, max_tokens: int,
                  n: int | None = None) -> dict[str, tuple[list[dict[str, Any]], Any]]:
    """The prompt set's user messages through the model's chat template; greedy, `max_tokens` at most."""
    from nanoserve import SamplingParams
    from nanoserve.bench.spec_prompts import prompt_set, render_chat_prompts

    messages = prompt_set(prompt_set_name)[:n] if n else prompt_set(prompt_set_name)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return {prompt_set_name: (render_chat_prompts(model_dir, messages), params)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nanoserve.bench.engine_flags import add_engine_arguments

    p.add_argument("--methods", default="ngram,draft_model", help="comma-separated: ngram, draft_model")
    p.add_argument("--ks", default="1,2,3,4,5,6", help="num_speculative_tokens values to sweep")
    p.add_argument("--draft-model", default=None,
                   help="the draft_model proposer's checkpoint (default: the demo draft)")
    p.add_argument("--tasks", default="add,sub,sort,reverse,copy",
                   help="demo tasks (ignored with --random-model)")
    p.add_argument("--prompt-set", default=None, choices=["quote", "open"],
                   help="chat prompts for a chat --model (e.g. smollm2): quote (answers repeat the prompt) "
                   "or open (new text); rendered through the model's chat template")
    p.add_argument("--num-prompts", type=int, default=None,
                   help="problems per task, random prompts, or the first N of --prompt-set (default 12/all)")
    p.add_argument("--input-len", type=int, default=64, help="--random-model: prompt tokens")
    p.add_argument("--output-len", type=int, default=None,
                   help="max tokens (random model: exactly); default 32, 96 with --prompt-set")
    p.add_argument("--prompt-lookup-max", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of each workload, off and on alternating which runs first; each side's "
                   "fastest round is reported (steadier figures on a shared machine)")
    p.add_argument("--markdown", default=None, metavar="FILE.md", help="append the table here")
    p.add_argument("--save-result", default=None, metavar="FILE.json")
    # Batch 1 by default: one sequence at a time, the setting of the speed targets.
    add_engine_arguments(p, max_num_seqs=1, num_cpu_threads=1)


def run(args: argparse.Namespace) -> int:
    from nanoserve.bench.engine_flags import engine_kwargs
    from nanoserve.bench.models import resolve_model

    if args.prompt_set and args.random_model:
        print("--prompt-set needs a chat --model, not --random-model")
        return 2
    if args.num_cpu_threads:
        import torch

        torch.set_num_threads(args.num_cpu_threads)
    model_dir = resolve_model(args.model, args.random_model, args.random_layers)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.prompt_set and "draft_model" in methods and not args.draft_model:
        print("--prompt-set: n-gram only unless --draft-model names a draft sharing the model's tokenizer")
        methods = [m for m in methods if m != "draft_model"]
    if args.random_model and "draft_model" in methods:
        print("--random-model: n-gram only (no draft model shares a random model's vocabulary)")
        methods = [m for m in methods if m != "draft_model"]
    ks = [int(k) for k in args.ks.split(",")]
    output_len = args.output_len or (96 if args.prompt_set else 32)
    if args.prompt_set:
        workloads = chat_workload(model_dir, args.prompt_set, output_len, args.num_prompts)
    elif args.random_model:
        workloads = random_workload(model_dir, args.num_prompts or 12, args.input_len, output_len, args.seed)
    else:
        tasks = [t.strip() for t in args.tasks.split(",")]
        workloads = demo_workloads(tasks, args.num_prompts or 12, output_len)
    kwargs = engine_kwargs(args, model_dir, speculative_config=None)
    results: list[SpecComparison] = []
    for method in methods:
        for k in ks:
            cfg: dict[str, Any] = {"method": method, "num_speculative_tokens": k}
            if method == "draft_model":
                from nanoserve.demo import default_draft_model

                cfg["model"] = args.draft_model or default_draft_model()
            else:
                cfg["prompt_lookup_max"] = args.prompt_lookup_max
            part = compare_workloads(model_dir, kwargs, cfg, workloads, args.repeats)
            print_comparisons(part, f"{method} k={k}")
            results += part
    print_comparisons(results, f"speculative decoding vs planner: {args.random_model or model_dir}")
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(markdown(results))
    mismatches = [f"{r.label} {r.method} k={r.k}" for r in results if r.identical is False]
    if args.save_result:
        with open(args.save_result, "w") as f:
            json.dump({"benchmark": "spec", "model": model_dir, "prompt_set": args.prompt_set,
                       "output_len": output_len, "greedy_mismatches": mismatches,
                       "results": [r.as_dict() for r in results]}, f, indent=2)
    if mismatches:
        # Greedy speculation must reproduce speculation off token for token: anything else is a bug.
        print(f"ERROR: greedy outputs differ with speculation on vs off: {', '.join(mismatches)}")
        return 1
    return 0
