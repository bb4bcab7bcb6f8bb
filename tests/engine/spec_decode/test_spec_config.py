from __future__ import annotations

import argparse

import pytest

from nanoserve.config import EngineArgs
from nanoserve.engine.spec_decode.config import SpeculativeConfig, parse_speculative_config
from nanoserve.errors import InvalidRequestError


def test_vllm_shaped_configs_parse():
    assert parse_speculative_config(None) is None
    assert parse_speculative_config({"method": "ngram", "num_speculative_tokens": 3}) == SpeculativeConfig(
        "ngram", 3, 4, 1, None)
    got = parse_speculative_config('{"method": "draft_model", "model": "d", "num_speculative_tokens": 2}')
    assert got == SpeculativeConfig("draft_model", 2, 4, 1, "d")
    assert parse_speculative_config({"model": "[ngram]", "num_speculative_tokens": 1}).method == "ngram"


@pytest.mark.parametrize("bad, words", [
    ({"method": "eagle", "num_speculative_tokens": 3}, "method"),
    ({"method": "ngram"}, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 5, "prompt_lookup_max": 2},
     "prompt_lookup_min"),
    ({"method": "draft_model", "num_speculative_tokens": 2}, "model"),
    ({"method": "ngram", "num_speculative_tokens": 2, "lookahead": 1}, "unknown"),
    ("{not json", "JSON"),
])
def test_bad_configs_say_why(bad, words):
    with pytest.raises(InvalidRequestError, match=words):
        parse_speculative_config(bad)
    with pytest.raises(InvalidRequestError, match=words):  # EngineArgs validates it too
        EngineArgs(model="m", speculative_config=bad)


def test_cli_flag_takes_json():
    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    spec = '{"method": "ngram", "num_speculative_tokens": 4}'
    ns = parser.parse_args(["--model", "m", "--speculative-config", spec])
    args = EngineArgs.from_cli_args(ns)
    assert parse_speculative_config(args.speculative_config).num_speculative_tokens == 4


def test_a_draft_with_another_tokenizer_is_refused(tiny_model):
    from nanoserve import LLM
    from nanoserve.demo import default_model

    with pytest.raises(InvalidRequestError, match="tokenizer"):
        LLM(default_model(), speculative_config={
            "method": "draft_model", "model": str(tiny_model("llama")), "num_speculative_tokens": 2})
