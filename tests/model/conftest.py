"""Model fixtures: a writable copy of a tiny checkpoint to break in specific ways."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models on a shared 2-core machine: torch's thread pool only adds spin-wait contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    """`model_copy("mistral", config={"sliding_window": 64})` -> a copy with config.json fields changed."""

    def make(variant: str = "llama", config: dict | None = None, **options) -> Path:
        dst = tmp_path / f"copy_{variant}"
        shutil.copytree(tiny_model(variant, **options), dst)
        if config:
            cfg_file = dst / "config.json"
            cfg = json.loads(cfg_file.read_text())
            cfg.update(config)
            cfg_file.write_text(json.dumps(cfg))
        return dst

    return make
