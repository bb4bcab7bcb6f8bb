"""`nanoserve serve --tensor-parallel-size 2`: the server suite's core tests against a real subprocess
whose engine runs a worker process for rank 1, then `kill -9` of that worker mid-generation, and
`-dp 2 -tp 2` (two replicas, each with a worker of its own)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import psutil
import pytest
from server_process import (
    API_KEY,
    BUSY_MAX_MODEL_LEN,
    LONG_MAX_TOKENS,
    MAX_MODEL_LEN,
    ServerProcess,
    launch_main_and_victim,
    metric_values,
)
from test_data_parallel import LongStream, assert_gone, complete, replica_pids

from nanoserve.sampling_params import SamplingParams

TP_ARGS = ("--api-key", API_KEY, "--served-model-name", "tiny", "--max-model-len", str(MAX_MODEL_LEN),
           "--num-gpu-blocks-override", "256", "--max-num-seqs", "64", "--tensor-parallel-size", "2")
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
ERROR_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def _tp_launched(server_model, tiny_model, tmp_path_factory) -> dict[str, ServerProcess]:
    """Both tp=2 servers, launched together so their start-ups overlap."""
    logs = tmp_path_factory.mktemp("tp_servers")
    long_model = tiny_model("llama", max_position_embeddings=BUSY_MAX_MODEL_LEN)
    procs = launch_main_and_victim(server_model, long_model, logs, "tp", TP_ARGS, ("-tp", "2"))
    yield procs
    for proc in procs.values():
        proc.stop()


@pytest.fixture(scope="module")
def tp_server(_tp_launched) -> ServerProcess:
    proc = _tp_launched["main"]
    proc.wait_ready(timeout_s=240)
    return proc


@pytest.fixture(scope="module")
def victim(_tp_launched) -> ServerProcess:
    proc = _tp_launched["victim"]
    proc.wait_ready(timeout_s=240)
    return proc


def test_greedy_completions_identical_to_one_process(tp_server, offline_llm):
    assert len(replica_pids(tp_server)) == 1  # rank 1's worker (rank 0 is the server process)
    prompts = [f"The {w} of tensor parallel serving is" for w in ("point", "cost", "risk")]
    texts = [complete(tp_server.url, p)["choices"][0]["text"] for p in prompts]
    expected = offline_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    assert texts == [o.outputs[0].text for o in expected]


def test_chat_and_streaming(tp_server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "temperature": 0}
    resp = httpx.post(tp_server.url + "/v1/chat/completions", json=body, headers=HEADERS, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["role"] == "assistant"
    full = complete(tp_server.url, "stream me please", max_tokens=10)["choices"][0]["text"]
    parts = []
    with httpx.stream("POST", tp_server.url + "/v1/completions", headers=HEADERS, timeout=60,
                      json={"model": "tiny", "prompt": "stream me please", "max_tokens": 10, "temperature": 0,
                            "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                parts.append(json.loads(line[6:])["choices"][0]["text"])
    assert "".join(parts) == full and len(parts) > 1


def test_a_disconnect_frees_kv_on_every_rank(tp_server):
    """Every rank's pool mirrors rank 0's block table (one scheduler), so rank 0's free count is all."""
    url = tp_server.url
    before = metric_values(url)
    with httpx.Client(timeout=30, headers=HEADERS) as c:
        body = {"model": "tiny", "prompt": "disconnect me", "max_tokens": 400, "stream": True,
                "ignore_eos": True}
        with c.stream("POST", url + "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            [next(lines) for _ in range(4)]
            assert metric_values(url)["nanoserve:kv_cache_usage_perc"] > 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = metric_values(url)
        if now["nanoserve:num_requests_running"] == 0 and now["nanoserve:kv_cache_usage_perc"] == 0:
            break
        time.sleep(0.05)
    assert now["nanoserve:num_requests_running"] == 0 and now["nanoserve:kv_cache_usage_perc"] == 0
    assert now["nanoserve:request_success_total{abort}"] == before.get(
        "nanoserve:request_success_total{abort}", 0) + 1
    assert complete(url, "still serving after the abort", max_tokens=4)["choices"][0]["text"]


def test_sigterm_exits_0_and_leaves_no_worker(tp_server):
    kids = psutil.Process(tp_server.proc.pid).children(recursive=True)
    assert len(replica_pids(tp_server)) == 1
    assert tp_server.stop() == 0, tp_server.log()
    assert_gone(kids)


class BlockingCompletion(threading.Thread):
    """A long non-streaming request: its answer (status, body) arrives only when it ends."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.result: tuple[int, dict] | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        body = {"prompt": "a blocking one", "max_tokens": LONG_MAX_TOKENS, "ignore_eos": True}
        try:
            r = httpx.post(self.url + "/v1/completions", json=body, timeout=120)
            self.result = (r.status_code, r.json())
        finally:
            self.ended_at = time.monotonic()


def test_kill_9_of_a_worker_fails_every_client_fast_and_health_reports_it(victim):
    workers = replica_pids(victim)
    assert len(workers) == 1
    streams = [LongStream(victim.url, "victim one"), LongStream(victim.url, "victim two")]
    for s in streams:
        s.start()
        deadline = time.monotonic() + 30
        while len(s.events) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(s.events) >= 3
    blocking = BlockingCompletion(victim.url)
    blocking.start()
    time.sleep(0.3)
    killed_at = time.monotonic()
    os.kill(workers[0], signal.SIGKILL)
    for t in [*streams, blocking]:
        t.join(timeout=max(0.0, killed_at + ERROR_WITHIN_S - time.monotonic()))
    assert all(t.ended_at is not None for t in [*streams, blocking]), "a client got no answer within 10 s"
    print(f"\nkill -9 of a worker -> the last client's error after "
          f"{max(t.ended_at for t in [*streams, blocking]) - killed_at:.2f} s")
    for s in streams:
        error = json.loads(s.events[-1])["error"]
        assert error["code"] == 500 and "died" in error["message"], s.events[-1]
    status, body = blocking.result
    assert status == 500 and "died" in body["error"]["message"]
    health = httpx.get(victim.url + "/health", timeout=5)
    assert health.status_code == 500 and "died" in health.text
    resp = httpx.post(victim.url + "/v1/completions", json={"prompt": "anyone?", "max_tokens": 3}, timeout=30)
    assert resp.status_code == 500  # a new request is refused at once, not queued behind a dead engine
    kids = psutil.Process(victim.proc.pid).children(recursive=True)
    assert victim.stop() == 0, victim.log()
    assert_gone(kids)


def test_dp_2_with_tp_2_serves_and_leaves_no_process(server_model, offline_llm, tmp_path):
    """Two replicas, each an engine process with a worker of its own: four processes under the server."""
    server = ServerProcess(server_model, tmp_path / "dp_tp.log", *TP_ARGS, "--data-parallel-size", "2")
    try:
        server.wait_ready(timeout_s=240)
        replicas = replica_pids(server)
        assert len(replicas) == 2
        workers = [k for r in replicas for k in psutil.Process(r).children()
                   if "spawn_main" in " ".join(k.cmdline())]
        assert len(workers) == 2  # one rank-1 worker per replica
        prompts = ["dp and tp together", "each replica has two ranks"]
        texts = [complete(server.url, p)["choices"][0]["text"] for p in prompts]
        expected = offline_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
        assert texts == [o.outputs[0].text for o in expected]
        kids = psutil.Process(server.proc.pid).children(recursive=True)
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert_gone(kids)
