"""Server fixtures: one real `nanoserve serve` subprocess shared by the API, error and load tests, and
the offline LLM that its greedy outputs are compared with."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_process import MAX_MODEL_LEN, SERVER_ARGS, ServerProcess, start_server


@pytest.fixture(scope="session")
def server_model(tiny_model) -> Path:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def server(server_model, tmp_path_factory) -> ServerProcess:
    proc = start_server(server_model, tmp_path_factory.mktemp("server") / "serve.log", *SERVER_ARGS)
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="session")
def offline_llm(server_model):
    """The same checkpoint through the offline API: the reference for greedy server outputs."""
    import torch

    from nanoserve import LLM

    torch.set_num_threads(1)
    return LLM(str(server_model), max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=256)
