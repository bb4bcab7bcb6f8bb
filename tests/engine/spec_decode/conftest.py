"""Speculative-decoding fixtures: LLMs over the demo models (target and draft share a tokenizer), each
checked after the test for a fully free KV pool, the draft model's included."""

from __future__ import annotations

import pytest


@pytest.fixture
def demo_llm():
    """`demo_llm(speculative_config=..., **engine_args)` -> LLM over the demo model; teardown asserts that
    nothing is left running and that both pools are empty."""
    from nanoserve import LLM
    from nanoserve.demo import default_model

    made = []

    def make(**kwargs):
        llm = LLM(default_model(), **kwargs)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        engine = llm.llm_engine
        assert not engine.has_unfinished_requests(), "test left requests unfinished"
        engine.check_all_blocks_free()
