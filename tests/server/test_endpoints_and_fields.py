"""/tokenize, /detokenize, /version, prompt_logprobs, echo + logprobs (+ max_tokens 0 to score a
prompt), logit_bias and CORS: the real server against transformers' log_softmax of the same tiny fp32
checkpoint, and CORS on the app over a fake engine."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest
import torch
from fake_engine import FakeEngine
from server_process import API_KEY, MAX_MODEL_LEN

import nanoserve
from nanoserve.engine.async_engine import AsyncLLMEngine
from nanoserve.server.app import CorsConfig, build_app

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROMPT = "Scoring a prompt: 2 + 2 = 4."
TOL = 1e-4


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(server_model):
    """(prompt ids, [P, vocab] next-token log-probabilities) from transformers, in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(server_model)
    ids = tok(PROMPT).input_ids
    model = AutoModelForCausalLM.from_pretrained(server_model, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()  # [P, vocab]
    return tok, ids, torch.log_softmax(logits, dim=-1)


def completion(http, **body) -> httpx.Response:
    body.setdefault("model", "tiny")
    return http.post("/v1/completions", json=body)


def assert_prompt_scores(lp: dict, tok, ids, ref, num_top: int) -> None:
    """Completion logprobs whose first len(ids) entries are the prompt's, against transformers."""
    assert lp["tokens"][: len(ids)] == [tok.decode([t]) for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for i in range(1, len(ids)):
        assert math.isclose(lp["token_logprobs"][i], ref[i - 1, ids[i]].item(), abs_tol=TOL), i
        top = lp["top_logprobs"][i]
        vals, top_ids = ref[i - 1].topk(num_top)
        for t, v in zip(top_ids.tolist(), vals.tolist(), strict=True):
            assert math.isclose(top[tok.decode([t])], v, abs_tol=TOL), i
    assert lp["text_offset"][0] == 0


def test_echo_logprobs_max_tokens_0_scores_the_prompt_like_transformers(http, reference):
    tok, ids, ref = reference
    for _ in range(2):  # the second time the prompt's blocks are in the prefix cache
        resp = completion(http, prompt=PROMPT, echo=True, logprobs=2, max_tokens=0)
        assert resp.status_code == 200, resp.text
        choice = resp.json()["choices"][0]
        assert choice["text"] == PROMPT  # the prompt, and nothing generated
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(ids)
        assert_prompt_scores(lp, tok, ids, ref, 2)
        assert resp.json()["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0,
                                        "total_tokens": len(ids)}
    # As token ids and as a batch of prompts: the same scores per prompt.
    resp = completion(http, prompt=[ids, ids[:5]], echo=True, logprobs=0, max_tokens=0)
    assert resp.status_code == 200, resp.text
    first, second = resp.json()["choices"]
    assert_prompt_scores(first["logprobs"], tok, ids, ref, 0)
    assert len(second["logprobs"]["tokens"]) == 5
    # max_tokens 0 without echo generates nothing useful: refused, as vLLM does.
    assert completion(http, prompt=PROMPT, max_tokens=0).status_code == 400


def test_echo_logprobs_with_generation_and_streaming(http, reference):
    tok, ids, ref = reference
    body = dict(prompt=PROMPT, echo=True, logprobs=1, max_tokens=3, temperature=0, ignore_eos=True)
    whole = completion(http, **body).json()["choices"][0]
    lp = whole["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 3
    assert_prompt_scores(lp, tok, ids, ref, 1)
    assert all(isinstance(x, float) for x in lp["token_logprobs"][len(ids):])
    assert whole["text"].startswith(PROMPT) and len(whole["text"]) > len(PROMPT)
    # Streamed: the echo (with the prompt's logprobs) first, then the generated tokens.
    with http.stream("POST", "/v1/completions", json={**body, "model": "tiny", "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    text = "".join(e["choices"][0]["text"] for e in events)
    assert text == whole["text"]
    echoed = events[0]["choices"][0]
    assert echoed["text"] == PROMPT
    assert_prompt_scores(echoed["logprobs"], tok, ids, ref, 1)
    streamed = [x for e in events for x in (e["choices"][0]["logprobs"] or {}).get("token_logprobs", [])]
    assert streamed[0] is None and streamed[1:] == pytest.approx(lp["token_logprobs"][1:], abs=1e-6)
    # Streamed scoring: the echo, then only the finish.
    with http.stream("POST", "/v1/completions", json={**body, "model": "tiny", "stream": True,
                                                        "max_tokens": 0}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    assert "".join(e["choices"][0]["text"] for e in events) == PROMPT
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_prompt_logprobs_field_in_completions_and_chat(http, reference):
    tok, ids, ref = reference
    resp = completion(http, prompt=PROMPT, max_tokens=1, prompt_logprobs=2)
    assert resp.status_code == 200, resp.text
    plp = resp.json()["choices"][0]["prompt_logprobs"]
    assert len(plp) == len(ids) and plp[0] is None
    for i in range(1, len(ids)):
        entry = plp[i]
        assert math.isclose(entry[str(ids[i])]["logprob"], ref[i - 1, ids[i]].item(), abs_tol=TOL)
        top_ids = ref[i - 1].topk(2).indices.tolist()
        assert [entry[str(t)]["rank"] for t in top_ids] == [1, 2]
        assert entry[str(ids[i])]["decoded_token"] == tok.decode([ids[i]])
    assert completion(http, prompt=PROMPT, max_tokens=1).json()["choices"][0]["prompt_logprobs"] is None
    # Chat: the rendered prompt's logprobs, top level.
    messages = [{"role": "user", "content": "hi"}]
    chat = http.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, "max_tokens": 1,
                                                   "prompt_logprobs": 0}).json()
    rendered = http.post("/tokenize", json={"model": "tiny", "messages": messages}).json()
    assert len(chat["prompt_logprobs"]) == rendered["count"] == chat["usage"]["prompt_tokens"]
    # Refused: streaming (as vLLM), out of range, named.
    for body, param in (({"stream": True, "prompt_logprobs": 1}, "prompt_logprobs"),
                        ({"prompt_logprobs": 21}, "prompt_logprobs")):
        err = completion(http, prompt=PROMPT, max_tokens=1, **body)
        assert err.status_code == 400 and err.json()["error"]["param"] == param, err.text
    err = http.post("/v1/chat/completions", json={"messages": messages, "prompt_logprobs": -1})
    assert err.status_code == 400 and err.json()["error"]["param"] == "prompt_logprobs", err.text


def test_logit_bias_forces_and_bans_tokens(http, reference):
    tok = reference[0]
    z = tok.encode("z", add_special_tokens=False)[0]
    for temperature in (0, 1.0):
        resp = completion(http, prompt="abc", max_tokens=5, temperature=temperature, ignore_eos=True,
                          logit_bias={str(z): 100})
        assert resp.json()["choices"][0]["text"] == "zzzzz", resp.text
    plain = completion(http, prompt="abc", max_tokens=1, temperature=0, logprobs=0).json()["choices"][0]
    top = plain["logprobs"]["tokens"][0]
    banned = tok.encode(top, add_special_tokens=False)[0]
    resp = completion(http, prompt="abc", max_tokens=1, temperature=0, logit_bias={str(banned): -100})
    assert resp.json()["choices"][0]["text"] != top
    chat = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                   "max_tokens": 3, "logit_bias": {str(z): 100},
                                                   "ignore_eos": True})
    assert chat.json()["choices"][0]["message"]["content"] == "zzz", chat.text
    for bad in ({"999999": 1}, {"x": 1}, {"5": 101}, {"-3": 1}):
        err = completion(http, prompt="abc", max_tokens=1, logit_bias=bad)
        assert err.status_code == 400 and err.json()["error"]["param"] == "logit_bias", (bad, err.text)


def test_tokenize_and_detokenize_round_trip(http, reference):
    tok, ids, _ = reference
    resp = http.post("/tokenize", json={"model": "tiny", "prompt": PROMPT, "return_token_strs": True})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body == {"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids,
                    "token_strs": tok.convert_ids_to_tokens(ids)}
    no_special = http.post("/tokenize", json={"prompt": PROMPT, "add_special_tokens": False}).json()
    assert no_special["tokens"] == tok(PROMPT, add_special_tokens=False).input_ids
    assert no_special["token_strs"] is None
    back = http.post("/detokenize", json={"model": "tiny", "tokens": no_special["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": PROMPT}
    # Chat form: the same tokens as the chat endpoint's prompt.
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    chat_tok = http.post("/tokenize", json={"messages": messages}).json()
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat_tok["tokens"] == tok(rendered, add_special_tokens=False).input_ids
    assert http.post("/detokenize", json={"tokens": chat_tok["tokens"]}).json()["prompt"] == rendered
    without = http.post("/tokenize", json={"messages": messages, "add_generation_prompt": False}).json()
    assert without["count"] < chat_tok["count"]
    # Errors: ids outside the vocabulary, an unknown model, no key.
    err = http.post("/detokenize", json={"tokens": [1, 10**6]})
    assert err.status_code == 400 and err.json()["error"]["param"] == "tokens"
    assert http.post("/detokenize", json={"tokens": [-1]}).status_code == 400
    assert http.post("/tokenize", json={"model": "gpt-4", "prompt": "x"}).status_code == 404
    assert http.post("/tokenize", json={}).status_code == 400
    assert httpx.post(str(http.base_url) + "/tokenize", json={"prompt": "x"}).status_code == 401
    assert httpx.post(str(http.base_url) + "/detokenize", json={"tokens": [5]}).status_code == 401


def test_version_is_open(server):
    resp = httpx.get(server.url + "/version")
    assert resp.status_code == 200 and resp.json() == {"version": nanoserve.__version__}


# ---------------------------------------------------------------------------------------------- CORS
def _preflight_and_get(cors: CorsConfig | None, origin: str) -> tuple[httpx.Response, httpx.Response]:
    engine = AsyncLLMEngine(FakeEngine(step_s=0.001))
    app = build_app(engine, ["fake"], "/fake", api_key="k", cors=cors)

    async def go():
        engine.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                pre = await c.options("/v1/completions", headers={
                    "Origin": origin, "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type"})
                get = await c.get("/v1/models", headers={"Origin": origin, "Authorization": "Bearer k"})
                return pre, get
        finally:
            await engine.shutdown(grace_s=0)

    return asyncio.run(asyncio.wait_for(go(), 30))


def test_no_cors_headers_by_default():
    pre, get = _preflight_and_get(None, "http://example.com")
    assert "access-control-allow-origin" not in pre.headers and pre.status_code != 200
    assert get.status_code == 200 and "access-control-allow-origin" not in get.headers


def test_cors_with_allowed_origins():
    cors = CorsConfig(allowed_origins=["http://good.example"])
    pre, get = _preflight_and_get(cors, "http://good.example")
    assert pre.status_code == 200, pre.text  # answered before the API key is checked
    assert pre.headers["access-control-allow-origin"] == "http://good.example"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert get.status_code == 200 and get.headers["access-control-allow-origin"] == "http://good.example"
    pre, get = _preflight_and_get(cors, "http://evil.example")
    assert pre.status_code == 400 and "access-control-allow-origin" not in get.headers
    pre, _ = _preflight_and_get(CorsConfig(allowed_origins=["*"], allow_credentials=True), "http://a.b")
    assert pre.headers["access-control-allow-origin"] == "http://a.b"  # credentials: the origin echoed
    assert pre.headers["access-control-allow-credentials"] == "true"


def test_cors_flags():
    import argparse

    from nanoserve.server.cli import add_arguments, cors_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert cors_config(parser.parse_args([])) is None
    args = parser.parse_args(["--allowed-origins", '["http://a", "http://b"]',
                              "--allowed-methods", "GET,POST", "--allow-credentials"])
    assert cors_config(args) == CorsConfig(["http://a", "http://b"], ["GET", "POST"], ["*"], True)


def test_serving_on_cpu_leaves_one_core_to_the_front_end():
    import argparse

    from nanoserve.config import EngineArgs
    from nanoserve.server.cli import add_arguments, serving_threads

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def args(*flags: str) -> EngineArgs:
        return EngineArgs.from_cli_args(parser.parse_args(["--device", "cpu", *flags]))

    assert serving_threads(args(), 2).num_cpu_threads == 1
    assert serving_threads(args(), 16).num_cpu_threads == 15
    assert serving_threads(args(), 1).num_cpu_threads is None  # nothing to leave
    assert serving_threads(args("--num-cpu-threads", "2"), 2).num_cpu_threads == 2  # the user's choice
    assert serving_threads(args("-dp", "2"), 8).num_cpu_threads is None  # replicas split the cores
