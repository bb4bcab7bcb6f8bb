"""Structured outputs through LLM.generate: 220 generated JSON schemas (nested objects, arrays,
enums, bounded numbers, required fields) against a tiny random model and the demo model, each
batch in one generate call; every output parses and validates. Regexes and choices match; a
constrained and an unconstrained request in one batch are both right."""

from __future__ import annotations

import json
import re

import pytest
from json_schemas import schemas_within

from nanoserve import LLM, SamplingParams
from nanoserve.demo import DEMO_MODEL_NAME, MODELS_DIR
from nanoserve.sampling_params import StructuredOutputsParams as SO

jsonschema = pytest.importorskip("jsonschema")
DEMO = MODELS_DIR / DEMO_MODEL_NAME

# Every regex bounds its repetitions: a random model given `+` may never stop.
REGEXES = [r"\d{4}-\d{2}-\d{2}", r"[A-Z][a-z]{2,5} [A-Z][a-z]{2,5}", r"(yes|no|maybe)!?", r"0x[0-9a-f]{1,6}",
           r"[a-z]{1,8}@[a-z]{1,8}\.(com|org)", r"\(\d{3}\) \d{3}-\d{4}", r"[-+]?\d{1,3}(\.\d{1,2})?"]
CHOICES = [["positive", "negative", "neutral"], ["A", "B", "C", "D"], ["yes", "no"], ['say "hi"', "bye"]]


def _llm(path, **kw) -> LLM:
    return LLM(str(path), **kw)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    llm = _llm(tiny_model("llama"), num_gpu_blocks_override=2048)
    yield llm
    llm.llm_engine.check_all_blocks_free()


@pytest.fixture(scope="module")
def demo():
    llm = _llm(DEMO, num_gpu_blocks_override=1024)
    yield llm
    llm.llm_engine.check_all_blocks_free()


def _check_schemas(llm: LLM, schemas: list[dict], prompt: str, max_tokens: int | None) -> None:
    # Every fourth greedy, the rest sampled (seeded): greedy alone would walk few paths of a grammar.
    params = [SamplingParams(temperature=0.0 if i % 4 == 0 else 1.0, seed=i, max_tokens=max_tokens,
                             structured_outputs=SO(json=s)) for i, s in enumerate(schemas)]
    outs = llm.generate([prompt] * len(schemas), params, use_tqdm=False)
    failures = []
    for schema, out in zip(schemas, outs, strict=True):
        text = out.outputs[0].text
        try:
            assert out.outputs[0].finish_reason == "stop", "did not finish"
            jsonschema.validate(json.loads(text), schema)
        except (AssertionError, ValueError, jsonschema.ValidationError) as e:
            failures.append((json.dumps(schema), text, str(e)[:200]))
    assert not failures, f"{len(failures)}/{len(schemas)} invalid, first: {failures[0]}"


def test_120_generated_schemas_on_the_tiny_random_model(tiny):
    schemas = schemas_within(seed=0, count=120, max_chars=300, max_depth=3, max_props=4)
    _check_schemas(tiny, schemas, "JSON: ", max_tokens=400)


def test_100_generated_schemas_on_the_demo_model(demo):
    # The demo model's context is 128 tokens of one character each: short prompt, small schemas.
    schemas = schemas_within(seed=1, count=100, max_chars=90, max_depth=2, max_props=3)
    _check_schemas(demo, schemas, "json:", max_tokens=None)


@pytest.mark.parametrize("which", ["tiny", "demo"])
def test_regex_and_choice_outputs_match(which, request):
    llm = request.getfixturevalue(which)
    params = [SamplingParams(temperature=t, seed=i, max_tokens=60, structured_outputs=SO(regex=r))
              for i, r in enumerate(REGEXES) for t in (0.0, 1.0)]
    params += [SamplingParams(temperature=t, seed=i, max_tokens=20, structured_outputs=SO(choice=c))
               for i, c in enumerate(CHOICES) for t in (0.0, 1.0)]
    outs = llm.generate(["Q: "] * len(params), params, use_tqdm=False)
    for p, out in zip(params, outs, strict=True):
        text, so = out.outputs[0].text, p.structured_outputs
        assert out.outputs[0].finish_reason == "stop", (so, text)
        if so.regex is not None:
            assert re.fullmatch(so.regex, text), (so.regex, text)
        else:
            assert text in so.choice, (so.choice, text)


def test_a_constrained_and_an_unconstrained_request_in_one_batch(demo):
    free = SamplingParams(temperature=0.0, max_tokens=30)
    alone = demo.generate(["what is 2+2?"], free, use_tqdm=False)[0].outputs[0]
    schema = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["answer"]}
    constrained = SamplingParams(temperature=0.0, max_tokens=40, structured_outputs=SO(json=schema))
    both = demo.generate(["what is 2+2?", "what is 2+2?"], [free, constrained], use_tqdm=False)
    assert both[0].outputs[0].token_ids == alone.token_ids
    jsonschema.validate(json.loads(both[1].outputs[0].text), schema)
