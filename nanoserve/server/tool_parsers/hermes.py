"""Hermes' tool-call format (NousResearch Hermes 2/3, Qwen 2.5/3): each call is a JSON object
between `<tool_call>` and `</tool_call>`, after any text:

    I'll look both up.
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
    <tool_call>
    {"name": "get_time", "arguments": {"tz": "CET"}}
    </tool_call>

The content is the text before the first `<tool_call>` (text after the calls is dropped, as vLLM does).
A missing `</tool_call>` at the very end (the model stopped there) is tolerated.
"""

from __future__ import annotations

from nanoserve.server.tool_parsers.base import ParsedOutput, ToolParser, take_call
from nanoserve.server.tool_parsers.json_scan import skip_ws

START, END = "<tool_call>", "</tool_call>"


def held_back(text: str, marker: str) -> int:
    """Length of the longest end of `text` that could be the beginning of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class HermesToolParser(ToolParser):
    name = "hermes"
    keeps_special_tokens = True  # <tool_call> is a special token in Hermes' tokenizers

    def parse(self, text: str, final: bool) -> ParsedOutput:
        first = text.find(START)
        if first < 0:
            cut = 0 if final else held_back(text, START)
            return ParsedOutput(text[:len(text) - cut])
        out = ParsedOutput(text[:first])
        start = first
        while start >= 0:
            i = skip_ws(text, start + len(START))
            if i >= len(text):
                break
            i = take_call(text, i, out)
            if i is None:
                break
            if not (text.startswith(END, i) or END.startswith(text[i:])):
                out.malformed = True  # something other than the closing tag follows the object
                break
            start = text.find(START, i)
        return out
