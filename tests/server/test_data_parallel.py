"""`--data-parallel-size 2`: two engine processes behind one server.

First the front (DataParallelEngine) over in-process fake engines: routing, aborts reaching the replica
that runs the request, a dead replica failing only its own requests, per-replica metrics. Then the real
thing: `nanoserve serve -dp 2` subprocesses (the server suite's core tests, greedy outputs identical to
one engine, prefix affinity, a disconnect freeing KV on its replica, SIGTERM with no orphan processes,
and kill -9 of one replica).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time

import httpx
import psutil
import pytest
from fake_engine import FakeEngine, expected_tokens
from server_process import (
    API_KEY,
    BUSY_MAX_MODEL_LEN,
    LONG_MAX_TOKENS,
    MAX_MODEL_LEN,
    ServerProcess,
    launch_main_and_victim,
    metric_values,
    replica_metric_values,
)

from nanoserve.engine.async_engine import AsyncLLMEngine, EngineDeadError
from nanoserve.engine.data_parallel import DataParallelEngine, sum_stats, threads_per_replica
from nanoserve.engine.dp_router import PrefixAffinityRouter
from nanoserve.sampling_params import SamplingParams
from nanoserve.server.app import build_app

DP_ARGS = ("--api-key", API_KEY, "--served-model-name", "tiny", "--max-model-len", str(MAX_MODEL_LEN),
           "--num-gpu-blocks-override", "256", "--max-num-seqs", "64", "--data-parallel-size", "2")
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


# ---------------------------------------------------------------------------------------- front, fakes
def fake_dp(*engines: FakeEngine) -> DataParallelEngine:
    replicas = [AsyncLLMEngine(e) for e in engines]
    router = PrefixAffinityRouter(len(engines), engines[0].cache_config.block_size)
    return DataParallelEngine(replicas, router)


def test_requests_spread_and_an_abort_reaches_the_replica_running_it():
    fakes = FakeEngine(max_model_len=4096, step_s=0.002), FakeEngine(max_model_len=4096, step_s=0.002)

    async def go():
        dp = fake_dp(*fakes)
        dp.start()
        try:
            params = SamplingParams(max_tokens=2000, ignore_eos=True)
            a = await dp.add_request("a", [10, 11, 12], params)
            b = await dp.add_request("b", [20, 21, 22], params)
            await a.__anext__()
            await b.__anext__()
            assert [len(f.requests) for f in fakes] == [1, 1]  # one each: b avoided a's busy replica
            holder_of_b = 0 if "b" in fakes[0].requests else 1
            b.abort()
            for _ in range(200):
                if "b" in fakes[holder_of_b].aborted:
                    break
                await asyncio.sleep(0.01)
            assert fakes[holder_of_b].aborted == ["b"] and fakes[1 - holder_of_b].aborted == []
            assert dp.get_stats().num_running_requests == 1
        finally:
            await dp.shutdown(grace_s=0)

    asyncio.run(asyncio.wait_for(go(), 30))


def test_a_dead_replica_fails_its_own_requests_and_the_others_keep_serving():
    dying, healthy = FakeEngine(crash_on_step=3), FakeEngine()

    async def go():
        dp = fake_dp(dying, healthy)
        dp.start()
        try:
            doomed = await dp.add_request("doomed", [10, 11], SamplingParams(max_tokens=50, ignore_eos=True))
            assert "doomed" in dying.requests
            with pytest.raises(EngineDeadError):
                async for _ in doomed:
                    pass
            assert dp.dead_error is not None  # /health: unhealthy
            for i in range(3):  # every new request goes to the live replica
                prompt = [30 + i, 31]
                stream = await dp.add_request(f"ok{i}", prompt, SamplingParams(max_tokens=4, ignore_eos=True))
                tokens = [t async for out in stream for t in out.outputs[0].token_ids]
                assert tokens == expected_tokens(prompt, 4)
        finally:
            await dp.shutdown(grace_s=0)

    asyncio.run(asyncio.wait_for(go(), 30))


def test_metrics_and_health_per_replica():
    fakes = FakeEngine(), FakeEngine()
    dp = fake_dp(*fakes)
    app = build_app(dp, ["fake"], "fake")

    async def go():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                for i in range(4):
                    r = await c.post("/v1/completions", json={"prompt": f"p{i}", "max_tokens": 3})
                    assert r.status_code == 200
                for _ in range(100):
                    if dp.get_stats().generation_tokens == 12:
                        break
                    await asyncio.sleep(0.01)
                return (await c.get("/metrics")).text, (await c.get("/health")).status_code

    text, health = asyncio.run(asyncio.wait_for(go(), 30))
    assert health == 200
    for i, fake in enumerate(fakes):
        line = f'nanoserve:generation_tokens_total{{engine="{i}",model_name="fake"}}'
        assert f"{line} {float(fake.get_stats().generation_tokens)}" in text
    assert all(f.get_stats().generation_tokens > 0 for f in fakes)  # idle replicas take turns


def test_stats_add_up_and_threads_split():
    from nanoserve.config import EngineArgs

    a, b = FakeEngine().get_stats(), FakeEngine().get_stats()
    a.num_free_blocks, a.generation_tokens = a.num_total_blocks - 16, 5
    a.spec_decode_num_accepted_tokens_per_pos, b.spec_decode_num_accepted_tokens_per_pos = [3, 2, 1], [4]
    total = sum_stats([a, b])
    assert total.num_total_blocks == 2 * a.num_total_blocks and total.generation_tokens == 5
    assert total.spec_decode_num_accepted_tokens_per_pos == [7, 2, 1]  # by position, not concatenated
    assert total.kv_cache_usage == 16 / total.num_total_blocks
    args = EngineArgs(model="m", data_parallel_size=2)
    assert threads_per_replica(args, 8) == 4 and threads_per_replica(args, 1) == 1
    assert threads_per_replica(EngineArgs(model="m", data_parallel_size=2, num_cpu_threads=3), 8) == 3


def test_one_engine_refuses_to_be_several(tiny_llama):
    from nanoserve.config import EngineArgs
    from nanoserve.engine.llm_engine import LLMEngine
    from nanoserve.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="nanoserve serve"):
        LLMEngine.from_engine_args(EngineArgs(model=str(tiny_llama), data_parallel_size=2))


# ---------------------------------------------------------------------------------------- real processes
@pytest.fixture(scope="module")
def _dp_launched(server_model, tiny_model, tmp_path_factory) -> dict[str, ServerProcess]:
    """Both dp=2 servers, launched together so their start-ups overlap."""
    logs = tmp_path_factory.mktemp("dp_servers")
    long_model = tiny_model("llama", max_position_embeddings=BUSY_MAX_MODEL_LEN)
    procs = launch_main_and_victim(server_model, long_model, logs, "dp", DP_ARGS, ("-dp", "2"))
    yield procs
    for proc in procs.values():
        proc.stop()


@pytest.fixture(scope="module")
def dp_server(_dp_launched) -> ServerProcess:
    proc = _dp_launched["main"]
    proc.wait_ready(timeout_s=240)
    return proc


@pytest.fixture(scope="module")
def victim(_dp_launched) -> ServerProcess:
    proc = _dp_launched["victim"]
    proc.wait_ready(timeout_s=240)
    return proc


def replica_pids(server: ServerProcess) -> list[int]:
    """The server's engine processes (multiprocessing's spawned children), oldest first."""
    kids = psutil.Process(server.proc.pid).children()
    return sorted(k.pid for k in kids if "spawn_main" in " ".join(k.cmdline()))


def complete(url: str, prompt: str, max_tokens: int = 12, **extra) -> dict:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    resp = httpx.post(url + "/v1/completions", json=body, headers=HEADERS, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_two_engine_processes_serve_greedy_outputs_identical_to_one_engine(dp_server, offline_llm):
    assert len(replica_pids(dp_server)) == 2
    prompts = [f"The {w} of data parallel serving is" for w in ("point", "cost", "risk", "joy")]
    before = replica_metric_values(dp_server.url, "nanoserve:generation_tokens_total")
    texts = [complete(dp_server.url, p)["choices"][0]["text"] for p in prompts]
    expected = offline_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    assert texts == [o.outputs[0].text for o in expected]
    after = replica_metric_values(dp_server.url, "nanoserve:generation_tokens_total")
    assert sorted(after) == ["0", "1"]
    assert all(after[e] > before[e] for e in after)  # distinct prompts went to both replicas


def test_the_same_long_prompt_goes_back_to_the_same_replica(dp_server):
    prompt = "a long shared system prompt that spans several KV blocks " * 6
    before = replica_metric_values(dp_server.url, "nanoserve:generation_tokens_total")
    for i in range(3):
        complete(dp_server.url, prompt + str(i), max_tokens=4)
    after = replica_metric_values(dp_server.url, "nanoserve:generation_tokens_total")
    grown = sorted(after[e] - before[e] for e in after)
    assert grown == [0, 12]
    hits = replica_metric_values(dp_server.url, "nanoserve:prefix_cache_hits_total")
    assert max(hits.values()) >= 2 * 16  # the repeats found the prompt's blocks cached there


def test_chat_and_streaming(dp_server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "temperature": 0}
    resp = httpx.post(dp_server.url + "/v1/chat/completions", json=body, headers=HEADERS, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["role"] == "assistant"
    full = complete(dp_server.url, "stream me please", max_tokens=10)["choices"][0]["text"]
    parts = []
    with httpx.stream("POST", dp_server.url + "/v1/completions", headers=HEADERS, timeout=60,
                      json={"model": "tiny", "prompt": "stream me please", "max_tokens": 10, "temperature": 0,
                            "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                parts.append(json.loads(line[6:])["choices"][0]["text"])
    assert "".join(parts) == full and len(parts) > 1


def test_a_disconnect_frees_kv_on_the_replica_that_served_it(dp_server):
    url = dp_server.url
    before = metric_values(url)
    with httpx.Client(timeout=30, headers=HEADERS) as c:
        bodies = [{"model": "tiny", "prompt": f"disconnect {w}", "max_tokens": 400, "stream": True,
                   "ignore_eos": True} for w in ("one", "two")]
        with c.stream("POST", url + "/v1/completions", json=bodies[0]) as r0:
            lines0 = r0.iter_lines()
            [next(lines0) for _ in range(4)]
            with c.stream("POST", url + "/v1/completions", json=bodies[1]) as r1:
                lines1 = r1.iter_lines()
                [next(lines1) for _ in range(4)]
                running = replica_metric_values(url, "nanoserve:num_requests_running")
                assert running == {"0": 1, "1": 1}  # one on each replica
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        running = replica_metric_values(url, "nanoserve:num_requests_running")
        usage = replica_metric_values(url, "nanoserve:kv_cache_usage_perc")
        if set(running.values()) == {0} and set(usage.values()) == {0}:
            break
        time.sleep(0.05)
    assert running == {"0": 0, "1": 0} and usage == {"0": 0, "1": 0}  # no block stays in use anywhere
    after = metric_values(url)
    assert after["nanoserve:request_success_total{abort}"] == before.get(
        "nanoserve:request_success_total{abort}", 0) + 2


def test_sigterm_exits_0_and_leaves_no_engine_process(dp_server):
    kids = psutil.Process(dp_server.proc.pid).children(recursive=True)
    assert len(replica_pids(dp_server)) == 2
    assert dp_server.stop() == 0, dp_server.log()
    assert_gone(kids)


def assert_gone(procs: list[psutil.Process], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    alive = procs
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"


class LongStream(threading.Thread):
    def __init__(self, url: str, prompt: str) -> None:
        super().__init__(daemon=True)
        self.url, self.prompt = url, prompt
        self.events: list[str] = []
        self.ended_at: float | None = None

    def run(self) -> None:
        body = {"prompt": self.prompt, "max_tokens": LONG_MAX_TOKENS, "stream": True, "ignore_eos": True}
        try:
            with httpx.stream("POST", self.url + "/v1/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                    if line == "data: [DONE]" or '"error"' in line:
                        break
        except httpx.HTTPError as e:  # the server went away without a word: the test sees no error event
            self.events.append(f"transport error: {e}")
        finally:
            self.ended_at = time.monotonic()


def test_kill_9_of_one_replica_fails_its_clients_fast_and_health_reports_it(victim):
    pids = replica_pids(victim)
    assert len(pids) == 2
    streams = [LongStream(victim.url, "victim one"), LongStream(victim.url, "victim two")]
    for s in streams:
        s.start()
        deadline = time.monotonic() + 30
        while len(s.events) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(s.events) >= 3
    assert replica_metric_values(victim.url, "nanoserve:num_requests_running") == {"0": 1, "1": 1}
    killed_at = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    deadline = killed_at + 10
    while time.monotonic() < deadline and all(s.ended_at is None for s in streams):
        time.sleep(0.02)
    ended = [s for s in streams if s.ended_at is not None]
    assert len(ended) == 1, "the killed replica's client got no answer within 10 s"
    print(f"\nkill -9 of a replica -> its client's error after {ended[0].ended_at - killed_at:.2f} s")
    error = json.loads(ended[0].events[-1])["error"]
    assert error["code"] == 500 and "died" in error["message"]
    assert streams[1 - streams.index(ended[0])].is_alive()  # the other replica's stream goes on
    health = httpx.get(victim.url + "/health", timeout=5)
    assert health.status_code == 500 and "died" in health.text
    # The surviving replica still serves new requests.
    resp = httpx.post(victim.url + "/v1/completions", json={"prompt": "still there?", "max_tokens": 3},
                      timeout=30)
    assert resp.status_code == 200, resp.text
    kids = psutil.Process(victim.proc.pid).children(recursive=True)
    assert victim.stop() == 0, victim.log()
    assert_gone(kids)
