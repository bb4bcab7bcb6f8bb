"""Server-Sent Events in OpenAI's chunk format.

Each event is `data: <json>\\n\\n`; the stream ends with `data: [DONE]`. An error after the response
has started (status 200 already sent) becomes `data: {"error": {...}}` followed by `[DONE]`.
`SSEResponse` races the body against the client's disconnect whatever the ASGI server's spec
version, so a client that leaves cancels the body generator and its `finally` aborts the request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from nanoserve.server.disconnect import wait_for_disconnect
from nanoserve.server.errors import error_body, to_api_error

DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict[str, Any]) -> str:
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json(exclude_none=True)
    else:
        data = json.dumps(payload)
    return f"data: {data}\n\n"


def sse_error(exc: BaseException) -> str:
    err = to_api_error(exc)
    return sse(error_body(err.status, err.message, err.param))


async def with_error_event(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """`events`, then `[DONE]`; an exception in between becomes an error event before `[DONE]`."""
    try:
        async for event in events:
            yield event
    except Exception as e:  # noqa: BLE001 -- the status line is gone; the error must travel in-band
        yield sse_error(e)
    yield DONE


class SSEResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None] | None = None) -> None:
        """`on_close` runs however the response ends, even if the client left before the first event."""
        super().__init__(with_error_event(events), headers={"Cache-Control": "no-cache",
                                                            "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._race(receive, send)
        finally:
            if self.on_close is not None:
                self.on_close()

    async def _race(self, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def body() -> None:
                try:
                    await self.stream_response(send)
                except OSError:
                    pass  # the client went away mid-send
                tg.cancel_scope.cancel()

            tg.start_soon(body)
            await wait_for_disconnect(receive)
            tg.cancel_scope.cancel()
