"""`nanoserve eval perplexity`: perplexity of a model on the pydoc corpus, as the engine runs it.

Engine flags are EngineArgs' own (`--model`, `--dtype`, and any later one such as a quantization or a
KV-cache dtype), so one command measures what a serving configuration does to quality:

    nanoserve eval perplexity --model smollm2-135m-instruct --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

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


def run(args: argparse.Namespace) -> int:
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
