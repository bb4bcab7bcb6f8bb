"""Slow clients: a deadline for a request's headers and one for its body.

uvicorn times out idle keep-alive connections but not a client that sends its headers a byte a minute,
so hundreds of such sockets would stay open forever. `header_timeout_protocol(s)` is uvicorn's h11
protocol with a header deadline: a connection with no request in progress `s` seconds after it opened
(or after its last response) is answered 408 and closed. `BodyTimeoutMiddleware` gives the body a
deadline from the moment the headers arrived: a 408 error body when it passes. (The connection cap,
uvicorn's `limit_concurrency`, answers 503 beyond it.)
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 26\r\n"
                b"connection: close\r\n\r\nrequest headers too slow.\n")


def header_timeout_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol class, closing connections whose request headers take over the limit."""

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            self._arm_header_deadline()  # the next request's headers get the same time
            super().on_response_complete()

        def _arm_header_deadline(self) -> None:
            self._cancel_header_deadline()
            self._header_deadline = self.loop.call_later(header_timeout_s, self._on_header_deadline)

        def _cancel_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _on_header_deadline(self) -> None:
            self._header_deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # no request whose headers arrived
                self.transport.write(_TIMEOUT_408)
                self.transport.close()

    return HeaderTimeoutH11Protocol


class BodyTimeoutMiddleware:
    """408 when a request body has not fully arrived `timeout_s` after its headers."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # after the body: waiting for a disconnect is not bounded
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                # FastAPI re-raises HTTPException from body parsing; our handler turns it into a body.
                message = f"The request body did not arrive within {self.timeout_s:g} s."
                raise HTTPException(408, message) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)
