"""Tool-call parsers on recorded model outputs: the calls and content found, malformed outputs as plain
content, and streaming in random-sized pieces giving exactly the non-streamed result."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from nanoserve.server.tool_parsers import (
    NamedFunctionParser,
    RequiredToolsParser,
    ToolCallStream,
    ToolParser,
    get_tool_parser,
    required_schema,
)

# Outputs in the shapes Hermes-2-Pro / Qwen2.5 and Llama 3.1 write them.
HERMES = {
    "one call": (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
        '</tool_call>',
        None, [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    "text then two calls": (
        "I'll look up both.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
        "</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"Europe/Paris\"}}\n"
        "</tool_call>",
        "I'll look up both.\n", [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})]),
    "nested, braces and escapes in strings": (
        '<tool_call>{"name": "run", "arguments": {"code": "if x: {\\"a\\": \\"}\\"}", "opts": '
        '{"n": [1, 2.5e3, -3], "ok": true, "none": null}}}</tool_call>',
        None, [("run", {"code": 'if x: {"a": "}"}',
                        "opts": {"n": [1, 2.5e3, -3], "ok": True, "none": None}})]),
    "name after arguments, no closing tag": (
        '<tool_call>\n{"arguments": {"q": "caf\\u00e9"}, "name": "search"}',
        None, [("search", {"q": "café"})]),
    "no arguments": ('<tool_call>{"name": "now"}</tool_call>', None, [("now", {})]),
    "unicode text": ("Voilà 🌤 <tool_call>{\"name\": \"w\", \"arguments\": {\"c\": \"Zürich\"}}</tool_call>",
                     "Voilà 🌤 ", [("w", {"c": "Zürich"})]),
}
HERMES_PLAIN = [
    "The weather in Paris is sunny, 21°C.",
    "Use <tool_ to call things, or <b>bold</b>.",
    "<tool_call>\nnot json at all\n</tool_call>",
    '<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>',  # unbalanced
    '<tool_call>{"name": "f", "arguments": {"a": 1}',  # cut off by max_tokens
    '<tool_call>{"name": 3, "arguments": {}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>',  # arguments not an object
    '<tool_call>{"name": "f", "arguments": {}} trailing</tool_call>',
]
LLAMA3 = {
    "one call": ('{"name": "get_weather", "parameters": {"city": "San Francisco, CA"}}',
                 [("get_weather", {"city": "San Francisco, CA"})]),
    "python tag, two calls": (
        '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": [1, {"y": "}"}]}}',
        [("a", {}), ("b", {"x": [1, {"y": "}"}]})]),
    "arguments key, blanks": (
        '\n {"name": "f", "arguments": {"s": "a;b"}} ;\n{"name": "g", "parameters": {}}\n',
        [("f", {"s": "a;b"}), ("g", {})]),
}
LLAMA3_PLAIN = [
    "The answer is 42.",
    'Sure: {"name": "f", "parameters": {}}',
    '{"name": "f", "parameters": {}} and then some text',
    '{"name": "f", "parameters": {"a": }}',
    '{"name": "f", "parameters": {"a": 1',
    "{not json}",
    "<|python",
]


def streamed(parser: ToolParser, text: str, seed: int, max_calls: int | None = None):
    """(content, [(id, name, arguments)]) from feeding `text` in random pieces of 1-7 characters."""
    rng = random.Random(seed)
    stream = ToolCallStream(parser, max_calls)
    content, calls = [], {}
    i = 0
    while True:
        piece = text[i:i + rng.randint(1, 7)]
        i += len(piece)
        final = i >= len(text)
        c, deltas = stream.push(piece, final=final)
        content.append(c)
        for d in deltas:
            if d.id is not None:
                assert d.index == len(calls) and d.name is not None  # the first delta names the call
                calls[d.index] = [d.id, d.name, d.arguments]
            else:
                assert d.name is None
                calls[d.index][2] += d.arguments
        if final:
            return "".join(content), [tuple(v) for v in calls.values()]


def assert_calls(calls, want):
    assert [(c.name, json.loads(c.arguments)) for c in calls] == want


@pytest.mark.parametrize("case", HERMES)
def test_hermes_finds_the_calls_streamed_or_not(case):
    text, content, want = HERMES[case]
    parser = get_tool_parser("hermes")
    got = parser.extract(text)
    assert got.content == content
    assert_calls(got.tool_calls, want)
    for seed in range(20):
        s_content, s_calls = streamed(parser, text, seed)
        assert s_content == (content or "")
        assert [(name, args) for _, name, args in s_calls] == [(c.name, c.arguments) for c in got.tool_calls]
        assert len({i for i, _, _ in s_calls}) == len(s_calls)


@pytest.mark.parametrize("text", HERMES_PLAIN)
def test_hermes_malformed_or_plain_output_is_content(text):
    parser = get_tool_parser("hermes")
    got = parser.extract(text)
    assert (got.content, got.tool_calls) == (text, [])
    if '"name": "f"' not in text:  # a named call may already have been streamed before it broke
        for seed in range(10):
            assert streamed(parser, text, seed) == (text, [])


@pytest.mark.parametrize("case", LLAMA3)
def test_llama3_json_finds_the_calls_streamed_or_not(case):
    text, want = LLAMA3[case]
    parser = get_tool_parser("llama3_json")
    got = parser.extract(text)
    assert got.content is None
    assert_calls(got.tool_calls, want)
    for seed in range(20):
        s_content, s_calls = streamed(parser, text, seed)
        assert s_content == ""
        assert [(name, args) for _, name, args in s_calls] == [(c.name, c.arguments) for c in got.tool_calls]


@pytest.mark.parametrize("text", LLAMA3_PLAIN)
def test_llama3_json_malformed_or_plain_output_is_content(text):
    parser = get_tool_parser("llama3_json")
    got = parser.extract(text)
    assert (got.content, got.tool_calls) == (text, [])
    if not text.startswith('{"name": "f"'):
        for seed in range(10):
            assert streamed(parser, text, seed) == (text, [])


def test_plain_text_streams_without_waiting_except_for_a_possible_marker():
    stream = ToolCallStream(get_tool_parser("hermes"))
    assert stream.push("Hello <tool") == ("Hello ", [])  # "<tool" may become <tool_call>
    assert stream.push("box> ok") == ("<toolbox> ok", [])
    llama = ToolCallStream(get_tool_parser("llama3_json"))
    assert llama.push("  ") == ("", [])
    assert llama.push("Hi") == ("  Hi", [])


def test_max_calls_keeps_only_the_first_call_when_streaming():
    text = HERMES["text then two calls"][0]
    _, calls = streamed(get_tool_parser("hermes"), text, 0, max_calls=1)
    assert [name for _, name, _ in calls] == ["get_weather"]


def test_required_output_is_read_back_streamed_or_not():
    text = ' [{"name": "get_weather", "parameters": {"city": "Oslo"}}, {"name": "now", "parameters": {}}]'
    parser = RequiredToolsParser()
    got = parser.extract(text)
    assert_calls(got.tool_calls, [("get_weather", {"city": "Oslo"}), ("now", {})])
    assert got.content is None
    for seed in range(10):
        assert [(n, a) for _, n, a in streamed(parser, text, seed)[1]] == \
            [(c.name, c.arguments) for c in got.tool_calls]
    assert parser.extract('[{"name": "get_weather", "parameters": {"ci').tool_calls == []  # cut short


def test_named_output_is_the_arguments_streamed_or_not():
    text = '{"city": "Oslo", "days": 3} '
    parser = NamedFunctionParser("forecast")
    got = parser.extract(text)
    assert_calls(got.tool_calls, [("forecast", {"city": "Oslo", "days": 3})])
    for seed in range(10):
        content, calls = streamed(parser, text, seed)
        assert (content, [(n, a) for _, n, a in calls]) == ("", [("forecast", '{"city": "Oslo", "days": 3}')])


def test_required_schema_accepts_calls_to_the_tools_only():
    functions = [
        {"name": "get_weather",
         "parameters": {"type": "object", "properties": {"city": {"$ref": "#/$defs/city"}},
                        "required": ["city"], "$defs": {"city": {"type": "string"}}}},
        {"name": "now"},
    ]
    schema = required_schema(functions, parallel=True)
    jsonschema.validate([{"name": "get_weather", "parameters": {"city": "Oslo"}},
                         {"name": "now", "parameters": {}}], schema)
    for bad in ([], [{"name": "other", "parameters": {}}],
                [{"name": "get_weather", "parameters": {"city": 1}}], [{"name": "get_weather"}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    single = required_schema(functions, parallel=False)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "now", "parameters": {}}] * 2, single)
