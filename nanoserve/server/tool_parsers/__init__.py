"""Tool-call parsers: a model's text output → content and OpenAI tool calls, streamed or not.

`--tool-call-parser NAME` picks one of `TOOL_PARSERS` for `tool_choice: "auto"`; "required" and a named
function use the fixed shapes of `forced` (the output is constrained by a JSON schema).
"""

from __future__ import annotations

from nanoserve.server.tool_parsers.base import (
    ExtractedToolCalls,
    ToolCall,
    ToolCallDelta,
    ToolCallStream,
    ToolParser,
    make_tool_call_id,
)
from nanoserve.server.tool_parsers.forced import NamedFunctionParser, RequiredToolsParser, required_schema
from nanoserve.server.tool_parsers.hermes import HermesToolParser
from nanoserve.server.tool_parsers.llama3_json import Llama3JsonToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {p.name: p for p in (HermesToolParser, Llama3JsonToolParser)}


def get_tool_parser(name: str) -> ToolParser:
    if name not in TOOL_PARSERS:
        raise ValueError(f"unknown tool-call parser {name!r}; choose from {', '.join(TOOL_PARSERS)}")
    return TOOL_PARSERS[name]()


__all__ = [
    "TOOL_PARSERS", "ExtractedToolCalls", "NamedFunctionParser", "RequiredToolsParser", "ToolCall",
    "ToolCallDelta", "ToolCallStream", "ToolParser", "get_tool_parser", "make_tool_call_id",
    "required_schema",
]
