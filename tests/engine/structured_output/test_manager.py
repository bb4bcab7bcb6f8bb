"""Structured outputs through the engine: every kind ends valid, beside unconstrained rows in one
batch, for each of n completions, across preemption; a bad spec is refused before any state."""

import json
import re

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.sampling_params import SamplingParams
from nanoserve.sampling_params import StructuredOutputsParams as SO

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age"],
}


def constrained(so: SO, **kw) -> SamplingParams:
    kw.setdefault("max_tokens", 120)
    return SamplingParams(structured_outputs=so, **kw)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_kind_ends_valid_with_stop(make_llm, temperature):
    llm = make_llm("llama")
    cases = [
        (SO(json=SCHEMA), lambda t: jsonschema.validate(json.loads(t), SCHEMA)),
        (SO(json_object=True, ), lambda t: isinstance(json.loads(t), dict) or pytest.fail(t)),
        (SO(regex=r"[a-z]{3}-\d{2}"), lambda t: re.fullmatch(r"[a-z]{3}-\d{2}", t) or pytest.fail(t)),
        (SO(choice=["red", "green", "blue"]), lambda t: t in ("red", "green", "blue") or pytest.fail(t)),
        (SO(grammar='root ::= ("ab" | "c")+ "!"'), lambda t: re.fullmatch(r"(ab|c)+!", t) or pytest.fail(t)),
    ]
    prompts = ["The answer:", "x", "hello world", "{", "0"]
    params = [constrained(so, temperature=temperature, seed=i) for i, (so, _) in enumerate(cases)]
    # json_object allows free strings, so only it may run to max_tokens on a random model.
    params[1] = params[1].clone(max_tokens=None)
    outs = llm.generate(prompts, params, use_tqdm=False)
    for (so, check), out in zip(cases, outs, strict=True):
        text = out.outputs[0].text
        assert out.outputs[0].finish_reason == "stop", (so.kind, text)
        check(text)


def test_constrained_and_unconstrained_rows_in_one_batch_are_both_right(make_llm):
    llm = make_llm("qwen3")
    free = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    alone = llm.generate(["tell me"], free, use_tqdm=False)[0].outputs[0].token_ids
    outs = llm.generate(["tell me", "tell me", "pick"],
                        [free, constrained(SO(json=SCHEMA), temperature=0.0),
                         constrained(SO(choice=["yes", "no"]), temperature=0.0)], use_tqdm=False)
    assert outs[0].outputs[0].token_ids == alone  # the mask never touches an unconstrained row
    jsonschema.validate(json.loads(outs[1].outputs[0].text), SCHEMA)
    assert outs[2].outputs[0].text in ("yes", "no")


def test_each_of_n_completions_follows_its_own_matcher(make_llm):
    llm = make_llm("llama")
    out = llm.generate(["n"], constrained(SO(json=SCHEMA), n=4, temperature=1.0, seed=3), use_tqdm=False)[0]
    texts = [c.text for c in out.outputs]
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(texts)) > 1  # independent draws, not one matcher advanced by four sequences


def test_preemption_does_not_replay_tokens_into_the_matcher(make_llm):
    """Greedy outputs under a pool too small for the batch (recompute preemption) equal those
    generated with room; a matcher fed the recomputed tokens again would refuse them and stop early."""
    pattern = r"[a-z0-9]{60}"
    prompts = [f"prompt number {i} " * 3 for i in range(6)]
    params = constrained(SO(regex=pattern), temperature=0.0)
    roomy = make_llm("llama", num_gpu_blocks_override=128, block_size=16)
    expected = [o.outputs[0].text for o in roomy.generate(prompts, params, use_tqdm=False)]
    tight = make_llm("llama", num_gpu_blocks_override=12, block_size=16)
    outs = tight.generate(prompts, params, use_tqdm=False)
    assert tight.llm_engine.get_stats().num_preemptions > 0
    assert [o.outputs[0].text for o in outs] == expected
    assert all(re.fullmatch(pattern, t) for t in expected)


def test_the_grammar_ends_the_request_even_with_ignore_eos(make_llm):
    llm = make_llm("llama")
    out = llm.generate(["q"], constrained(SO(choice=["maybe"]), ignore_eos=True), use_tqdm=False)[0]
    assert (out.outputs[0].text, out.outputs[0].finish_reason) == ("maybe", "stop")


def test_a_bad_spec_is_refused_at_add_request_and_leaves_nothing_behind(make_llm):
    llm = make_llm("llama")
    engine = llm.llm_engine
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request("bad", "x", constrained(SO(regex="[unclosed")))
    assert err.value.param == "structured_outputs"
    assert not engine.has_unfinished_requests()
    compiled = engine.structured_outputs.cache.misses
    engine.add_request("ok1", "x", constrained(SO(regex="a+b")))
    engine.add_request("ok2", "y", constrained(SO(regex="a+b")))
    assert engine.structured_outputs.cache.misses == compiled + 1  # the second is a cache hit
    while engine.has_unfinished_requests():
        engine.step()


def test_unconstrained_engines_never_load_xgrammar_state(make_llm):
    llm = make_llm("llama")
    llm.generate(["a"], SamplingParams(max_tokens=4), use_tqdm=False)
    assert llm.llm_engine.structured_outputs._cache is None
