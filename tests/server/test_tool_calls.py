"""Tool calling through the HTTP layer with the official `openai` client: tools reach the chat
template, history with tool calls and tool results renders, "auto" turns a recorded model output into
tool calls (streamed deltas add up to the non-streamed message), and the tool_choice errors.

The engine is FakeEngine replaying a recorded output, so the parsers see exactly what a model wrote.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from fake_engine import FakeEngine
from tiny_models import EOS_ID, TOOL_CHAT_TEMPLATE

from nanoserve.cli import main
from nanoserve.engine.async_engine import AsyncLLMEngine
from nanoserve.server.app import build_app
from nanoserve.server.tool_parsers import get_tool_parser

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "Weather and time in Paris?"}]
HERMES_OUTPUT = ('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                 '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
LLAMA3_OUTPUT = ('{"name": "get_weather", "parameters": {"city": "Paris"}}; '
                 '{"name": "get_time", "parameters": {}}')


class ScriptedEngine(FakeEngine):
    """Every request generates `script` then EOS; the prompts it was given are kept."""

    def __init__(self, script: str) -> None:
        super().__init__(max_model_len=1024, step_s=0.0005)
        self.tokenizer.chat_template = TOOL_CHAT_TEMPLATE
        self.script_ids = list(self.tokenizer(script, add_special_tokens=False).input_ids) + [EOS_ID]
        self.prompts: list[str] = []

    def add_request(self, request_id, prompt, params, arrival_time=None) -> None:
        super().add_request(request_id, prompt, params, arrival_time)
        self.prompts.append(self.tokenizer.decode(self.requests[request_id].prompt_token_ids))

    def _next_token(self, req, index, seq) -> int:
        """The script's next token instead of FakeEngine's arithmetic one."""
        return self.script_ids[min(len(seq.token_ids), len(self.script_ids) - 1)]


def run_with_client(script: str, parser: str | None, go):
    """Run `await go(client, engine)` against an app over a ScriptedEngine; returns its result."""
    fake = ScriptedEngine(script)
    engine = AsyncLLMEngine(fake)
    app = build_app(engine, ["fake"], "/fake", auto_tool_parser=get_tool_parser(parser) if parser else None)

    async def main():
        engine.start()
        try:
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            async with openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=http,
                                          max_retries=0) as client:
                return await go(client, fake)
        finally:
            await engine.shutdown(grace_s=0)

    return asyncio.run(asyncio.wait_for(main(), 30))


async def streamed(client, **kwargs):
    """(content, {index: [id, name, arguments]}, finish_reason) from the chunks of a streamed reply."""
    content, calls, finish = "", {}, None
    stream = await client.chat.completions.create(model="fake", stream=True, **kwargs)
    async for chunk in stream:
        for c in chunk.choices:
            content += c.delta.content or ""
            for d in c.delta.tool_calls or []:
                if d.id is not None:
                    assert d.index not in calls and d.type == "function" and d.function.name
                    calls[d.index] = [d.id, d.function.name, d.function.arguments or ""]
                else:
                    assert d.function.name is None
                    calls[d.index][2] += d.function.arguments or ""
            finish = c.finish_reason or finish
    return content, calls, finish


@pytest.mark.parametrize(("parser", "output", "content"),
                         [("hermes", HERMES_OUTPUT, "Checking.\n"), ("llama3_json", LLAMA3_OUTPUT, None)])
def test_auto_tool_choice_returns_the_parsed_calls_streamed_or_not(parser, output, content):
    async def go(client, fake):
        whole = await client.chat.completions.create(model="fake", messages=ASK, tools=[WEATHER, TIME])
        return whole, await streamed(client, messages=ASK, tools=[WEATHER, TIME], tool_choice="auto"), fake

    whole, (s_content, s_calls, s_finish), fake = run_with_client(output, parser, go)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == content
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
        [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert all(c.type == "function" and c.id.startswith("call_") for c in calls)
    assert len({c.id for c in calls}) == 2
    assert s_finish == "tool_calls" and s_content == (content or "")
    assert [(n, a) for _, n, a in s_calls.values()] == \
        [(c.function.name, c.function.arguments) for c in calls]
    # The tools reached the prompt through the chat template.
    assert all('"name": "get_weather"' in p and '"name": "get_time"' in p for p in fake.prompts)


def test_auto_without_a_call_is_plain_content_and_none_ignores_calls():
    async def go(client, _):
        plain = await client.chat.completions.create(model="fake", messages=ASK, tools=[WEATHER])
        none = await client.chat.completions.create(model="fake", messages=ASK, tools=[WEATHER],
                                                    tool_choice="none")
        return plain, none

    plain, none = run_with_client("It is sunny.", "hermes", go)
    assert plain.choices[0].message.content == "It is sunny." and not plain.choices[0].message.tool_calls
    assert plain.choices[0].finish_reason == "stop"
    none_after_call = run_with_client(HERMES_OUTPUT, "hermes", lambda c, _: c.chat.completions.create(
        model="fake", messages=ASK, tools=[WEATHER], tool_choice="none"))
    assert none_after_call.choices[0].message.content == HERMES_OUTPUT
    assert not none_after_call.choices[0].message.tool_calls
    assert none_after_call.choices[0].finish_reason == "stop"


def test_parallel_tool_calls_false_keeps_the_first_call():
    async def go(client, _):
        kwargs = dict(messages=ASK, tools=[WEATHER, TIME], parallel_tool_calls=False)
        whole = await client.chat.completions.create(model="fake", **kwargs)
        return whole, await streamed(client, **kwargs)

    whole, (_, s_calls, _) = run_with_client(HERMES_OUTPUT, "hermes", go)
    assert [c.function.name for c in whole.choices[0].message.tool_calls] == ["get_weather"]
    assert [n for _, n, _ in s_calls.values()] == ["get_weather"]


def test_history_with_tool_calls_and_tool_results_reaches_the_template():
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]

    async def go(client, fake):
        resp = await client.chat.completions.create(model="fake", messages=history, tools=[WEATHER])
        return resp, fake.prompts[0]

    resp, prompt = run_with_client("Sunny.", "hermes", go)
    assert resp.choices[0].message.content == "Sunny."
    # The arguments reach the template as an object (rendered by tojson), not as a quoted string.
    assert ('<assistant><tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
            in prompt)
    assert "<tool_response id=call_1>sunny, 21 C\n<assistant>" in prompt


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"tools": [WEATHER]}, "tools", "--enable-auto-tool-choice"),
    ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice", "--enable-auto-tool-choice"),
    ({"tool_choice": "required"}, "tool_choice", "`tools` must be set"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "'nope'"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "body.tools.0.function.name",
     ""),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "body.tool_choice", ""),
])
def test_tool_choice_errors_are_400s_naming_the_field(body, param, message):
    async def go(client, _):
        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="fake", messages=ASK, **body)
        return e.value

    err = run_with_client("x", None, go)
    assert err.status_code == 400
    assert err.body["param"].startswith(param) and message in err.body["message"]


def test_serve_flags_choose_the_parser(tiny_model, tmp_path):
    from server_process import start_server

    with pytest.raises(SystemExit, match="--enable-auto-tool-choice needs --tool-call-parser"):
        main(["serve", "--enable-auto-tool-choice"])
    model = tiny_model("llama", chat_template=TOOL_CHAT_TEMPLATE)
    server = start_server(model, tmp_path / "serve.log", "--enable-auto-tool-choice", "--tool-call-parser",
                          "llama3_json", "--max-model-len", "512", "--num-gpu-blocks-override", "64")
    try:
        body = {"messages": ASK, "tools": [WEATHER], "max_tokens": 8}
        resp = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        streamed = httpx.post(server.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60)
    finally:
        assert server.stop() == 0
    # "auto" is accepted (without the flags it is a 400); a random model's text is plain content.
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["tool_calls"] == []
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
