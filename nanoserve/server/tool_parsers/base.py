"""What every tool-call parser shares: the parse of a (possibly unfinished) output, the non-streamed
extraction with its fallback, and `ToolCallStream`, which turns streamed text into deltas.

A parser is one pure function, `parse(text, final)`: the content and the calls found so far, where
content only grows and each call's arguments text only grows as the text does. Streaming sends the
differences between successive parses, so the concatenated deltas equal the non-streamed result.
An output that is not well formed is plain content, as vLLM does; when streaming, that can only be
honoured while no tool-call delta has been sent.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from nanoserve.server.tool_parsers.json_scan import CallSpan, scan_call, skip_ws


def make_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ParsedOutput:
    content: str
    calls: list[CallSpan] = field(default_factory=list)
    malformed: bool = False  # something that began as a tool call cannot be one


def take_call(text: str, i: int, out: ParsedOutput) -> int | None:
    """Scan the call object that must start at text[i] into out.calls.

    Returns the position after it and its trailing white space, or None when the parse stops here:
    the text ends inside the object (the call is kept, unfinished) or no call starts at i
    (out.malformed)."""
    if text[i] != "{":
        out.malformed = True
        return None
    try:
        call = scan_call(text, i)
    except ValueError:
        out.malformed = True
        return None
    out.calls.append(call)
    return None if call.end is None else skip_ws(text, call.end)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text of an object, as the model wrote it


@dataclass
class ExtractedToolCalls:
    content: str | None  # None when the output was only tool calls
    tool_calls: list[ToolCall]

    @property
    def tools_called(self) -> bool:
        return bool(self.tool_calls)


class ToolParser(ABC):
    name: ClassVar[str]
    # Whether the tool-call markers are special tokens the detokenizer would drop (Hermes' are).
    keeps_special_tokens: ClassVar[bool] = False

    @abstractmethod
    def parse(self, text: str, final: bool) -> ParsedOutput:
        """Content and calls found in `text`; unless `final`, text that may still become a marker is held."""

    def extract(self, text: str) -> ExtractedToolCalls:
        """The finished output's content and calls; any malformed call makes it all plain content."""
        parsed = self.parse(text, final=True)
        if parsed.malformed or not parsed.calls or not all(c.is_valid(text) for c in parsed.calls):
            return ExtractedToolCalls(text, [])
        calls = [ToolCall(c.name or "", c.arguments(text) or "{}") for c in parsed.calls]
        return ExtractedToolCalls(parsed.content or None, calls)


@dataclass
class ToolCallDelta:
    """One entry of a streamed `delta.tool_calls`: the first for a call has its id and name."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class ToolCallStream:
    """One choice's streamed text → (content delta, tool-call deltas), call by call."""

    def __init__(self, parser: ToolParser, max_calls: int | None = None) -> None:
        self.parser = parser
        self.max_calls = max_calls
        self.text = ""
        self.ids: list[str] = []
        self._content_sent = 0
        self._args_sent: list[int] = []

    @property
    def tools_called(self) -> bool:
        return bool(self.ids)

    def push(self, delta: str, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        """Add the next text; on the `final` push, what was held back is released."""
        self.text += delta
        text = self.text
        if final and not self.tools_called and not self.parser.extract(text).tools_called:
            content, self._content_sent = text[self._content_sent:], len(text)
            return content, []
        parsed = self.parser.parse(text, final)
        content = parsed.content[self._content_sent:]
        self._content_sent = max(self._content_sent, len(parsed.content))
        deltas = []
        for i, call in enumerate(parsed.calls[:self.max_calls]):
            if call.name is None:
                break  # calls are sent in order: a later one waits for this one's name
            args = call.arguments(text) or ""
            if i == len(self.ids):
                self.ids.append(make_tool_call_id())
                self._args_sent.append(len(args))
                deltas.append(ToolCallDelta(i, self.ids[i], call.name, args))
            elif len(args) > self._args_sent[i]:
                deltas.append(ToolCallDelta(i, arguments=args[self._args_sent[i]:]))
                self._args_sent[i] = len(args)
        return content, deltas
