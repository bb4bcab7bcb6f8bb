"""The engine flags of the offline benchmarks: EngineArgs' own, plus `--random-model` to pick the checkpoint.

`bench throughput`, `latency` and `roofline` take exactly the flags `serve` and `generate` take, with
the same spellings; a benchmark that needs another default for one (latency turns prefix caching off)
sets it on its parser, so `--help` shows what the run will use.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from nanoserve.config import EngineArgs, engine_arg_names


def add_engine_arguments(p: argparse.ArgumentParser, **defaults: Any) -> None:
    """EngineArgs' flags (defaults overridden by `defaults`), then `--random-model` / `--random-layers`."""
    from nanoserve.bench.models import add_model_arguments

    EngineArgs.add_cli_args(p)
    add_model_arguments(p)
    if defaults:
        unknown = set(defaults) - engine_arg_names()
        if unknown:
            raise ValueError(f"no such engine flag: {sorted(unknown)}")
        p.set_defaults(**defaults)


def engine_kwargs(args: argparse.Namespace, model_dir: str, **overrides: Any) -> dict[str, Any]:
    """LLM(model_dir, **engine_kwargs(...)): the parsed engine flags, validated, `overrides` winning.

    `--quantization-lm-head` without `--quantization` is kept for the `nanoserve:<method>` rows, which
    set the method per row (`throughput.nanoserve_method_kwargs`); the engine itself refuses it alone."""
    head_only = getattr(args, "quantization_lm_head", False) and getattr(args, "quantization", None) is None
    if head_only:
        overrides = {"quantization_lm_head": False, **overrides}
    values = asdict(EngineArgs.from_cli_args(args, model=model_dir, **overrides))
    del values["model"]
    if head_only:
        values["quantization_lm_head"] = True
    return values
