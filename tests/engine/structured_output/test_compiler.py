"""GrammarCache: each kind compiles, the LRU serves repeats, bad specs are 400s naming the field, and
a model vocabulary wider than the tokenizer's is masked off."""

import pytest
import torch
from tiny_models import EOS_ID, VOCAB_SIZE, char_tokenizer

from nanoserve.engine.structured_output.compiler import GrammarCache
from nanoserve.errors import InvalidRequestError
from nanoserve.sampling_params import StructuredOutputsParams as SO

xgr = pytest.importorskip("xgrammar")


@pytest.fixture(scope="module")
def cache():
    return GrammarCache(char_tokenizer(), VOCAB_SIZE, [EOS_ID], max_entries=3)


def matches(cache: GrammarCache, so: SO, text: str) -> bool:
    matcher = xgr.GrammarMatcher(cache.get(so))
    tok = char_tokenizer()
    return all(matcher.accept_token(t) for t in tok.encode(text)) and matcher.accept_token(EOS_ID)


def test_each_kind_accepts_what_it_should_and_refuses_the_rest(cache):
    schema = {"type": "object", "properties": {"a": {"type": "integer", "maximum": 9}}, "required": ["a"]}
    assert matches(cache, SO(json=schema), '{"a": 7}')
    assert not matches(cache, SO(json=schema), '{"a": 17}')
    assert matches(cache, SO(json_object=True), '{"x": [1, "y"]}')
    assert not matches(cache, SO(json_object=True), "[1]")
    assert matches(cache, SO(regex=r"\d{3}-[ab]"), "123-b")
    assert not matches(cache, SO(regex=r"\d{3}-[ab]"), "12-b")
    quoted = SO(choice=['say "hi"', "back\\slash", "two\nlines"])
    assert all(matches(cache, quoted, c) for c in quoted.choice)
    assert not matches(cache, quoted, "say hi")
    assert matches(cache, SO(grammar='root ::= "a" ("b" | "c")*'), "abcb")


def test_repeats_hit_the_cache_and_the_oldest_entry_is_evicted(cache):
    schema = {"type": "object", "properties": {"z": {"type": "boolean"}}}
    first = cache.get(SO(json=schema))
    hits = cache.hits
    assert cache.get(SO(json=dict(schema))) is first
    assert cache.get(SO(json='{"type": "object", "properties": {"z": {"type": "boolean"}}}')) is first
    assert cache.hits == hits + 2
    for i in range(3):
        cache.get(SO(regex=f"x{i}"))
    assert cache.get(SO(json=schema)) is not first  # evicted (3 entries) and compiled again
    assert len(cache._cache) == 3


@pytest.mark.parametrize("so", [
    SO(regex="(unclosed"),
    SO(json={"type": "no-such-type"}),
    SO(json="{not json"),
    SO(grammar='root ::= "a" | '),
    SO(grammar="start ::= \"a\""),  # no root rule
])
def test_a_spec_that_does_not_compile_is_a_400_naming_structured_outputs(cache, so):
    with pytest.raises(InvalidRequestError) as err:
        cache.get(so)
    assert err.value.param == "structured_outputs"
    assert f"structured_outputs.{so.kind}" in str(err.value)
    assert ".cc:" not in str(err.value)  # no C++ source paths in a client's message


def test_tokens_past_the_tokenizer_are_never_allowed(cache):
    tok = char_tokenizer()
    assert len(tok) < VOCAB_SIZE  # the tiny model's lm_head is wider than its tokenizer
    matcher = xgr.GrammarMatcher(cache.get(SO(json_object=True)))
    bitmask = xgr.allocate_token_bitmask(1, VOCAB_SIZE)  # [1, 4]
    matcher.fill_next_token_bitmask(bitmask, 0)
    bits = ((bitmask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).reshape(-1)
    assert bits[len(tok):VOCAB_SIZE].sum() == 0
    assert bits[tok.convert_tokens_to_ids("{")] == 1


def test_length_bounded_strings_never_take_raw_control_characters(cache):
    """xgrammar's own minLength/maxLength path lets a raw tab into the string (not JSON)."""
    string = {"type": "string", "minLength": 1, "maxLength": 3}
    bounded = SO(json={"type": "object", "properties": {"s": string}})
    assert matches(cache, bounded, '{"s": "abc"}')
    assert not matches(cache, bounded, '{"s": "a\tb"}')
    assert not matches(cache, bounded, '{"s": "abcd"}')
    assert not matches(cache, bounded, '{"s": ""}')


def test_special_tokens_are_never_text_of_the_output(cache):
    """'<s>' would satisfy minLength 2 for the grammar, but the detokenizer drops it: an empty string."""
    tok = char_tokenizer()
    specials = [i for i in tok.all_special_ids if i != EOS_ID]
    assert set(specials) & set(cache.tokenizer_info.special_token_ids) == set(specials)
    bounded = SO(json={"type": "string", "minLength": 2, "maxLength": 5})
    matcher = xgr.GrammarMatcher(cache.get(bounded))
    assert matcher.accept_token(tok.convert_tokens_to_ids('"'))
    bitmask = xgr.allocate_token_bitmask(1, VOCAB_SIZE)  # [1, 4]
    matcher.fill_next_token_bitmask(bitmask, 0)
    bits = ((bitmask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).reshape(-1)
    assert all(bits[i] == 0 for i in tok.all_special_ids)
    assert bits[tok.convert_tokens_to_ids("a")] == 1
