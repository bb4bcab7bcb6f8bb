"""Per-request caps that keep one request from tying up the server, each a 400 naming its field.

A hostile or careless client could otherwise ask for `n=10000`, 20,000 prompts, thousands of stop
strings (scanned after every token) or a prompt megabytes long (tokenized before the context check).
The caps are `nanoserve serve` flags (`--max-n-sequences` after vLLM's VLLM_MAX_N_SEQUENCES); the
defaults are generous for real use. `check_unicode` refuses strings that are not valid Unicode (a lone
surrogate such as "\\ud800" parses as JSON but cannot be encoded, so a tokenizer would fail on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nanoserve.server.errors import APIError


@dataclass(frozen=True)
class RequestLimits:
    max_n_sequences: int = 128  # choices per prompt (`n`, `best_of`)
    max_prompts_per_request: int = 64  # /v1/completions' list of prompts
    max_stop_strings: int = 16
    max_stop_string_chars: int = 256


DEFAULT_LIMITS = RequestLimits()


def check_request_limits(limits: RequestLimits, n: int, num_prompts: int,
                         stop: str | list[str] | None) -> None:
    """400 naming the field for a request over one of the caps."""
    if n > limits.max_n_sequences:
        raise APIError(400, f"n={n} is more than this server allows per request ({limits.max_n_sequences}; "
                       "`--max-n-sequences`).", "n")
    if num_prompts > limits.max_prompts_per_request:
        raise APIError(400, f"{num_prompts} prompts in one request is more than this server allows "
                       f"({limits.max_prompts_per_request}; `--max-prompts-per-request`).", "prompt")
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if len(stops) > limits.max_stop_strings:
        raise APIError(400, f"{len(stops)} stop strings is more than this server allows "
                       f"({limits.max_stop_strings}).", "stop")
    longest = max((len(s) for s in stops if isinstance(s, str)), default=0)
    if longest > limits.max_stop_string_chars:
        raise APIError(400, f"A stop string of {longest} characters is longer than this server allows "
                       f"({limits.max_stop_string_chars}).", "stop")


def check_unicode(value: Any, path: str = "") -> None:
    """400 naming the first string (key or value) in a parsed JSON body that is not valid Unicode."""
    stack = [(value, path)]
    while stack:  # iterative: a deeply nested body must not hit the recursion limit
        item, where = stack.pop()
        if isinstance(item, str):
            _check_str(item, where)
        elif isinstance(item, dict):
            for k, v in item.items():
                key = str(k).encode("utf-8", "backslashreplace").decode()  # printable in the error
                key_path = f"{where}.{key}" if where else key
                if isinstance(k, str):
                    _check_str(k, key_path)
                stack.append((v, key_path))
        elif isinstance(item, list):
            stack.extend((v, f"{where}.{i}") for i, v in enumerate(item))


def _check_str(s: str, where: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise APIError(400, f"{where or 'The body'} is not valid Unicode: character {e.start} is a lone "
                       f"surrogate ({s[e.start]!a}).", where or "body") from None
