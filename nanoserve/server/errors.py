"""OpenAI error bodies and the exception handlers that produce them.

Every error the server returns is `{"error": {"message", "type", "param", "code"}}` with `code` the
HTTP status and `type` vLLM's (BadRequestError, NotFoundError, ...). Bad input is always a 4xx;
a 500 means the engine itself died (or a bug we did not foresee, logged with its traceback).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nanoserve.engine.async_engine import EngineDeadError, EngineShuttingDownError, QueueFullError
from nanoserve.errors import InvalidRequestError, NanoserveError

logger = logging.getLogger(__name__)

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestEntityTooLargeError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}


@dataclass
class APIError(Exception):
    """An error the server answers with as-is: status, message and the offending field."""

    status: int
    message: str
    param: str | None = None

    def __str__(self) -> str:
        return self.message


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    err_type = _TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status)


def to_api_error(exc: BaseException) -> APIError:
    """Map any exception a handler can meet onto the status and message the client gets."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidRequestError):
        return APIError(400, exc.message, exc.param)
    if isinstance(exc, QueueFullError | EngineShuttingDownError):
        return APIError(503, str(exc))
    if isinstance(exc, EngineDeadError):
        return APIError(500, str(exc))
    logger.error("unexpected error", exc_info=exc)
    return APIError(500, f"Internal server error: {type(exc).__name__}: {exc}")


def _param(loc: tuple | list) -> str:
    """`("body", "prompt", "list[int]", 0)` -> `body.prompt.0`: union-member tags are not fields."""
    parts = [str(p) for p in loc if isinstance(p, int) or ("[" not in str(p) and str(p) not in _TYPE_TAGS)]
    return ".".join(parts)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-before"}


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """FastAPI's validation errors as vLLM words them: "N validation errors: ...", param `body.field`.

    The alternatives of a union (prompt: str | list[str] | ...) are folded into one error per field.
    """
    by_param: dict[str, list[str]] = {}
    for err in errors:
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return f"The request body is not valid JSON: {detail}".rstrip(": "), "body"
        msgs = by_param.setdefault(_param(err.get("loc", ())), [])
        if err.get("msg") not in msgs:
            msgs.append(str(err.get("msg", "invalid")))
    parts = [f"{param}: {' or '.join(msgs)}" if param else " or ".join(msgs)
             for param, msgs in by_param.items()]
    n = len(parts)
    return f"{n} validation error{'s' if n != 1 else ''}: " + "; ".join(parts), next(iter(by_param), None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return error_response(400, message, param)

    @app.exception_handler(json.JSONDecodeError)
    async def _json(_: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return error_response(400, f"The request body is not valid JSON: {exc}", "body")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(NanoserveError)
    async def _nanoserve(_: Request, exc: NanoserveError) -> JSONResponse:
        err = to_api_error(exc)
        return error_response(err.status, err.message, err.param)

    # A bug: still an OpenAI error body, and Starlette logs the traceback.
    @app.exception_handler(Exception)
    async def _other(_: Request, exc: Exception) -> JSONResponse:
        err = to_api_error(exc)
        return error_response(err.status, err.message, err.param)
