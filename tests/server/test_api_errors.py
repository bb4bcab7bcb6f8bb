"""Every bad request gets an OpenAI error body with the right status, type and param (raw HTTP), never
a 500, and leaves no request running and no KV block in use."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from server_process import API_KEY, MAX_BODY_BYTES, MAX_MODEL_LEN, metric_values

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


def assert_error(resp: httpx.Response, status: int, err_type: str, param: str | None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["param"], err["code"]) == (err_type, param, status), err
    assert err["message"]
    return err


def completion(http, **body) -> httpx.Response:
    body.setdefault("prompt", "hello")
    body.setdefault("max_tokens", 2)
    return http.post("/v1/completions", json=body)


def chat(http, **body) -> httpx.Response:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    body.setdefault("max_tokens", 2)
    return http.post("/v1/chat/completions", json=body)


def test_malformed_json_is_a_400_naming_the_body(http):
    resp = http.post("/v1/completions", content=b'{"prompt": "x",',
                     headers={"Content-Type": "application/json"})
    assert "not valid JSON" in assert_error(resp, 400, "BadRequestError", "body")["message"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": 5}, "body.prompt"),
    ({"prompt": [1.5]}, "body.prompt.0"),
    ({"temperature": "hot"}, "body.temperature"),
    ({"n": "many"}, "body.n"),
    ({"stream": "maybe"}, "body.stream"),
])
def test_schema_errors_are_400_with_the_field_path(http, body, param):
    err = assert_error(completion(http, **body), 400, "BadRequestError", param)
    assert re.match(r"\d+ validation errors?: ", err["message"]) and param + ":" in err["message"]


def test_missing_prompt_is_named(http):
    resp = http.post("/v1/completions", json={"max_tokens": 2})
    assert_error(resp, 400, "BadRequestError", "body.prompt")


@pytest.mark.parametrize("field, value", [
    ("temperature", 2.5), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -2),
    ("min_p", 1.5), ("presence_penalty", 2.5), ("frequency_penalty", -3.0), ("repetition_penalty", 0.0),
    ("n", 0), ("max_tokens", 0), ("max_tokens", -1), ("logprobs", 21), ("stop", [""]),
    ("stop_token_ids", [-1]),
])
def test_out_of_range_sampling_values_name_their_param(http, field, value):
    assert_error(completion(http, **{field: value}), 400, "BadRequestError", field)


def test_min_tokens_over_max_tokens(http):
    assert_error(completion(http, max_tokens=2, min_tokens=5), 400, "BadRequestError", "min_tokens")


def test_chat_top_logprobs_is_named_as_the_chat_api_calls_it(http):
    assert_error(chat(http, logprobs=True, top_logprobs=21), 400, "BadRequestError", "top_logprobs")
    assert_error(chat(http, top_logprobs=2), 400, "BadRequestError", "top_logprobs")


def test_prompt_longer_than_the_context_states_both_lengths(http):
    n = MAX_MODEL_LEN + 88
    err = assert_error(completion(http, prompt="a" * n), 400, "BadRequestError", "prompt")
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in err["message"]
    assert f"your prompt contains {n} input tokens" in err["message"]
    err = assert_error(chat(http, messages=[{"role": "user", "content": "a" * n}]), 400, "BadRequestError",
                       "messages")
    assert str(MAX_MODEL_LEN) in err["message"]
    # Exactly max_model_len leaves no room for one output token.
    assert_error(completion(http, prompt="a" * MAX_MODEL_LEN), 400, "BadRequestError", "prompt")


def test_max_tokens_over_the_context_and_empty_prompts(http):
    assert_error(completion(http, max_tokens=MAX_MODEL_LEN + 1), 400, "BadRequestError", "max_tokens")
    assert_error(chat(http, max_completion_tokens=MAX_MODEL_LEN + 1), 400, "BadRequestError",
                 "max_completion_tokens")
    assert_error(completion(http, prompt=""), 400, "BadRequestError", "prompt")
    assert_error(completion(http, prompt=[]), 400, "BadRequestError", "prompt")
    assert_error(completion(http, prompt=[5, 100000]), 400, "BadRequestError", "prompt")
    assert_error(chat(http, messages=[]), 400, "BadRequestError", "body.messages")


@pytest.mark.parametrize("body, param", [
    ({"suffix": "tail"}, "suffix"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"best_of": 3}, "best_of"),
])
def test_unsupported_completion_fields_are_rejected_clearly(http, body, param):
    assert_error(completion(http, **body), 400, "BadRequestError", param)


def test_unsupported_chat_content_is_rejected(http):
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]
    assert_error(chat(http, messages=image), 400, "BadRequestError", "messages.0.content")
    assert_error(chat(http, tools=[{"type": "function", "function": {"name": "f"}}]), 400,
                 "BadRequestError", "tools")


def test_unknown_model_is_404(http):
    err = assert_error(completion(http, model="gpt-4"), 404, "NotFoundError", "model")
    assert err["message"] == "The model `gpt-4` does not exist."
    assert_error(chat(http, model="gpt-4"), 404, "NotFoundError", "model")


def test_api_key_is_required_on_v1_only(server):
    url = server.url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        resp = httpx.post(url + "/v1/completions", json={"prompt": "x"}, headers=headers)
        assert_error(resp, 401, "AuthenticationError", "api_key")
    assert_error(httpx.get(url + "/v1/models"), 401, "AuthenticationError", "api_key")
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/metrics").status_code == 200


def test_body_over_the_cap_is_413(http):
    big = json.dumps({"prompt": "a" * (MAX_BODY_BYTES + 10), "max_tokens": 1}).encode()
    resp = http.post("/v1/completions", content=big, headers={"Content-Type": "application/json"})
    assert_error(resp, 413, "RequestEntityTooLargeError", "body")

    def chunks():  # no Content-Length: the cap is enforced while the body streams in
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    resp = http.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == 413


def test_unknown_route_and_method_get_error_bodies(http):
    assert_error(http.get("/v1/nothing"), 404, "NotFoundError", None)
    assert_error(http.get("/v1/completions"), 405, "MethodNotAllowedError", None)


def test_model_without_chat_template_is_a_400(tiny_model, offline_llm):
    from nanoserve.config import EngineArgs
    from nanoserve.engine.async_engine import AsyncLLMEngine
    from nanoserve.server.app import build_app

    model = tiny_model("llama", chat_template=None)
    engine = AsyncLLMEngine.from_engine_args(EngineArgs(model=str(model), num_gpu_blocks_override=16))
    app = build_app(engine, ["plain"], str(model))

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})

    err = assert_error(asyncio.run(go()), 400, "BadRequestError", "messages")
    assert "no chat template" in err["message"]


def test_bad_requests_leave_nothing_running_and_no_kv_in_use(server, http):
    # Runs after the error tests above (file order): the server is still healthy and the pool is free.
    assert http.get("/health").status_code == 200
    assert completion(http, max_tokens=3).status_code == 200
    m = metric_values(server.url)
    assert m["nanoserve:num_requests_running"] == 0
    assert m["nanoserve:num_requests_waiting"] == 0
    assert m["nanoserve:kv_cache_usage_perc"] == 0
