"""The FastAPI app: routes, API key, body-size cap, error bodies, lifespan of the engine thread.

`build_app(engine, ...)` takes an `AsyncLLMEngine` (not started); the app's lifespan starts its step
thread and, on shutdown, drains it (see `drain`). Health and metrics are open; /v1/* routes require
`Authorization: Bearer <key>` when an API key is set.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nanoserve.engine.async_engine import AsyncLLMEngine
from nanoserve.server import chat, completions
from nanoserve.server.errors import APIError, error_response, install_error_handlers
from nanoserve.server.metrics import ServerMetrics
from nanoserve.server.protocol import ModelCard, ModelList
from nanoserve.server.serving import ServerState
from nanoserve.server.tool_parsers import ToolParser

logger = logging.getLogger("nanoserve.server")

DEFAULT_MAX_REQUEST_BODY_BYTES = 8 << 20


class BodySizeLimitMiddleware:
    """413 for a request body over `max_bytes`: by Content-Length up front, or counted as it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(413, self._message(int(declared)), "body")(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body parsing; our handler turns it into a body.
                    raise HTTPException(413, self._message(received))
            return message

        await self.app(scope, counting_receive, send)

    def _message(self, size: int) -> str:
        return (f"The request body ({size} bytes or more) is over this server's limit of "
                f"{self.max_bytes} bytes.")


def _api_key_dependency(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "Invalid or missing API key: send `Authorization: Bearer <key>`.", "api_key")

    return check


def build_app(engine: AsyncLLMEngine, served_model_names: list[str], model_path: str,
              api_key: str | None = None, max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
              shutdown_grace_s: float = 30.0, auto_tool_parser: ToolParser | None = None) -> FastAPI:
    """The OpenAI-compatible app around an (unstarted) async engine.

    `auto_tool_parser` reads tool calls for tool_choice "auto" (None: "auto" is refused).
    """
    state = ServerState(engine, list(served_model_names), model_path,
                        ServerMetrics(engine, served_model_names[0]), auto_tool_parser)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await engine.shutdown(grace_s=shutdown_grace_s)

    app = FastAPI(title="nanoserve", version="0.1.0", lifespan=lifespan)
    app.state.nanoserve = state
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_request_body_bytes)

    v1 = APIRouter(dependencies=[Depends(_api_key_dependency(api_key))])

    @v1.get("/v1/models")
    async def list_models() -> JSONResponse:
        cards = [ModelCard(id=name, root=model_path, max_model_len=state.max_model_len)
                 for name in state.served_model_names]
        return JSONResponse(ModelList(data=cards).model_dump())

    v1.include_router(completions.router)
    v1.include_router(chat.router)
    app.include_router(v1)

    @app.get("/health")
    async def health() -> Response:
        if engine.dead_error is not None:
            return error_response(500, str(engine.dead_error))
        if not engine.is_running:
            return error_response(503, "The engine is not running (starting up or shut down).")
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    return app
