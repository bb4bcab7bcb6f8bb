"""`nanoserve generate [PROMPT ...]`: offline generation from the command line.

Prompts come from the arguments, or one per line from stdin when none are given. With --chat each
prompt is wrapped as a user message through the model's chat template. Prints each completion.
"""

from __future__ import annotations

import argparse
import json
import sys

from nanoserve.errors import NanoserveError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompts", nargs="*", metavar="PROMPT", help="prompts (default: one per line of stdin)"
    )
    parser.add_argument(
        "--model", default=None, help="Hugging Face model directory (default: the demo model)"
    )
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-tokens", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=-1)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None, help="per-request sampling seed")
    parser.add_argument("-n", "--n", type=int, default=1, help="completions per prompt")
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--chat", action="store_true", help="apply the chat template to each prompt")
    parser.add_argument("--json", action="store_true", help="one JSON object per prompt instead of text")
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--no-chunked-prefill", action="store_true")
    parser.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    parser.add_argument("--num-cpu-threads", type=int, default=None, help="torch threads on CPU")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from nanoserve.demo import default_model
    from nanoserve.entrypoints.llm import LLM
    from nanoserve.sampling_params import SamplingParams

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
            seed=args.seed,
            stop=args.stop,
            ignore_eos=args.ignore_eos,
            max_tokens=args.max_tokens,
            min_tokens=args.min_tokens,
        )
        llm = LLM(
            model=args.model or default_model(),
            tokenizer=args.tokenizer,
            dtype=args.dtype,
            device=args.device,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            enable_prefix_caching=not args.no_prefix_caching,
            enable_chunked_prefill=not args.no_chunked_prefill,
            kv_cache_memory_bytes=args.kv_cache_memory_bytes,
            num_cpu_threads=args.num_cpu_threads,
        )
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
