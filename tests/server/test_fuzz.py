"""Property-based fuzz of the completions and chat request schemas against the real server: whatever
the body (known fields with good, borderline or junk values, unknown fields, NaN, lone surrogates,
nested junk), the answer is never a 500, streamed or not. Bounded: 100 examples per endpoint,
derandomized (the same bodies every run), small max_tokens so that valid requests finish quickly."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_process import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

# Any character, lone surrogates included (json.dumps writes them as \udXXX escapes).
any_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=24)
numbers = (st.integers(-3, 5) | st.sampled_from([2**31, 2**63, -2**63, 10**30])
           | st.floats(allow_nan=True, allow_infinity=True))
junk = st.recursive(
    st.none() | st.booleans() | numbers | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)


def field(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly plausible values (borderline ones included), sometimes junk of any JSON type."""
    return st.one_of(valid, valid, valid, junk)


SAMPLING = {
    "model": field(st.sampled_from(["tiny", "other"])),
    "n": field(st.integers(0, 3)),
    "temperature": field(st.floats(-1, 3)),
    "top_p": field(st.floats(-0.5, 1.5)),
    "top_k": field(st.integers(-2, 50)),
    "min_p": field(st.floats(-0.5, 1.5)),
    "seed": field(st.integers(-2**64, 2**64)),
    "stop": field(st.lists(any_text, max_size=3) | any_text),
    "stop_token_ids": field(st.lists(st.integers(-5, 2**40), max_size=3)),
    "presence_penalty": field(st.floats(-3, 3)),
    "frequency_penalty": field(st.floats(-3, 3)),
    "repetition_penalty": field(st.floats(-1, 3)),
    "ignore_eos": field(st.booleans()),
    "min_tokens": field(st.integers(-1, 4)),
    "include_stop_str_in_output": field(st.booleans()),
    "skip_special_tokens": field(st.booleans()),
    "stream": field(st.booleans()),
    "stream_options": field(st.fixed_dictionaries({}, optional={"include_usage": field(st.booleans())})),
    "user": field(any_text),
    "logit_bias": field(st.dictionaries(any_text, st.floats(), max_size=2)),
    "max_tokens": field(st.integers(-1, 4)),
    "prompt_logprobs": field(st.integers(-1, 25)),
}
# Constraints (server/structured_outputs.py): schemas, regexes and grammars as a client might write
# them, broken ones included: a spec the grammar compiler rejects must be a 400, never a crash.
json_schema = st.recursive(
    st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "null", "x"])},
                          optional={"minLength": st.integers(-1, 3), "maximum": numbers,
                                    "enum": st.lists(junk, max_size=2), "pattern": any_text}),
    lambda inner: st.fixed_dictionaries({"type": st.just("object")},
                                        optional={"properties": st.dictionaries(any_text, inner, max_size=2),
                                                  "required": st.lists(any_text, max_size=2)})
    | st.fixed_dictionaries({"type": st.just("array"), "items": inner},
                            optional={"minItems": st.integers(-1, 2), "maxItems": st.integers(-1, 2)}),
    max_leaves=4,
)
regex = st.sampled_from(["[a-z]+", "(a|b)*c", "[", "a{2,1}", "\\", "(?P<x>a)", ".*", "\\d{1,3}"]) | any_text
grammar = st.sampled_from(['root ::= "yes" | "no"', "root ::=", "x ::= y", 'root ::= [a-z]+ "."']) | any_text
CONSTRAINTS = {
    "structured_outputs": field(
        st.fixed_dictionaries({}, optional={"json": json_schema | any_text, "regex": regex,
                                            "choice": st.lists(any_text, max_size=3), "grammar": grammar,
                                            "json_object": st.booleans()})),
    "guided_json": field(json_schema),
    "guided_regex": field(regex),
    "guided_choice": field(st.lists(any_text, max_size=3)),
    "guided_grammar": field(grammar),
    "response_format": field(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "x"])},
                              optional={"json_schema": st.fixed_dictionaries(
                                  {"name": any_text}, optional={"schema": json_schema, "strict": junk})})),
}
UNKNOWN = {"priority": junk, "unknown_field": junk}
COMPLETION = {
    **SAMPLING,
    **CONSTRAINTS,
    "logprobs": field(st.integers(-1, 25)),
    "echo": field(st.booleans()),
    "suffix": field(any_text),
    "best_of": field(st.integers(0, 3)),
}
content = field(any_text | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                                           "text": field(any_text)}), max_size=2))
tool_call = st.fixed_dictionaries(
    {"id": field(any_text), "type": field(st.just("function")),
     "function": field(st.fixed_dictionaries({"name": field(any_text), "arguments": field(any_text)}))})
