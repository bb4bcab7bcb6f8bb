"""The speculative configs the tests use, over the bundled demo draft model."""

from __future__ import annotations

from nanoserve.demo import default_draft_model


def ngram(k: int) -> dict:
    return {"method": "ngram", "num_speculative_tokens": k}


def draft(k: int) -> dict:
    return {"method": "draft_model", "model": default_draft_model(), "num_speculative_tokens": k}
