"""tool_choice "required" and a named function on real models (a tiny random one and the demo model),
through the HTTP layer and the `openai` client: the output is forced by structured outputs, so every
call names one of the tools and its arguments validate against that function's schema (generated
schemas: nested objects, arrays, enums, bounded numbers, required fields), streamed or not."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest
from json_schemas import schemas_within
from tiny_models import TOOL_CHAT_TEMPLATE

from nanoserve.config import EngineArgs
from nanoserve.demo import DEMO_MODEL_NAME, MODELS_DIR
from nanoserve.engine.async_engine import AsyncLLMEngine
from nanoserve.server.app import build_app

# model -> (max_model_len, longest arguments in characters, number of tools). The tiny model's template
# writes the tools into the prompt (one token per character); the demo model's context is 128
# one-character tokens and its template leaves tools out, so its tools are small and few.
MODELS = {"tiny": (2048, 200, 5), "demo": (128, 40, 3)}


def tools_for(model: str) -> list[dict]:
    _, max_chars, count = MODELS[model]
    schemas = schemas_within(seed=16, count=count, max_chars=max_chars, max_depth=2, max_props=3)
    return [{"type": "function", "function": {"name": f"fn_{i}", "description": f"tool {i}", "parameters": s}}
            for i, s in enumerate(schemas)]


def requests_for(model: str, tools: list[dict]) -> list[dict]:
    """Named calls to every tool, and "required" over all tools (parallel or not), greedy and sampled."""
    out = []
    for i, tool in enumerate(tools):
        for temperature in (0.0, 1.0):
            out.append({"tools": tools, "temperature": temperature, "seed": i,
                        "tool_choice": {"type": "function", "function": {"name": tool["function"]["name"]}}})
    for seed in range(6):
        parallel = model == "tiny" and seed % 2 == 1
        out.append({"tools": tools, "temperature": 0.0 if seed == 0 else 1.0, "seed": seed,
                    "tool_choice": "required", "parallel_tool_calls": parallel})
    return out


async def collect_stream(client, **kwargs) -> tuple[list[tuple[str, str]], str | None, str]:
    calls: dict[int, list[str]] = {}
    finish, content = None, ""
    async for chunk in await client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            content += c.delta.content or ""
            for d in c.delta.tool_calls or []:
                if d.id is not None:
                    calls[d.index] = [d.function.name, d.function.arguments or ""]
                else:
                    calls[d.index][1] += d.function.arguments or ""
            finish = c.finish_reason or finish
    return [tuple(v) for v in calls.values()], finish, content


def run_requests(model_dir, max_model_len: int, bodies: list[dict]):
    engine = AsyncLLMEngine.from_engine_args(EngineArgs(model=str(model_dir), max_model_len=max_model_len,
                                                        num_gpu_blocks_override=1024))
    app = build_app(engine, ["m"], str(model_dir))

    async def one(client, body):
        kwargs = dict(model="m", messages=[{"role": "user", "content": "call a tool"}], **body)
        try:
            whole = await client.chat.completions.create(**kwargs)
        except openai.BadRequestError as e:
            return e
        return whole.choices[0], await collect_stream(client, **kwargs)

    async def main():
        engine.start()
        try:
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            async with openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=http,
                                          max_retries=0, timeout=300) as client:
                return await asyncio.gather(*(one(client, b) for b in bodies))
        finally:
            await engine.shutdown(grace_s=0)

    return asyncio.run(main())


@pytest.mark.parametrize("model", list(MODELS))
def test_forced_tool_calls_validate_against_the_function_schema(model, tiny_model):
    max_model_len = MODELS[model][0]
    model_dir = (tiny_model("llama", chat_template=TOOL_CHAT_TEMPLATE, max_position_embeddings=max_model_len)
                 if model == "tiny"
                 else MODELS_DIR / DEMO_MODEL_NAME)
    tools = tools_for(model)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    bodies = requests_for(model, tools)
    bad_tool = {"type": "function", "function": {"name": "bad", "parameters": {"type": "no-such-type"}}}
    bad = {"tools": [bad_tool], "tool_choice": "required"}
    *results, bad_error = run_requests(model_dir, max_model_len, bodies + [bad])
    assert isinstance(bad_error, openai.BadRequestError) and bad_error.body["param"] == "tools", bad_error
    failures = []
    for body, (choice, (s_calls, s_finish, s_content)) in zip(bodies, results, strict=True):
        named = body["tool_choice"] if isinstance(body["tool_choice"], dict) else None
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        try:
            assert calls, f"no tool call; content {choice.message.content!r}"
            assert choice.finish_reason == ("stop" if named else "tool_calls")
            assert not choice.message.content
            if named:
                assert [name for name, _ in calls] == [named["function"]["name"]]
            elif not body["parallel_tool_calls"]:
                assert len(calls) == 1
            for name, arguments in calls:
                jsonschema.validate(json.loads(arguments), schemas[name])
            # Same seed, so the stream holds the same calls, in deltas that add up to them.
            assert (s_calls, s_finish, s_content) == (calls, choice.finish_reason, "")
        except (AssertionError, ValueError, KeyError, jsonschema.ValidationError) as e:
            failures.append((body["tool_choice"], calls, str(e)[:300]))
    assert not failures, f"{len(failures)}/{len(bodies)} failed; first: {failures[0]}"
