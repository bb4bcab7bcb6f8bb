import math

import pytest

from nanoserve import SamplingParams as LazySamplingParams
from nanoserve.errors import InvalidRequestError
from nanoserve.sampling_params import SamplingParams


def test_defaults_match_vllm():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, -1, 0.0)
    assert (p.seed, p.stop, p.stop_token_ids, p.ignore_eos) == (None, [], [], False)
    assert (p.max_tokens, p.min_tokens, p.logprobs) == (16, 0, None)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert not p.greedy and not p.has_penalties and not p.top_k_enabled
    assert LazySamplingParams is SamplingParams


def test_stop_is_normalised_to_a_list():
    assert SamplingParams(stop="\n").stop == ["\n"]
    assert SamplingParams(stop=("a", "bc")).stop == ["a", "bc"]
    assert SamplingParams(stop_token_ids=(3, 4)).stop_token_ids == [3, 4]


@pytest.mark.parametrize("temperature, greedy", [(0.0, True), (9e-6, True), (1e-5, False), (0.7, False)])
def test_greedy_below_vllm_epsilon(temperature, greedy):
    assert SamplingParams(temperature=temperature).greedy is greedy


def test_boundary_values_are_accepted():
    SamplingParams(temperature=0.0)
    SamplingParams(temperature=2.0)
    SamplingParams(top_p=1.0, top_k=0, min_p=1.0)
    SamplingParams(top_k=-1, min_p=0.0, logprobs=0)
    SamplingParams(logprobs=20, presence_penalty=-2.0, frequency_penalty=2.0, repetition_penalty=1e-3)
    SamplingParams(max_tokens=1, min_tokens=1)
    SamplingParams(max_tokens=None, min_tokens=1000)
    SamplingParams(seed=-1)
    SamplingParams(seed=2**64 - 1)
    SamplingParams(n=2.0)  # an integral float from JSON


BAD = [
    ("n", 0), ("n", -1), ("n", 1.5), ("n", True), ("n", "2"),
    ("temperature", -0.1), ("temperature", 2.01), ("temperature", math.nan), ("temperature", "hot"),
    ("top_p", 0.0), ("top_p", -0.5), ("top_p", 1.01), ("top_p", None),
    ("top_k", -2), ("top_k", 2.5),
    ("min_p", -0.01), ("min_p", 1.5),
    ("seed", 1.5), ("seed", "7"), ("seed", 2**64), ("seed", -(2**63) - 1), ("seed", False),
    ("stop", ""), ("stop", ["a", ""]), ("stop", 3), ("stop", ["a", 3]),
    ("stop_token_ids", [1, -2]), ("stop_token_ids", 5), ("stop_token_ids", ["a"]),
    ("ignore_eos", 1), ("ignore_eos", "yes"),
    ("max_tokens", 0), ("max_tokens", -3), ("max_tokens", 1.5),
    ("min_tokens", -1),
    ("logprobs", -1), ("logprobs", 21),
    ("presence_penalty", 2.5), ("presence_penalty", -2.01),
    ("frequency_penalty", -3.0), ("frequency_penalty", 2.001),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_penalty", math.nan),
    ("include_stop_str_in_output", None), ("skip_special_tokens", 0),
]


@pytest.mark.parametrize("field, value", BAD)
def test_invalid_value_raises_naming_the_field(field, value):
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{field: value})
    assert info.value.param == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_min_tokens_above_max_tokens_is_rejected():
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(max_tokens=4, min_tokens=5)
    assert info.value.param == "min_tokens"


def test_clone_copies_lists_and_revalidates():
    p = SamplingParams(stop=["x"], stop_token_ids=[7], seed=3)
    q = p.clone(seed=4)
    assert q.seed == 4 and q.stop == ["x"] and q.stop_token_ids == [7]
    q.stop.append("y")
    assert p.stop == ["x"]
    with pytest.raises(InvalidRequestError) as info:
        p.clone(top_p=0.0)
    assert info.value.param == "top_p"


def test_structured_outputs_needs_exactly_one_constraint():
    from nanoserve.sampling_params import StructuredOutputsParams

    so = StructuredOutputsParams(choice=("a", "b"))
    assert (so.kind, so.choice) == ("choice", ["a", "b"])
    assert SamplingParams(structured_outputs={"regex": "a+"}).structured_outputs.kind == "regex"
    assert SamplingParams(structured_outputs=so, n=2).clone(n=1).structured_outputs is so
    bad = [dict(), dict(regex="a", choice=["a"]), dict(json=3), dict(choice=[]), dict(choice=["a", 1]),
           dict(grammar=b"root"), dict(json_object="yes"), dict(regex="a" * 70_000)]
    for fields in bad:
        with pytest.raises(InvalidRequestError) as err:
            StructuredOutputsParams(**fields)
        assert err.value.param == "structured_outputs", fields
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(structured_outputs={"guided_regex": "a"})
    assert err.value.param == "structured_outputs"
    with pytest.raises(InvalidRequestError):
        SamplingParams(structured_outputs="a+")
