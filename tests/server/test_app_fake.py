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
