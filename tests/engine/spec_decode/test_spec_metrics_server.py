"""The spec_decode_* counters reach GET /metrics of the app (real engine, in process)."""

from __future__ import annotations

import asyncio
import re

import httpx
from spec_configs import draft

from nanoserve.config import EngineArgs
from nanoserve.demo import default_model
from nanoserve.engine.async_engine import AsyncLLMEngine
from nanoserve.server.app import build_app


def _value(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(2))


def test_spec_decode_metrics_through_the_server():
    engine = AsyncLLMEngine.from_engine_args(EngineArgs(model=default_model(), speculative_config=draft(3)))
    app = build_app(engine, ["toy"], default_model())

    async def go():
        engine.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                request = {"model": "toy", "prompt": "sort 9 8 7 6 5 4 3 2 1 =", "max_tokens": 30,
                           "temperature": 0}
                r = await c.post("/v1/completions", json=request)
                assert r.status_code == 200, r.text
                return r.json(), (await c.get("/metrics")).text
        finally:
            await engine.shutdown(grace_s=0)

    body, text = asyncio.run(asyncio.wait_for(go(), 60))
    assert body["choices"][0]["text"].strip() == "1 2 3 4 5 6 7 8 9"
    drafts = _value(text, "nanoserve:spec_decode_num_drafts_total")
    drafted = _value(text, "nanoserve:spec_decode_num_draft_tokens_total")
    accepted = _value(text, "nanoserve:spec_decode_num_accepted_tokens_total")
    assert 0 < drafts and 0 < accepted <= drafted <= 3 * drafts
    pattern = r'^nanoserve:spec_decode_num_accepted_tokens_per_pos_total\{[^}]*position="(\d+)"[^}]*\} (\S+)$'
    per_pos = {int(p): float(v) for p, v in re.findall(pattern, text, re.M)}
    assert sorted(per_pos) == [0, 1, 2] and sum(per_pos.values()) == accepted