message = st.fixed_dictionaries({"role": field(st.sampled_from(["user", "assistant", "system", "tool"]))},
                                optional={"content": content, "name": field(any_text), "extra": junk,
                                          "tool_calls": field(st.lists(tool_call, max_size=2)),
                                          "tool_call_id": field(any_text)})
tool = st.fixed_dictionaries({"type": field(st.just("function")),
                              "function": field(st.fixed_dictionaries(
                                  {"name": field(any_text)},
                                  optional={"description": any_text, "parameters": json_schema}))})
CHAT = {
    **SAMPLING,
    "max_completion_tokens": field(st.integers(-1, 4)),
    "logprobs": field(st.booleans()),
    "top_logprobs": field(st.integers(-1, 25)),
    "add_generation_prompt": field(st.booleans()),
    "continue_final_message": field(st.booleans()),
    "chat_template_kwargs": field(st.dictionaries(st.sampled_from(["enable_thinking", "chat_template",
                                                                   "tokenize", "x"]), junk, max_size=2)),
    "chat_template": field(any_text),
    **CONSTRAINTS,
    "tools": field(st.lists(tool, max_size=2)),
    "tool_choice": field(st.sampled_from(["none", "auto", "required"])
                         | st.fixed_dictionaries({"type": st.just("function"),
                                                  "function": st.fixed_dictionaries({"name": any_text})})),
    "parallel_tool_calls": field(st.booleans()),
}

prompt = field(any_text | st.lists(any_text, max_size=3) | st.lists(st.integers(-2, 2**33), max_size=4)
               | st.lists(st.lists(st.integers(0, 300), max_size=3), max_size=2))


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
        yield c


def bounded(body: dict) -> dict:
    """Valid requests must stay quick: a missing or null length is replaced by a small one."""
    if "max_tokens" not in body or body["max_tokens"] is None:
        if body.get("max_completion_tokens") is None:
            body["max_tokens"] = 3
    return body


def post_and_check(http: httpx.Client, path: str, body: dict) -> None:
    raw = json.dumps(bounded(body), ensure_ascii=True).encode()  # NaN / Infinity kept, as a client may send
    resp = http.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code < 500, (body, resp.text)
    if resp.status_code != 200:
        err = resp.json()["error"]
        assert err["code"] == resp.status_code and err["message"], err
    assert '"code":500' not in resp.text.replace(" ", ""), (body, resp.text[-500:])


@FUZZ
@given(body=st.fixed_dictionaries({"prompt": prompt}, optional={**COMPLETION, **UNKNOWN}))
def test_completions_never_500(http, body):
    post_and_check(http, "/v1/completions", body)


@FUZZ
@given(body=st.fixed_dictionaries({"messages": field(st.lists(message, min_size=0, max_size=3))},
                                  optional={**CHAT, **UNKNOWN}))
def test_chat_never_500(http, body):
    post_and_check(http, "/v1/chat/completions", body)


@FUZZ
@given(body=st.fixed_dictionaries({}, optional={"prompt": field(any_text), "messages": field(st.lists(message,
                                                                                                       max_size=2)),
                                                "add_special_tokens": field(st.booleans()),
                                                "return_token_strs": field(st.booleans()), **UNKNOWN}))
def test_tokenize_never_500(http, body):
    post_and_check(http, "/tokenize", body)


@FUZZ
@given(body=st.fixed_dictionaries({"tokens": field(st.lists(st.integers(-5, 2**40), max_size=4))},
                                  optional=UNKNOWN))
def test_detokenize_never_500(http, body):
    post_and_check(http, "/detokenize", body)
