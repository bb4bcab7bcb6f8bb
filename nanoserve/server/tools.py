"""Tool calling in /v1/chat/completions: what `tools` and `tool_choice` make of a request and its output.

As vLLM does:
- "none" (or no tools): the output is plain content; the tools still reach the chat template.
- "auto" (the default when tools are given): the server's `--tool-call-parser` reads calls out of the
  output; it needs `--enable-auto-tool-choice`, else 400.
- "required" / a named function: the output is forced by a JSON schema through structured outputs
  (an array of {name, parameters} / the function's arguments) and read back with that fixed shape.
`finish_reason` is "tool_calls" when "auto" or "required" produced calls and the model stopped by
itself; a named function keeps "stop" (OpenAI's behaviour). `parallel_tool_calls: false` keeps the
first call only ("required": the schema allows one).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from nanoserve.sampling_params import SamplingParams, StructuredOutputsParams
from nanoserve.server.errors import APIError
from nanoserve.server.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    DeltaFunctionCall,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
)
from nanoserve.server.tool_parsers import (
    NamedFunctionParser,
    RequiredToolsParser,
    ToolCallDelta,
    ToolCallStream,
    ToolParser,
    make_tool_call_id,
    required_schema,
)
from nanoserve.server.tool_parsers.forced import parameters_schema


@dataclass
class ToolPlan:
    """How one chat request's output becomes content and tool calls."""

    mode: Literal["none", "auto", "required", "named"] = "none"
    parser: ToolParser | None = None  # None: the output is plain content
    schema: dict[str, Any] | None = None  # the JSON schema that forces the output
    max_calls: int | None = None

    def sampling_params(self, params: SamplingParams) -> SamplingParams:
        """`params` with the forcing schema, and special tokens kept where the parser's markers are."""
        changes: dict[str, Any] = {}
        if self.parser is not None and self.parser.keeps_special_tokens and self.mode == "auto":
            changes["skip_special_tokens"] = False
        if self.schema is not None:
            if params.structured_outputs is not None:
                raise APIError(400, 'tool_choice "required" or a named function constrains the output '
                               "itself: it cannot be combined with response_format, structured_outputs or "
                               "guided_*.", "tool_choice")
            changes["structured_outputs"] = StructuredOutputsParams(json=self.schema)
        return dataclasses.replace(params, **changes) if changes else params

    def stream(self) -> ToolCallStream | None:
        return ToolCallStream(self.parser, self.max_calls) if self.parser is not None else None

    def finish_reason(self, tools_called: bool, finish_reason: str | None) -> str | None:
        if tools_called and finish_reason == "stop" and self.mode in ("auto", "required"):
            return "tool_calls"
        return finish_reason

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, tool calls) of a finished output."""
        if self.parser is None:
            return text, []
        got = self.parser.extract(text)
        calls = [ToolCall(id=make_tool_call_id(), function=FunctionCall(name=c.name, arguments=c.arguments))
                 for c in got.tool_calls[:self.max_calls]]
        return got.content, calls


def plan_tools(body: ChatCompletionRequest, auto_parser: ToolParser | None) -> ToolPlan:
    """The request's ToolPlan; 400 for a tool_choice the request or the server cannot honour.

    `auto_parser` is the server's `--tool-call-parser`, or None without `--enable-auto-tool-choice`.
    """
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise APIError(400, "When using `tool_choice`, `tools` must be set.", "tool_choice")
        return ToolPlan()
    if choice is None:
        choice = "auto"
    if choice == "none":
        return ToolPlan()
    max_calls = None if body.parallel_tool_calls else 1
    if choice == "auto":
        if auto_parser is None:
            raise APIError(400, '"auto" tool choice requires the server to be started with '
                           "--enable-auto-tool-choice and --tool-call-parser.",
                           "tool_choice" if body.tool_choice is not None else "tools")
        return ToolPlan("auto", auto_parser, max_calls=max_calls)
    functions = [t.function.model_dump(exclude_none=True) for t in body.tools]
    if choice == "required":
        try:
            schema = required_schema(functions, parallel=body.parallel_tool_calls)
        except ValueError as e:
            raise APIError(400, f"The tools cannot be combined into one schema: {e}.", "tools") from e
        return ToolPlan("required", RequiredToolsParser(), schema, max_calls)
    name = choice.function.name
    function = next((f for f in functions if f["name"] == name), None)
    if function is None:
        raise APIError(400, f"Tool {name!r} named in tool_choice is not in tools.", "tool_choice")
    return ToolPlan("named", NamedFunctionParser(name), parameters_schema(function))


def template_tools(body: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools as chat templates take them (`apply_chat_template(..., tools=...)`)."""
    return [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None


def history_fields(message: ChatMessage) -> dict[str, Any]:
    """A history message's tool fields for the chat template.

    Templates (Hermes, Qwen, Llama 3) write the arguments with `tojson`, so they get the object, not
    the JSON text the API carries (as vLLM does); arguments that are not JSON stay text.
    """
    out: dict[str, Any] = {}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": c.type, "function": {"name": c.function.name,
                                                      "arguments": _loads_or_text(c.function.arguments)}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _loads_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def delta_tool_calls(deltas: list[ToolCallDelta]) -> list[DeltaToolCall] | None:
    if not deltas:
        return None
    return [DeltaToolCall(index=d.index, id=d.id, type="function" if d.id is not None else None,
                          function=DeltaFunctionCall(name=d.name, arguments=d.arguments))
            for d in deltas]
