"""Structured outputs through the real server and the official `openai` client: response_format
(json_object, json_schema), vLLM's structured_outputs and guided_* fields, in completions and chat,
streaming and not; bad constraints are 400s naming the field the client sent."""

from __future__ import annotations

import json
import re
import threading

import openai
import pytest
from server_process import API_KEY

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "population": {"type": "integer", "minimum": 0, "maximum": 100000},
        "tags": {"type": "array", "items": {"enum": ["big", "old", "new"]}, "minItems": 1, "maxItems": 3},
        "location": {"type": "object", "required": ["lat"],
                     "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}}},
    },
    "required": ["city", "population", "tags", "location"],
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
MESSAGES = [{"role": "user", "content": "Describe a city as JSON."}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_chat_json_schema_validates_streaming_and_not(client, temperature):
    kw = dict(model="tiny", messages=MESSAGES, response_format=RESPONSE_FORMAT, max_tokens=300,
              temperature=temperature, seed=7)
    resp = client.chat.completions.create(**kw)
    text = resp.choices[0].message.content
    jsonschema.validate(json.loads(text), SCHEMA)
    assert resp.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(stream=True, **kw))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # same seed, same grammar: the same tokens, delivered in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_chat_json_object_and_text(client):
    resp = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=200, seed=1,
                                          response_format={"type": "json_object"})
    if resp.choices[0].finish_reason == "stop":  # free strings may run to max_tokens on a random model
        assert isinstance(json.loads(resp.choices[0].message.content), dict)
    else:
        assert resp.choices[0].message.content.startswith("{")
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, temperature=0.0,
                                           response_format={"type": "text"})
    free = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, temperature=0.0)
    assert plain.choices[0].message.content == free.choices[0].message.content


def test_completions_structured_outputs_each_kind(client):
    def complete(stream: bool = False, **extra):
        return client.completions.create(model="tiny", prompt="Answer: ", max_tokens=300, seed=3,
                                         stream=stream, extra_body=extra)

    text = complete(structured_outputs={"json": SCHEMA}).choices[0].text
    jsonschema.validate(json.loads(text), SCHEMA)
    text = complete(response_format=RESPONSE_FORMAT).choices[0].text
    jsonschema.validate(json.loads(text), SCHEMA)
    regex = r"\d{3}-[a-z]{2}"
    assert re.fullmatch(regex, complete(structured_outputs={"regex": regex}).choices[0].text)
    assert complete(structured_outputs={"choice": ["left", "right"]}).choices[0].text in ("left", "right")
    assert complete(guided_choice=["up", "down"]).choices[0].text in ("up", "down")
    assert re.fullmatch(r"[xyz]{4}", complete(guided_regex="[xyz]{4}").choices[0].text)
    jsonschema.validate(json.loads(complete(guided_json=SCHEMA).choices[0].text), SCHEMA)
    grammar = 'root ::= "(" [0-9] ("+" [0-9])* ")"'
    chunks = list(complete(stream=True,
                           structured_outputs={"grammar": grammar, "disable_any_whitespace": True}))
    assert re.fullmatch(r"\(\d(\+\d)*\)", "".join(c.choices[0].text for c in chunks))


def test_n_completions_each_valid(client):
    resp = client.completions.create(model="tiny", prompt="x", max_tokens=300, n=3, temperature=1.0, seed=5,
                                     extra_body={"structured_outputs": {"json": SCHEMA}})
    assert len(resp.choices) == 3
    for c in resp.choices:
        jsonschema.validate(json.loads(c.text), SCHEMA)


def test_constrained_and_free_requests_at_once(client):
    free_alone = client.completions.create(model="tiny", prompt="free", max_tokens=40, temperature=0.0)
    results: dict[str, str] = {}

    def run(name: str, **extra):
        resp = client.completions.create(model="tiny", prompt="free" if name == "free" else "c",
                                         max_tokens=40, temperature=0.0, extra_body=extra)
        results[name] = resp.choices[0].text

    threads = [threading.Thread(target=run, args=("free",))] + [
        threading.Thread(target=run, args=(f"c{i}",), kwargs={"guided_regex": r"[a-f]{5}"}) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["free"] == free_alone.choices[0].text
    assert all(re.fullmatch(r"[a-f]{5}", results[f"c{i}"]) for i in range(4))


@pytest.mark.parametrize("extra, param", [
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs"),
    ({"structured_outputs": {"json": {"type": "nonsense"}}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"whitespace_pattern": " "}}, "structured_outputs"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"guided_choice": []}, "guided_choice"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex"),
])
def test_bad_constraints_are_400s_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="x", max_tokens=4, extra_body=extra)
    assert err.value.body["param"] == param, err.value.body
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, extra_body=extra)
    assert err.value.body["param"] == param, err.value.body
