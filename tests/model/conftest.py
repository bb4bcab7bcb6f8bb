"""Model fixtures: a writable copy of a tiny checkpoint to break in specific ways."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


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
