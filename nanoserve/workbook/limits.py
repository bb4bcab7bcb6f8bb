"""What the workbook server accepts: body sizes, JSON numbers, variant numbers, redirect targets.

Every limit here turns hostile or accidental input into a 4xx with a JSON error body naming the
problem, before any parsing whose cost grows with the input (a 25 MB body, a 10⁶-digit number, an
exponent like 1e9999999) can stall the server:
- request bodies: MAX_BODY_BYTES (1 MiB), MAX_IMPORT_BYTES (16 MiB) for /api/import → 413;
- JSON numbers: NaN/Infinity refused, integers of more than MAX_JSON_INT_DIGITS digits and floats that
  are not finite refused (json.loads would otherwise hand `inf` or a huge int to the graders);
- variant numbers: bank.parse_variant (0 to bank.MAX_VARIANT);
- redirects: same-site relative paths only.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import urlsplit

from nanoserve.errors import InvalidRequestError

MAX_BODY_BYTES = 1 << 20
MAX_IMPORT_BYTES = 16 << 20
BODY_LIMITS_BY_PATH = {"/api/import": MAX_IMPORT_BYTES}
MAX_JSON_INT_DIGITS = 30
MAX_JSON_FLOAT_CHARS = 64


def error_body(message: str, param: str | None, code: str) -> dict[str, Any]:
    """The OpenAI-style error object the rest of nanoserve returns."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """ASGI middleware: 413 for a body above the path's limit, by Content-Length or while streaming."""

    def __init__(self, app: Any, default_bytes: int = MAX_BODY_BYTES,
                 by_path: dict[str, int] | None = None) -> None:
        self.app, self.default_bytes = app, default_bytes
        self.by_path = BODY_LIMITS_BY_PATH if by_path is None else by_path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope.get("path", ""), self.default_bytes)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or len(length) > 15 or int(length) > limit):
            await self._reject(send, limit)
            return
        seen, started = 0, False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, limit)

    @staticmethod
    async def _reject(send: Any, limit: int) -> None:
        body = json.dumps(error_body(f"the request body is larger than the limit of {limit:,} bytes",
                                     "body", "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _refuse_constant(name: str) -> Any:
    raise InvalidRequestError(f"{name} is not a number the workbook accepts", "body")


def _bounded_int(max_digits: int):
    def parse(text: str) -> int:
        if len(text.lstrip("-")) > max_digits:
            raise InvalidRequestError(f"a number with more than {max_digits} digits is refused", "body")
        return int(text)
    return parse


def _finite_float(text: str) -> float:
    value = float(text) if len(text) <= MAX_JSON_FLOAT_CHARS else math.inf
    if not math.isfinite(value):
        raise InvalidRequestError(f"{text[:40]!r} is not a finite number", "body")
    return value


def loads_bounded(raw: bytes | str, what: str = "body", max_int_digits: int = MAX_JSON_INT_DIGITS) -> Any:
    """json.loads with bounded numbers; raises InvalidRequestError (400) for anything else wrong.
    A larger `max_int_digits` lets a later check name the field (int() of 1,000 digits is still cheap)."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_int=_bounded_int(max_int_digits),
                          parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidRequestError(f"the {what} must be JSON", what) from None


def same_site_path(target: str | None, default: str = "/profile") -> str:
    """`target` when it is a relative path on this site ("/ex/1?v=2"), else `default`."""
    if not target or len(target) > 2000 or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or any(ord(c) < 32 or ord(c) == 127 for c in target):
        return default
    parts = urlsplit(target)
    return default if parts.scheme or parts.netloc else target
