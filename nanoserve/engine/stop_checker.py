"""When does a sequence stop, why, and what text does it keep? Pure Python, no tensors.

vLLM's rules: EOS (unless ignore_eos), a stop token id or a stop string finish with reason "stop";
max_tokens or the model's context finish with "length". None of the stop conditions count before
min_tokens outputs. The text keeps neither the EOS token's text, nor a stop token's text, nor the stop
string (unless include_stop_str_in_output), and a stop string may span several tokens.

Because a stop string found later cuts text off the end, a stream may not show a running sequence's
whole text: `releasable_chars` says how much of it is safe to send (the async front's deltas use it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from nanoserve.sampling_params import SamplingParams

_REPLACEMENT_CHAR = "\ufffd"


@dataclass
class StopResult:
    finished: bool
    finish_reason: str | None  # "stop" | "length" | None while running
    stop_reason: int | str | None  # vLLM's: the stop token id or stop string that matched; None otherwise
    text: str  # the sequence's output text from now on (truncated at a stop string / stop token)


def check_stop(
    params: SamplingParams,
    eos_token_ids: Collection[int],
    output_text: str,
    new_char_count: int,
    last_token_id: int,
    num_output_tokens: int,
    num_total_tokens: int | None = None,
    max_model_len: int | None = None,
) -> StopResult:
    """Decide whether a sequence is done after appending `last_token_id`.

    output_text: the cumulative detokenized output including the new token's text; new_char_count: how
    many characters the new token added to it (the stop-string search looks only at the new tail);
    num_output_tokens: output tokens including the new one; num_total_tokens: prompt + output tokens,
    compared with max_model_len.
    """
    hit = token_stop(params, eos_token_ids, last_token_id, num_output_tokens)
    if hit is not None:
        text = _drop_tail(output_text, new_char_count, params)
        return StopResult(True, "stop", last_token_id if hit == "stop_token" else None, text)
    if num_output_tokens >= params.min_tokens:
        if params.stop:
            match = find_stop_string(output_text, new_char_count, params.stop)
            if match is not None:
                index, stop_str = match
                end = index + len(stop_str) if params.include_stop_str_in_output else index
                return StopResult(True, "stop", stop_str, output_text[:end])
    if params.max_tokens is not None and num_output_tokens >= params.max_tokens:
        return StopResult(True, "length", None, output_text)
    if max_model_len is not None and num_total_tokens is not None and num_total_tokens >= max_model_len:
        return StopResult(True, "length", None, output_text)
    return StopResult(False, None, None, output_text)


def token_stop(
    params: SamplingParams, eos_token_ids: Collection[int], token_id: int, num_output_tokens: int
) -> str | None:
    """Whether `token_id`, as output token number `num_output_tokens`, ends the sequence by itself:
    "eos" (unless ignore_eos), "stop_token" (one of stop_token_ids), or None; never before min_tokens.
    Also what a draft model checks to stop drafting past a token that would finish the sequence."""
    if num_output_tokens < params.min_tokens:
        return None
    if not params.ignore_eos and token_id in eos_token_ids:
        return "eos"
    if token_id in (params.stop_token_ids or ()):
        return "stop_token"
    return None


def find_stop_string(text: str, new_char_count: int, stops: list[str]) -> tuple[int, str] | None:
    """The earliest stop string that ends inside the last `new_char_count` characters, as (index, string).

    Earlier text was searched on earlier steps, so a match must overlap the new characters; a stop
    string spanning several tokens is found on the step that completes it.
    """
    if new_char_count <= 0:
        return None
    best: tuple[int, str] | None = None
    for stop in stops:
        start = max(0, len(text) - new_char_count - len(stop) + 1)
        index = text.find(stop, start)
        if index != -1 and (best is None or index < best[0]):
            best = (index, stop)
    return best


def releasable_chars(text: str, params: SamplingParams, finished: bool) -> int:
    """How many leading characters of a completion's cumulative `text` may be streamed now.

    Once finished, all of them. While running, two kinds of tail are held back, so that streamed text
    always concatenates to the final text:
    - trailing U+FFFD: an incomplete UTF-8 character that the next token may complete (or replace);
    - when stop strings are cut from the output, the longest stop string minus one character: a stop
      string completed by the next token starts at most that far back, and it and everything after it
      will be cut. With include_stop_str_in_output nothing is cut (the match ends in the new token's
      characters, and only text after it, which is new too, is dropped), so nothing is held.
    """
    if finished:
        return len(text)
    end = len(text)
    while end > 0 and text[end - 1] == _REPLACEMENT_CHAR:
        end -= 1
    if params.stop and not params.include_stop_str_in_output:
        end -= max(len(s) for s in params.stop) - 1
    return max(0, end)


def _drop_tail(text: str, new_char_count: int, params: SamplingParams) -> str:
    # The text of the EOS / stop token itself (empty when special tokens are skipped) is not output.
    if new_char_count <= 0 or params.include_stop_str_in_output:
        return text
    return text[:-new_char_count]
