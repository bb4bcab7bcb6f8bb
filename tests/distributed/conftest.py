"""Tensor-parallel fixtures: engines of world size 2 on tiny fp32 models, each rank on one thread."""

from __future__ import annotations

import pytest

from nanoserve import LLM


@pytest.fixture
def make_llm():
    """`make_llm(path, tp, **engine_args)`: an LLM shut down at the end of the test, whatever happens."""
    made: list[LLM] = []

    def make(path, tp: int, **kwargs) -> LLM:
        kwargs.setdefault("num_cpu_threads", 1)
        llm = LLM(str(path), tensor_parallel_size=tp, dtype="float32", **kwargs)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.shutdown()
