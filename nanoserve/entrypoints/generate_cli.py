"""`nanoserve generate [PROMPT ...]`: offline generation from the command line.

Prompts come from the arguments, or one per line from stdin when none are given. With --chat each
prompt is wrapped as a user message through the model's chat template. Prints each completion.
Engine flags are EngineArgs' fields (`--seed` is the engine's seed); `--sampling-seed` seeds each
prompt's own sampling.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from nanoserve.config import EngineArgs
from nanoserve.errors import NanoserveError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompts", nargs="*", metavar="PROMPT", help="prompts (default: one per line of stdin)"
    )
    sampling = parser.add_argument_group("sampling", "SamplingParams of every prompt")
    sampling.add_argument("--max-tokens", type=int, default=64)
    sampling.add_argument("--min-tokens", type=int, default=0)
    sampling.add_argument("--temperature", type=float, default=0.0)
    sampling.add_argument("--top-p", type=float, default=1.0)
    sampling.add_argument("--top-k", type=int, default=-1)
    sampling.add_argument("--min-p", type=float, default=0.0)
    sampling.add_argument(
        "--sampling-seed",
        type=int,
        default=None,
        help="SamplingParams.seed of every prompt: its text then does not depend on what runs beside it "
        "(--seed seeds the engine)",
    )
    sampling.add_argument("-n", "--n", type=int, default=1, help="completions per prompt")
    sampling.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    sampling.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--chat", action="store_true", help="apply the chat template to each prompt")
    parser.add_argument("--json", action="store_true", help="one JSON object per prompt instead of text")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    EngineArgs.add_cli_args(parser)


def run(args: argparse.Namespace) -> int:
    from nanoserve.entrypoints.llm import LLM
    from nanoserve.sampling_params import SamplingParams

    if args.node_rank > 0:  # another machine's share of the ranks: no prompts, no engine here
        from nanoserve.distributed.executor import run_headless

        return run_headless(EngineArgs.from_cli_args(args))
    prompts = list(args.prompts) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts:
        print("nanoserve generate: no prompt given", file=sys.stderr)
        return 2
    try:
        params = SamplingParams(
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            min_p=args.min_p,
            seed=args.sampling_seed,
            stop=args.stop,
            ignore_eos=args.ignore_eos,
            max_tokens=args.max_tokens,
            min_tokens=args.min_tokens,
        )
        engine_args = EngineArgs.from_cli_args(args)
        llm = LLM(**asdict(engine_args))
        shown = list(prompts)  # what the user typed, printed beside each completion
        if args.chat:
            tok = llm.get_tokenizer()
            texts = [
                tok.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
            # The template already holds the special tokens: do not add another BOS.
            prompts = [
                {"prompt": t, "prompt_token_ids": tok.encode(t, add_special_tokens=False)} for t in texts
            ]
        outputs = llm.generate(prompts, params, use_tqdm=not args.no_progress and len(prompts) > 1)
    except NanoserveError as e:
        print(f"nanoserve generate: {e}", file=sys.stderr)
        return 1
    for out, prompt in zip(outputs, shown, strict=True):
        if args.json:
            print(
                json.dumps(
                    {
                        "prompt": prompt,
                        "completions": [
                            {
                                "index": c.index,
                                "text": c.text,
                                "token_ids": c.token_ids,
                                "finish_reason": c.finish_reason,
                            }
                            for c in out.outputs
                        ],
                        "ttft_s": out.metrics.ttft_s,
                        "e2e_s": out.metrics.e2e_s,
                    }
                    | ({"rendered_prompt": out.prompt} if args.chat else {})
                )
            )
            continue
        for c in out.outputs:
            prefix = f"[{c.index}] " if len(out.outputs) > 1 else ""
            print(f"{prefix}{prompt!r} -> {c.text!r} ({c.finish_reason})")
    return 0
