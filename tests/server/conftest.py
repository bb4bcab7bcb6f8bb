"""Server fixtures: one real `nanoserve serve` subprocess shared by the API, error and load tests, and
the offline LLM that its greedy outputs are compared with."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_process import BUSY_MAX_MODEL_LEN, BUSY_SERVER_ARGS, MAX_MODEL_LEN, SERVER_ARGS, ServerProcess


@pytest.fixture(scope="session")
def server_model(tiny_model) -> Path:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def _launched(server_model, tiny_model, tmp_path_factory) -> dict[str, ServerProcess]:
    """Both test servers, launched together: their start-up (imports, model load) overlaps."""
    logs = tmp_path_factory.mktemp("servers")
    long_model = tiny_model("llama", max_position_embeddings=BUSY_MAX_MODEL_LEN)
    procs = {"main": ServerProcess(server_model, logs / "main.log", *SERVER_ARGS),
             "busy": ServerProcess(long_model, logs / "busy.log", *BUSY_SERVER_ARGS)}
    yield procs
    for proc in procs.values():
        proc.stop()


@pytest.fixture(scope="session")
def server(_launched) -> ServerProcess:
    proc = _launched["main"]
    proc.wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="session")
def busy_server(_launched) -> ServerProcess:
    """test_graceful_shutdown.py's server (it stops it with SIGTERM)."""
    proc = _launched["busy"]
    proc.wait_ready()
    return proc


@pytest.fixture(scope="session")
def offline_llm(server_model):
    """The same checkpoint through the offline API: the reference for greedy server outputs."""
    import torch

    from nanoserve import LLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core machine: more threads only spin
    yield LLM(str(server_model), max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=256)
    torch.set_num_threads(threads)
