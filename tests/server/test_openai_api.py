"""The real server driven by the official `openai` package: completions and chat, streaming and not,
n > 1, stop, seeds, logprobs, echo, usage; greedy output equals the offline `LLM.generate`."""

from __future__ import annotations

import openai
import pytest
from server_process import API_KEY, MAX_MODEL_LEN

from nanoserve.sampling_params import SamplingParams

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def offline_greedy(llm, prompt: str, max_tokens: int) -> tuple[str, list[int]]:
    out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]
    return out.text, list(out.token_ids)


def stream_text(chunks) -> tuple[dict[int, str], dict[int, str]]:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return texts, finish


def test_models_lists_the_served_name(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert models.data[0].max_model_len == MAX_MODEL_LEN


def test_greedy_completion_equals_offline_generate(client, offline_llm):
    want_text, want_ids = offline_greedy(offline_llm, PROMPT, 24)
    resp = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert resp.choices[0].text == want_text
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.prompt_tokens == len(PROMPT)  # one token per character
    assert resp.usage.completion_tokens == len(want_ids) == 24
    assert resp.usage.total_tokens == len(PROMPT) + 24


@pytest.mark.parametrize("stop", [None, ["e", "th"]])
def test_streamed_text_equals_non_streamed_for_the_same_seed(client, stop):
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0.9, seed=1234, n=2, stop=stop)
    whole = client.completions.create(**kwargs)
    texts, finish = stream_text(client.completions.create(stream=True, **kwargs))
    assert texts == {c.index: c.text for c in whole.choices}
    assert finish == {c.index: c.finish_reason for c in whole.choices}


def test_seed_reproducible_and_n_choices_independent(client):
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=24, temperature=1.0, n=3,
                  extra_body={"ignore_eos": True})
    a = client.completions.create(seed=7, **kwargs)
    b = client.completions.create(seed=7, **kwargs)
    c = client.completions.create(seed=8, **kwargs)
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert [ch.text for ch in a.choices] == [ch.text for ch in b.choices]
    assert [ch.text for ch in a.choices] != [ch.text for ch in c.choices]
    assert len({ch.text for ch in a.choices}) == 3  # n samples, not one sample repeated
    assert a.usage.completion_tokens == 3 * 24


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_cuts_the_output_before_it(client, offline_llm, include):
    full, _ = offline_greedy(offline_llm, PROMPT, 40)
    stop = full[10:12]  # a string the greedy output is known to contain
    cut = full[: full.index(stop) + (len(stop) if include else 0)]
    extra = {"ignore_eos": True, "include_stop_str_in_output": include}
    resp = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop],
                                     extra_body=extra)
    assert resp.choices[0].text == cut
    assert resp.choices[0].finish_reason == "stop"
    texts, finish = stream_text(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40,
                                                          temperature=0, stop=[stop], stream=True,
                                                          extra_body=extra))
    assert texts == {0: cut} and finish == {0: "stop"}


def test_prompt_forms_list_of_strings_and_token_ids(client, offline_llm):
    tokenizer = offline_llm.get_tokenizer()
    prompts = ["abc", "hello world"]
    ids = [tokenizer(p).input_ids for p in prompts]
    by_text = client.completions.create(model="tiny", prompt=prompts, max_tokens=8, temperature=0, n=2)
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0, n=2)
    one_id_list = client.completions.create(model="tiny", prompt=ids[1], max_tokens=8, temperature=0)
    assert [c.index for c in by_text.choices] == [0, 1, 2, 3]  # prompt-major: prompt i, completion j
    assert [c.text for c in by_text.choices] == [c.text for c in by_ids.choices]
    assert by_text.choices[2].text == one_id_list.choices[0].text
    assert by_text.choices[0].text == offline_greedy(offline_llm, "abc", 8)[0][: len(by_text.choices[0].text)]
    assert by_text.usage.prompt_tokens == sum(len(i) for i in ids)


def test_completion_logprobs_and_echo(client):
    resp = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3,
                                     extra_body={"ignore_eos": True})
    lp = resp.choices[0].logprobs
    assert "".join(lp.tokens) == resp.choices[0].text
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    for token, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 3 <= len(top) <= 4 and chosen <= 0.0
        assert chosen == pytest.approx(max(top.values()))  # greedy picks the most likely token
        assert top[token] == pytest.approx(chosen)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    echoed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, echo=True,
                                       extra_body={"ignore_eos": True})
    assert echoed.choices[0].text == PROMPT + resp.choices[0].text


def test_stream_include_usage_adds_a_final_usage_chunk(client):
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens == len(PROMPT)
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_completion_uses_the_chat_template(client, offline_llm):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    rendered = "<system>be brief\n<user>hi there\n<assistant>"  # tests/tiny_models.py's template
    want, _ = offline_greedy(offline_llm, rendered, 12)
    resp = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=12,
                                          temperature=0, extra_body={"ignore_eos": True})
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == want
    assert resp.usage.prompt_tokens == len(rendered) and resp.usage.completion_tokens == 12


def test_chat_stream_first_chunk_carries_the_role_and_text_matches(client):
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=16,
                  temperature=0.8, seed=5, n=2)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                 **kwargs))
    first_roles = {c.choices[0].index: c.choices[0].delta.role for c in chunks[:2]}
    assert first_roles == {0: "assistant", 1: "assistant"}
    texts: dict[int, str] = {}
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_chat_logprobs_and_top_logprobs(client):
    resp = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                          max_completion_tokens=5, temperature=0, logprobs=True,
                                          top_logprobs=2, extra_body={"ignore_eos": True})
    content = resp.choices[0].logprobs.content
    assert "".join(t.token for t in content) == resp.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 2
        assert t.top_logprobs[0].token == t.token  # greedy: the chosen token is the top one
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert t.bytes == list(t.token.encode())


def test_max_tokens_is_clamped_to_the_context(client):
    prompt = "a" * (MAX_MODEL_LEN - 5)
    resp = client.completions.create(model="tiny", prompt=prompt, max_tokens=100, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 5
    assert resp.choices[0].finish_reason == "length"


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError, match="The model `nope` does not exist"):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="x", max_tokens=2, temperature=3.0)
    assert err.value.body["param"] == "temperature"
    bad_key = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.completions.create(model="tiny", prompt="x", max_tokens=2)
