"""Shared fixtures: tiny random checkpoints, built once per test run."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Tiny models: thread start-up and spinning cost far more than the math, and the suite shares two
# cores with itself (servers in threads, subprocesses); one intra-op thread is 30x faster here.
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the planner's tests do not need torch
    pass

from tiny_models import VARIANTS, build_tiny_model  # noqa: E402

ALL_VARIANTS = sorted(VARIANTS)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`tiny_model("qwen2")` → folder of a tiny random Qwen2 checkpoint; cached per (variant, options)."""
    cache: dict[tuple, Path] = {}

    def get(variant: str = "llama", **options) -> Path:
        key = (variant, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny_{variant}")
            cache[key] = build_tiny_model(variant, out, **options)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_llama(tiny_model) -> Path:
    return tiny_model("llama")
