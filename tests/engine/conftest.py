"""Engine fixtures: LLMs over the tiny checkpoints, each checked after the test for a fully free KV pool."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_llm(tiny_model):
    """`make_llm("qwen3", num_gpu_blocks_override=8, ...)` -> LLM; teardown asserts nothing leaked."""
    from nanoserve import LLM

    made = []

    def make(variant: str = "llama", model_options: dict | None = None, **kwargs):
        kwargs.setdefault("num_gpu_blocks_override", 64)
        llm = LLM(str(tiny_model(variant, **(model_options or {}))), **kwargs)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        engine = llm.llm_engine
        assert not engine.has_unfinished_requests(), "test left requests unfinished"
        engine.check_all_blocks_free()

