"""Test helpers: the real `nanoserve serve` in a subprocess on a free loopback port; /metrics parsing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

API_KEY = "test-key"

# The shared test server: a short context and a small body cap make the limits cheap to hit.
MAX_MODEL_LEN = 512
MAX_BODY_BYTES = 65536
SERVER_ARGS = (
    "--api-key", API_KEY, "--served-model-name", "tiny",
    "--max-model-len", str(MAX_MODEL_LEN), "--max-request-body-bytes", str(MAX_BODY_BYTES),
    "--num-gpu-blocks-override", "256", "--max-num-seqs", "64",
)
# The server that test_graceful_shutdown.py kills: two running slots, at most one waiting request, and a long
# context so that a "long" request (LONG_MAX_TOKENS steps) cannot end within the grace period even on a
# quick machine (a tiny model decodes one sequence at over 1,000 tok/s there).
SHUTDOWN_GRACE_S = 1.5
BUSY_MAX_MODEL_LEN = 16384
LONG_MAX_TOKENS = 16000
BUSY_SERVER_ARGS = (
    "--max-num-seqs", "2", "--max-num-queued-reqs", "1", "--shutdown-grace-s", str(SHUTDOWN_GRACE_S),
    "--num-gpu-blocks-override", str(2 * BUSY_MAX_MODEL_LEN // 16 + 64),
    "--max-model-len", str(BUSY_MAX_MODEL_LEN),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m nanoserve.cli serve ...` as a child process; its log goes to a file."""

    def __init__(self, model_dir: Path, log_path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # One torch thread: tiny models on a shared 2-core machine only lose to spin-waiting.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "nanoserve.cli", "serve", "--model", str(model_dir),
               "--port", str(self.port), *args]
        self._log = open(log_path, "w")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def start_server(model_dir: Path, log_path: Path, *args: str) -> ServerProcess:
    server = ServerProcess(model_dir, log_path, *args)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def launch_main_and_victim(
    server_model: Path, long_model: Path, logs: Path, name: str, main_args: tuple[str, ...],
    parallel_args: tuple[str, ...],
) -> dict[str, ServerProcess]:
    """Two servers started together so their start-ups overlap: "main" (the core tests) and "victim" (a
    long-context model whose worker or replica a test kills), both with `parallel_args` (-tp 2, -dp 2)."""
    victim_args = (*parallel_args, "--shutdown-grace-s", "1", "--max-model-len", str(BUSY_MAX_MODEL_LEN),
                   "--num-gpu-blocks-override", str(2 * BUSY_MAX_MODEL_LEN // 16 + 64))
    return {"main": ServerProcess(server_model, logs / f"{name}_main.log", *main_args),
            "victim": ServerProcess(long_model, logs / f"{name}_victim.log", *victim_args)}


def metric_values(url: str) -> dict[str, float]:
    """GET /metrics as {"name{label=value,...}": value} plus {"name": value} for unlabelled lookups.

    Labels other than model_name and engine are kept in the key, e.g.
    `nanoserve:request_success_total{abort}`; the engine replicas' samples are added up (see
    `replica_metric_values` for them one by one).
    """
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=5.0).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            extra = [v for k, v in sorted(sample.labels.items()) if k not in ("model_name", "engine")]
            key = sample.name + (f"{{{','.join(extra)}}}" if extra else "")
            out[key] = out.get(key, 0.0) + sample.value
    return out


def replica_metric_values(url: str, name: str) -> dict[str, float]:
    """One engine metric per replica: {engine label: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=5.0).text
    return {sample.labels["engine"]: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name}
