"""Typed errors shared by the engine, the server and the planner.

The server maps these onto OpenAI error bodies: an `InvalidRequestError` is a 400 whose `param`
names the offending field.
"""

from __future__ import annotations


class NanoserveError(Exception):
    """Base class of every error nanoserve raises on purpose."""


class InvalidRequestError(NanoserveError, ValueError):
    """A request (or argument) that can never be served as given. `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class PromptTooLongError(InvalidRequestError):
    """The prompt does not fit the model's context (or the whole KV pool)."""

    def __init__(self, message: str, prompt_len: int, max_len: int, param: str | None = "prompt") -> None:
        super().__init__(message, param)
        self.prompt_len = prompt_len
        self.max_len = max_len


class ModelLoadError(NanoserveError):
    """A checkpoint we cannot load or cannot honour: missing file, unsupported architecture, bad shape."""


class EngineDeadError(NanoserveError):
    """The engine cannot run any more steps: a tensor-parallel worker died or stopped answering.

    In-flight requests end with it; the engine must be shut down and started again."""
