"""Worker processes live and die with the engine: shutdown, a killed worker, a killed or interrupted
engine process. Nothing may hang (each wait has a deadline) and no worker may outlive its engine."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nanoserve import SamplingParams
from nanoserve.config import EngineArgs
from nanoserve.errors import EngineDeadError

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by a parent that is itself gone) is not running
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_tp_flag_short_and_long():
    import argparse

    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    assert EngineArgs.from_cli_args(parser.parse_args(["-tp", "2"]), model="m").tensor_parallel_size == 2
    assert EngineArgs.from_cli_args(parser.parse_args(["--tensor-parallel-size", "3"]),
                                    model="m").tensor_parallel_size == 3
    assert EngineArgs.from_cli_args(parser.parse_args([]), model="m").tensor_parallel_size == 1


def test_shutdown_leaves_no_child_process(tiny_llama, make_llm):
    llm = make_llm(tiny_llama, 2)
    pids = llm.llm_engine.runner.step_sink.worker_pids()
    assert len(pids) == 1 and all(_alive(p) for p in pids)
    assert llm.generate(["abc"], SamplingParams(max_tokens=3), use_tqdm=False)[0].outputs[0].token_ids
    llm.shutdown()
    assert _wait_gone(pids, 5.0) == []
    assert multiprocessing.active_children() == []
    llm.shutdown()  # idempotent


def test_a_killed_worker_fails_generate_within_seconds(tiny_llama, make_llm):
    llm = make_llm(tiny_llama, 2)
    (pid,) = llm.llm_engine.runner.step_sink.worker_pids()
    result: dict = {}

    def generate() -> None:
        try:
            llm.generate(["abc"] * 4, SamplingParams(max_tokens=900, ignore_eos=True), use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            result["error"] = e
        result["end"] = time.monotonic()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    time.sleep(1.0)  # mid-generation: 900 tokens take far longer
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=30)
    assert not thread.is_alive(), "generate hung after a worker died"
    assert isinstance(result.get("error"), EngineDeadError), result
    assert "worker 1" in str(result["error"]) and "died" in str(result["error"])
    assert result["end"] - killed < 15
    with pytest.raises(EngineDeadError):  # the engine stays dead: a clear error, not a hang
        llm.generate(["abc"], SamplingParams(max_tokens=2), use_tqdm=False)


ENGINE_SCRIPT = """
import json, sys
from nanoserve import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(sys.argv[1], tensor_parallel_size=2, dtype="float32", num_cpu_threads=1)
    print(json.dumps(llm.llm_engine.runner.step_sink.worker_pids()), flush=True)
    while True:
        llm.generate(["abc"] * 2, SamplingParams(max_tokens=50, ignore_eos=True), use_tqdm=False)
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT to the process group (Ctrl-C)"])
def test_workers_exit_with_their_engine_process(how, tiny_llama):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # Start as a terminal would: a shell's background job (`make test &`, CI runners) inherits SIGINT
    # ignored, and a Python started that way never turns Ctrl-C into KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-c", ENGINE_SCRIPT, str(tiny_llama)], stdout=subprocess.PIPE,
                            env=env, start_new_session=True, text=True, preexec_fn=_default_sigint)
    try:
        pids = json.loads(proc.stdout.readline())
        assert pids and all(_alive(p) for p in pids)
        time.sleep(0.5)  # generating
        if how.startswith("SIGINT"):
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, getattr(signal, how))
        proc.wait(timeout=20)
        assert _wait_gone(pids, 10.0) == [], f"orphan worker(s) after {how}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
