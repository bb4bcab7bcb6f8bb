"""A scanner over possibly unfinished JSON text: where values end, and the members of a tool-call object.

Streaming needs to know, on a prefix of the model's output, whether the function's name is complete
and where its arguments start, so that argument text can be sent while it is still being generated.
The scanner only finds value boundaries (strings, escapes, bracket depth); `json.loads` on the
finished text is what validates. `None` always means "the text ends before this is known".
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ARGUMENT_KEYS = ("arguments", "parameters")
_SCALAR_CHARS = frozenset("0123456789+-.eEtrufalsn")


class MalformedJSON(ValueError):
    """The text cannot be the start of the JSON value expected here."""


def skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def value_end(text: str, pos: int) -> int | None:
    """Index just past the JSON value starting at `pos`, or None if the text ends inside it."""
    if pos >= len(text):
        return None
    first = text[pos]
    if first == '"':
        return _string_end(text, pos)
    if first in "{[":
        depth, i = 0, pos
        while i < len(text):
            c = text[i]
            if c == '"':
                end = _string_end(text, i)
                if end is None:
                    return None
                i = end
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return None
    if first in _SCALAR_CHARS:
        i = pos
        while i < len(text) and text[i] in _SCALAR_CHARS:
            i += 1
        return None if i == len(text) else i  # a number may still be growing
    raise MalformedJSON(f"unexpected {first!r} at {pos}")


def _string_end(text: str, pos: int) -> int | None:
    i = pos + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    return None


@dataclass
class CallSpan:
    """One `{"name": ..., "arguments": {...}}` object in the output, as far as the text goes."""

    start: int
    end: int | None = None  # past the closing brace; None while unfinished
    name: str | None = None  # set once the name string is complete
    args_start: int | None = None
    args_end: int | None = None

    def arguments(self, text: str) -> str | None:
        """The arguments' JSON text so far (a prefix of the final one), or None if not known yet.

        Arguments that are not an object are never streamed (the call is malformed). A finished call
        without arguments has "{}".
        """
        if self.args_start is None:
            return "{}" if self.end is not None else None
        if text[self.args_start] != "{":
            return None
        return text[self.args_start:self.args_end if self.args_end is not None else len(text)]

    def is_valid(self, text: str) -> bool:
        """Finished, valid JSON, a string name and object arguments."""
        if self.end is None or self.name is None:
            return False
        try:
            obj = json.loads(text[self.start:self.end])
        except ValueError:
            return False
        args = next((obj[k] for k in ARGUMENT_KEYS if k in obj), {})
        return isinstance(obj.get("name"), str) and isinstance(args, dict)


def scan_call(text: str, pos: int) -> CallSpan:
    """Scan the object starting at `text[pos] == "{"`; raises MalformedJSON if it cannot be one."""
    call = CallSpan(start=pos)
    i = pos + 1
    while True:
        i = skip_ws(text, i)
        if i >= len(text):
            return call
        if text[i] == "}":
            call.end = i + 1
            return call
        if text[i] != '"':
            raise MalformedJSON(f"expected a key at {i}")
        key_end = _string_end(text, i)
        if key_end is None:
            return call
        key = json.loads(text[i:key_end])
        i = skip_ws(text, key_end)
        if i >= len(text):
            return call
        if text[i] != ":":
            raise MalformedJSON(f"expected ':' at {i}")
        i = skip_ws(text, i + 1)
        if i >= len(text):
            return call
        end = value_end(text, i)
        if key in ARGUMENT_KEYS and call.args_start is None:
            call.args_start, call.args_end = i, end
        elif key == "name" and end is not None and text[i] == '"':
            call.name = json.loads(text[i:end])
        if end is None:
            return call
        i = skip_ws(text, end)
        if i >= len(text):
            return call
        if text[i] == ",":
            i += 1
        elif text[i] == "}":
            call.end = i + 1
            return call
        else:
            raise MalformedJSON(f"expected ',' or '}}' at {i}")
