"""Noticing that the client has gone away, so its engine requests can be aborted at once.

A handler races its work against the ASGI `http.disconnect` message (as vLLM does): once the body
has been read, the next `receive()` only returns when the client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


async def wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Run `work`; if the client disconnects first, cancel it (its `finally` aborts the engine requests).

    Returns (True, result) when the work finished, (False, None) when the client left first.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False, None
    return True, task.result()
