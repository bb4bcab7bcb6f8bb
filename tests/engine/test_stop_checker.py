import pytest
from tiny_models import EOS_ID, char_tokenizer

from nanoserve.engine.detokenizer import IncrementalDetokenizer
from nanoserve.engine.stop_checker import (
    StopResult,
    check_stop,
    find_stop_string,
    releasable_chars,
)
from nanoserve.sampling_params import SamplingParams

EOS = (EOS_ID,)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def run(tok, params: SamplingParams, pieces: list[str] | list[int], prompt_len: int = 3,
        max_model_len: int | None = None, skip_special_tokens: bool = True):
    """Feed tokens (strings are encoded with the char tokenizer) through the detokenizer and the stop
    checker as the engine does; return (final StopResult, token ids fed, texts released per step)."""
    ids = [t for p in pieces
           for t in ([p] if isinstance(p, int) else tok.encode(p, add_special_tokens=False))]
    detok = IncrementalDetokenizer(tok, [], skip_special_tokens=skip_special_tokens)
    released = []
    result = StopResult(False, None, None, "")
    for n, tok_id in enumerate(ids, start=1):
        delta = detok.add_token(tok_id)
        result = check_stop(params, EOS, detok.output_text, len(delta), tok_id, n,
                            num_total_tokens=prompt_len + n, max_model_len=max_model_len)
        released.append(result.text[: releasable_chars(result.text, params, result.finished)])
        if result.finished:
            return result, ids[:n], released
    return result, ids, released


def test_runs_until_max_tokens(tok):
    res, ids, _ = run(tok, SamplingParams(max_tokens=5), ["abcdefgh"])
    assert (res.finished, res.finish_reason, res.text, len(ids)) == (True, "length", "abcde", 5)


def test_context_limit_is_a_length_finish(tok):
    res, ids, _ = run(tok, SamplingParams(max_tokens=None), ["abcdefgh"], prompt_len=3, max_model_len=7)
    assert (res.finish_reason, res.text, len(ids)) == ("length", "abcd", 4)
    res, ids, _ = run(tok, SamplingParams(max_tokens=None), ["abcdefgh"])
    assert not res.finished and len(ids) == 8


def test_eos_stops_and_its_text_is_dropped(tok):
    res, ids, _ = run(tok, SamplingParams(), ["ab", EOS_ID, "cd"])
    assert (res.finish_reason, res.stop_reason, res.text, ids[-1]) == ("stop", None, "ab", EOS_ID)
    res, _, _ = run(tok, SamplingParams(skip_special_tokens=False), ["ab", EOS_ID], skip_special_tokens=False)
    assert res.text == "ab"  # "</s>" was decoded but is not output


def test_ignore_eos_continues_but_stop_token_ids_still_stop(tok):
    x = tok.convert_tokens_to_ids("x")
    res, ids, _ = run(tok, SamplingParams(ignore_eos=True, stop_token_ids=[x]), ["ab", EOS_ID, "cdxef"])
    assert (res.finish_reason, res.stop_reason, res.text) == ("stop", x, "abcd")
    res, ids, _ = run(tok, SamplingParams(ignore_eos=True, max_tokens=4), ["a", EOS_ID, "bcd"])
    assert (res.finish_reason, len(ids)) == ("length", 4)


def test_stop_string_spanning_tokens_is_cut_before_it(tok):
    res, ids, _ = run(tok, SamplingParams(stop=["\n\n"]), ["one\n", "\ntwo"])
    assert (res.finish_reason, res.stop_reason, res.text) == ("stop", "\n\n", "one")
    assert len(ids) == 5  # stopped on the second newline, not later
    res, _, _ = run(tok, SamplingParams(stop=["\n\n"], include_stop_str_in_output=True), ["one\n", "\ntwo"])
    assert res.text == "one\n\n"


def test_earliest_stop_string_wins():
    # both complete on this step; "bc" starts earlier even though "cd" is listed first
    assert find_stop_string("abcd", 2, ["cd", "bc"]) == (1, "bc")
    assert find_stop_string("abcd", 0, ["cd"]) is None
    assert find_stop_string("xxabyy", 1, ["ab"]) is None  # ended before the new character


