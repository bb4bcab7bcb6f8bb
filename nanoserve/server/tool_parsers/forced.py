"""`tool_choice` "required" and a named function: the output is forced by a JSON schema (structured
outputs), so it is read back with a fixed shape instead of a model-specific format, as vLLM does.

- named function: the whole output is the arguments object, constrained by the function's parameters;
- "required": the output is `[{"name": ..., "parameters": {...}}, ...]`, each item one of the tools
  (at most one item when `parallel_tool_calls` is false).
"""

from __future__ import annotations

from typing import Any

from nanoserve.server.tool_parsers.base import (
    ExtractedToolCalls,
    ParsedOutput,
    ToolCall,
    ToolParser,
    take_call,
)
from nanoserve.server.tool_parsers.json_scan import CallSpan, skip_ws

# A function without `parameters` takes none (OpenAI's rule): an empty object.
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def parameters_schema(function: dict[str, Any]) -> dict[str, Any]:
    return function.get("parameters") or NO_PARAMETERS


def required_schema(functions: list[dict[str, Any]], parallel: bool) -> dict[str, Any]:
    """The schema of a non-empty array of calls to these functions.

    Each function's `$defs` move to the top (a `#/$defs/...` reference is resolved from the root);
    two functions defining one name differently raise ValueError.
    """
    defs: dict[str, Any] = {}
    variants = []
    for fn in functions:
        params = dict(parameters_schema(fn))
        for name, schema in params.pop("$defs", {}).items():
            if defs.setdefault(name, schema) != schema:
                raise ValueError(f"two tools define $defs/{name} differently")
        variants.append({
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [fn["name"]]}, "parameters": params},
            "required": ["name", "parameters"],
        })
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": variants}}
    if not parallel:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


class NamedFunctionParser(ToolParser):
    """The output is the arguments of `function_name`."""

    name = "named"

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name

    def parse(self, text: str, final: bool) -> ParsedOutput:
        start = skip_ws(text, 0)
        call = CallSpan(start=0, name=self.function_name)
        if start < len(text):
            # Trailing blanks are held back, so streamed arguments stay a prefix of the final ones.
            call.args_start, call.args_end = start, len(text.rstrip())
        if final:
            call.end = len(text)
        return ParsedOutput("", [call])

    def extract(self, text: str) -> ExtractedToolCalls:
        # Unvalidated: a grammar-forced output is valid unless cut short (finish_reason says so).
        return ExtractedToolCalls(None, [ToolCall(self.function_name, text.strip())])


class RequiredToolsParser(ToolParser):
    """The output is a JSON array of `{"name", "parameters"}` objects."""

    name = "required"

    def parse(self, text: str, final: bool) -> ParsedOutput:
        out = ParsedOutput("")
        i = skip_ws(text, 0)
        if i >= len(text):
            return out
        if text[i] != "[":
            out.malformed = True
            return out
        i = skip_ws(text, i + 1)
        while i < len(text) and text[i] != "]":
            i = take_call(text, i, out)
            if i is None:
                break
            if i < len(text) and text[i] == ",":
                i = skip_ws(text, i + 1)
        return out
