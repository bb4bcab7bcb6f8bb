"""Shared fixtures: tiny random checkpoints, built once per test run."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
