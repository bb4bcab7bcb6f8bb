"""Llama 3.1/3.2's JSON tool calls: the whole reply is one or more objects, `;`-separated, optionally
after the `<|python_tag|>` token:

    {"name": "get_weather", "parameters": {"city": "Paris"}}
    <|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}

A reply that does not start with `{` (or the tag) is plain content.
"""

from __future__ import annotations

from nanoserve.server.tool_parsers.base import ParsedOutput, ToolParser, take_call
from nanoserve.server.tool_parsers.json_scan import skip_ws

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"

    def parse(self, text: str, final: bool) -> ParsedOutput:
        i = skip_ws(text, 0)
        rest = text[i:]
        if rest.startswith(PYTHON_TAG):
            i = skip_ws(text, i + len(PYTHON_TAG))
        elif not final and PYTHON_TAG.startswith(rest):
            return ParsedOutput("")  # empty, blank or part of the tag: not decided yet
        if i >= len(text):
            return ParsedOutput(text if final else "")
        if text[i] != "{":
            return ParsedOutput(text)
        out = ParsedOutput("")
        while i < len(text):
            i = take_call(text, i, out)
            if i is None:
                break
            if i < len(text):
                if text[i] != ";":
                    out.malformed = True
                    break
                i = skip_ws(text, i + 1)
        return out
