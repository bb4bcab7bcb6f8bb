"""The speculative configs the tests use, over the bundled demo draft model.

disable_by_batch_size is null here: these tests check speculation itself at every batch size (the
default stops drafting from 4 running sequences; test_disable_by_batch_size.py checks that)."""

from __future__ import annotations

from nanoserve.demo import default_draft_model


def ngram(k: int) -> dict:
    return {"method": "ngram", "num_speculative_tokens": k, "disable_by_batch_size": None}


def draft(k: int) -> dict:
    return {"method": "draft_model", "model": default_draft_model(), "num_speculative_tokens": k,
            "disable_by_batch_size": None}
