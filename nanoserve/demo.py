"""Where the bundled demo models live: the default wherever a model is optional."""

from __future__ import annotations

import os
from pathlib import Path

from nanoserve.errors import ModelLoadError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEMO_MODEL_NAME = "toy-assistant"
DEMO_DRAFT_MODEL_NAME = "toy-assistant-draft"


def default_model() -> str:
    """The main demo model's directory (override with $NANOSERVE_MODEL)."""
    return _model_dir(os.environ.get("NANOSERVE_MODEL") or str(MODELS_DIR / DEMO_MODEL_NAME))


def default_draft_model() -> str:
    return _model_dir(str(MODELS_DIR / DEMO_DRAFT_MODEL_NAME))


def _model_dir(path: str) -> str:
    if not (Path(path) / "config.json").is_file():
        raise ModelLoadError(
            f"demo model not found at {path}: pass --model DIR, or train it with "
            "`python scripts/train_demo_models.py`"
        )
    return path
