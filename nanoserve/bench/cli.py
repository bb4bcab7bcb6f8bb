"""`nanoserve bench throughput | serve | latency | roofline | linear | calibrate | spec | tp`.

Each benchmark is its own module with `add_arguments(parser)` and `run(args) -> int`. The modules
import torch / transformers / the engine only inside their functions, so building the parser is
cheap and `bench serve`, a pure HTTP client, never imports torch.
"""

from __future__ import annotations

import argparse
import importlib

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "throughput": ("nanoserve.bench.throughput", "offline throughput vs transformers baselines"),
    "serve": ("nanoserve.bench.serve", "online load against an OpenAI-compatible server"),
    "latency": ("nanoserve.bench.latency", "batch-1 TTFT and TPOT against prompt length, with a plot"),
    "roofline": ("nanoserve.bench.roofline", "probe bandwidth and FLOP/s; MBU / MFU of the engine"),
    "linear": ("nanoserve.bench.linear", "the decode step's linear layers, CPU paths compared"),
    "calibrate": ("nanoserve.bench.calibrate", "time engine steps by batch shape: a profile for simulate"),
    "spec": ("nanoserve.bench.spec", "speculative decoding over k and proposers, measured vs the planner"),
    "tp": ("nanoserve.bench.tensor_parallel", "TP=1 against TP=2: tok/s, collectives, bytes vs planner"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(SUBCOMMANDS[args.bench_command][0])
    return int(module.run(args) or 0)
