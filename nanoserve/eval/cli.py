"""`nanoserve eval perplexity | agreement`: what a serving configuration does to a model's quality.

Engine flags are EngineArgs' own (`--model`, `--dtype`, `--quantization`, and any later one such as a
KV-cache dtype), so one command measures a configuration:

    nanoserve eval perplexity --model smollm2-135m-instruct --dtype bfloat16 --quantization int8
    nanoserve eval agreement --model smollm2-135m-instruct --dtype bfloat16 --methods int8,int4,w8a8

`agreement` compares each method's next-token distributions with the unquantized model's (same flags,
same dtype): top-1 agreement and mean KL (nanoserve/eval/agreement.py says where the logits come from).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from nanoserve.config import EngineArgs
from nanoserve.errors import NanoserveError

DEFAULT_CONTEXT = 512
DEFAULT_MAX_TOKENS = 16384  # ~35 s on two cores for SmolLM2-135M in bf16 (~500 tok/s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", metavar="MEASURE", required=True)
    p = sub.add_parser("perplexity", help="perplexity on pydoc_data's English text (offline, every machine)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--context", type=int, default=DEFAULT_CONTEXT,
                   help="tokens per window (default: %(default)s)")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens between window starts (default: --context, no overlap); smaller strides "
                   "give each scored token at least context - stride tokens of context")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help="tokens of the corpus to cover (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    EngineArgs.add_cli_args(p)
    add_agreement_arguments(sub)


AGREEMENT_KV_BYTES = 256 << 20  # the KV pool of each engine unless --kv-cache-memory-bytes says otherwise


def add_agreement_arguments(sub: Any) -> None:
    from nanoserve.bench.models import add_model_arguments

    p = sub.add_parser("agreement", help="top-1 agreement and KL of quantized methods against the "
                       "unquantized model", description="top-1 agreement and mean KL(ref ‖ method) of "
                       "next-token distributions over fixed prompts")
    p.add_argument("--methods", default="int8,int4,w8a8",
                   help="comma-separated; each a quantization method and/or kv:<dtype>, joined by + "
                   "(default: %(default)s)")
    p.add_argument("--prompts", default="auto", choices=("auto", "corpus", "random"),
                   help="corpus: windows of the pydoc text; random: uniform token ids; auto: random for "
                   "--random-model checkpoints, else corpus")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=128, help="tokens per prompt (positions compared)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    EngineArgs.add_cli_args(p)
    add_model_arguments(p)


def run_agreement(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nanoserve.bench.models import resolve_model, special_token_ids, vocab_size
    from nanoserve.entrypoints.llm import LLM
    from nanoserve.eval import agreement as ag
    from nanoserve.eval.corpus import load_corpus

    try:
        # --model stays as given (a folder, a named model, None for the demo); --random-model builds one.
        model_dir = resolve_model(None, args.random_model, args.random_layers) if args.random_model \
            else args.model
        kv_bytes = args.kv_cache_memory_bytes or AGREEMENT_KV_BYTES
        base = EngineArgs.from_cli_args(args, model=model_dir, enable_prefix_caching=False,
                                        kv_cache_memory_bytes=kv_bytes)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        overrides = {m: ag.method_overrides(m) for m in methods}
        ref_llm = LLM(**{**asdict(base), **ag.reference_overrides()})
        kind = args.prompts
        if kind == "auto":
            kind = "random" if (Path(ref_llm.llm_engine.model_config.model) /
                                "nanoserve_random_model.json").is_file() else "corpus"
        if kind == "random":
            folder = ref_llm.llm_engine.model_config.model
            prompts = ag.random_prompts(vocab_size(folder), args.num_prompts, args.prompt_len, args.seed,
                                        special_token_ids(folder))
        else:
            corpus = load_corpus(ref_llm.get_tokenizer(), args.num_prompts * args.prompt_len)
            prompts = ag.corpus_prompts(corpus.token_ids, args.num_prompts, args.prompt_len)
        results = []
        for m in methods:
            llm = LLM(**{**asdict(base), **ag.reference_overrides(), **overrides[m]})
            results.append(ag.agreement(ref_llm, llm, prompts, m))
            del llm
    except (NanoserveError, ValueError) as e:
        print(f"nanoserve eval agreement: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"prompts": kind, "results": [asdict(r) for r in results],
                          "engine": asdict(base)}))
        return 0
    print(f"model {base.model} ({base.dtype}); {len(prompts)} {kind} prompts of {args.prompt_len} tokens; "
          f"reference: unquantized, same dtype")
    from nanoserve.bench.report import print_table

    print_table(["method", "positions", "top-1 agreement", "mean KL (nats)", "max KL (nats)"],
                [[r.method, r.positions, f"{100 * r.top1_agreement:.2f}%", f"{r.mean_kl_nats:.3g}",
                  f"{r.max_kl_nats:.3g}"] for r in results])
    return 0


def run(args: argparse.Namespace) -> int:
    if args.eval_command == "agreement":
        return run_agreement(args)
    from nanoserve.entrypoints.llm import LLM
    from nanoserve.eval.corpus import load_corpus
    from nanoserve.eval.perplexity import perplexity

    try:
        engine_args = EngineArgs.from_cli_args(args)
        llm = LLM(**asdict(engine_args))
        corpus = load_corpus(llm.get_tokenizer(), args.max_tokens)
        result = perplexity(llm, corpus.token_ids, args.context, args.stride, use_tqdm=not args.no_progress)
    except (NanoserveError, ValueError) as e:
        print(f"nanoserve eval perplexity: {e}", file=sys.stderr)
        return 1
    corpus_info = {k: v for k, v in asdict(corpus).items() if k != "token_ids"}
    if args.json:
        print(json.dumps({**asdict(result), "corpus": corpus_info, "engine": asdict(engine_args)}))
        return 0
    print(f"model {engine_args.model} ({engine_args.dtype}); corpus {corpus.name} of Python "
          f"{corpus.python_version} (sha256 {corpus.text_sha256}), first {result.text_tokens} tokens")
    print(f"perplexity {result.perplexity:.4f}  (mean NLL {result.mean_nll:.4f} nats/token, "
          f"{result.tokens_scored} tokens scored, {result.windows} windows, {result.elapsed_s:.1f} s)")
    print(result.derivation())
    return 0