def test_stop_string_found_in_a_multi_character_token():
    params = SamplingParams(stop=["lo w"])
    res = check_stop(params, EOS, "hello world", len("lo world"), 99, 2)
    assert (res.finished, res.text, res.stop_reason) == (True, "hel", "lo w")


def test_min_tokens_delays_every_stop_condition(tok):
    x = tok.convert_tokens_to_ids("x")
    params = SamplingParams(min_tokens=4, stop=["b"], stop_token_ids=[x], max_tokens=10)
    pieces = ["a", EOS_ID, "x", "b", "cb"]
    res, ids, _ = run(tok, params, pieces)
    # EOS (token 2) and x (3) come before min_tokens; the 4th token may stop (vLLM: output_len >= min_tokens)
    assert (res.finish_reason, res.stop_reason, len(ids), res.text) == ("stop", "b", 4, "ax")
    res, ids, _ = run(tok, params.clone(min_tokens=0), pieces)
    assert (res.finish_reason, res.stop_reason, len(ids)) == ("stop", None, 2)
    res, ids, _ = run(tok, params.clone(min_tokens=2), pieces)
    assert (res.finish_reason, res.stop_reason, len(ids)) == ("stop", None, 2)
    res, ids, _ = run(tok, params.clone(min_tokens=3), pieces)
    assert (res.finish_reason, res.stop_reason, len(ids)) == ("stop", x, 3)


def test_stop_beats_length_on_the_same_token(tok):
    res, _, _ = run(tok, SamplingParams(max_tokens=3), ["ab", EOS_ID])
    assert (res.finish_reason, res.text) == ("stop", "ab")


def test_released_text_never_shrinks_and_holds_back_a_possible_stop(tok):
    params = SamplingParams(stop=["END", "\n\n"])
    assert releasable_chars("abcdef", params, finished=False) == 4  # the longest stop string minus one
    res, _, released = run(tok, params, ["ab", "E", "N", "x", "yE", "ND", "zz"])
    assert res.text == "abENxy" and res.finish_reason == "stop"
    for before, after in zip(released, released[1:], strict=False):
        assert after.startswith(before)
    assert released[-1] == "abENxy"
    assert "abEN" not in released[:4]  # "EN" was held while it could still become "END"


def test_nothing_is_held_back_without_stop_strings():
    params = SamplingParams()
    assert releasable_chars("abc", params, finished=False) == 3
    held = SamplingParams(stop=["abcdef"])
    assert releasable_chars("abc", held, finished=False) == 0
    assert releasable_chars("abc", held, finished=True) == 3


def test_nothing_is_held_back_when_the_stop_string_stays_in_the_output(tok):
    params = SamplingParams(stop=["END", "\n\n"], include_stop_str_in_output=True)
    assert releasable_chars("abcdef", params, finished=False) == 6
    res, _, released = run(tok, params, ["ab", "E", "N", "x", "yE", "ND", "zz"])
    assert (res.finish_reason, res.text) == ("stop", "abENxyEND")
    # Every token (one per character) releases its text at once: the stream is as live as without stops.
    assert released == [res.text[:k] for k in range(1, len(res.text) + 1)]


def test_with_the_stop_string_kept_only_new_text_after_it_is_cut():
    # One token "ENyz" completes the stop string: "yz" is dropped, but it was never released.
    params = SamplingParams(stop=["EN"], include_stop_str_in_output=True)
    res = check_stop(params, EOS, "abxENyz", len("ENyz"), 99, 2)
    assert (res.finished, res.text) == (True, "abxEN")
    assert releasable_chars("abx", params, finished=False) == 3


def test_a_trailing_incomplete_character_is_held_back_until_it_completes():
    plain = SamplingParams()
    assert releasable_chars("ab\ufffd\ufffd", plain, finished=False) == 2
    assert releasable_chars("ab\ufffd", plain, finished=True) == 3
    assert releasable_chars("a\ufffdb", plain, finished=False) == 3  # a complete U+FFFD mid-text is text
    # The stop string's hold-back counts from the last complete character: "x" + an unfinished "\u20ac"
    # may still become the stop string "x\u20ac", so "x" is held too.
    euro = SamplingParams(stop=["x\u20ac"])
    assert releasable_chars("abx\ufffd", euro, finished=False) == 2
    assert releasable_chars("abx\ufffd", euro.clone(include_stop_str_in_output=True), finished=False) == 3
