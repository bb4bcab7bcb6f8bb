"""The HTTP layer over a fake engine that crashes: the only 500s are for engine death, streamed or not."""

from __future__ import annotations

import asyncio
import json

import httpx
from fake_engine import FakeEngine

from nanoserve.engine.async_engine import AsyncLLMEngine
from nanoserve.server.app import build_app


def test_engine_death_is_a_500_in_stream_and_out_and_health_reports_it():
    engine = AsyncLLMEngine(FakeEngine(step_s=0.002, crash_on_step=4))
    app = build_app(engine, ["fake"], "/fake")

    async def go():
        engine.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                streamed = await c.post("/v1/completions", json={"prompt": "abc", "max_tokens": 50,
                                                                 "stream": True})
                after = await c.post("/v1/completions", json={"prompt": "abc", "max_tokens": 5})
                health = await c.get("/health")
                return streamed, after, health
        finally:
            await engine.shutdown(grace_s=0)

    streamed, after, health = asyncio.run(asyncio.wait_for(go(), 30))
    assert streamed.status_code == 200  # the stream had started before the crash
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == 500 and err["type"] == "InternalServerError" and "injected crash" in err["message"]
    assert any("choices" in json.loads(e) for e in events[:-2])  # tokens came before the error
    assert after.status_code == 500 and after.json()["error"]["type"] == "InternalServerError"
    assert health.status_code == 500


def test_metrics_come_from_the_engine_stats():
    fake = FakeEngine(step_s=0.001)
    engine = AsyncLLMEngine(fake)
    app = build_app(engine, ["fake"], "/fake")

    async def go():
        engine.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                done = await c.post("/v1/completions", json={"prompt": "abc", "max_tokens": 5})
                # The response can beat the engine thread's stats refresh after that step.
                for _ in range(100):
                    if engine.get_stats().generation_tokens == 5:
                        break
                    await asyncio.sleep(0.01)
                return done, (await c.get("/metrics")).text
        finally:
            await engine.shutdown(grace_s=0)

    done, text = asyncio.run(asyncio.wait_for(go(), 30))
    assert done.status_code == 200
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("nanoserve:") and 'model_name="fake"' in line and "_bucket" not in line}
    stats = fake.get_stats()
    assert values['nanoserve:prompt_tokens_total{engine="0",model_name="fake"}'] == stats.prompt_tokens == 3
    generated = values['nanoserve:generation_tokens_total{engine="0",model_name="fake"}']
    assert generated == stats.generation_tokens == 5
    assert values['nanoserve:num_requests_running{engine="0",model_name="fake"}'] == 0
    assert values['nanoserve:kv_cache_usage_perc{engine="0",model_name="fake"}'] == 0
