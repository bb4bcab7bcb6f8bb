"""The FastAPI app: routes, API key, body-size cap, error bodies, lifespan of the engine thread.

`build_app(engine, ...)` takes an `AsyncLLMEngine` (not started); the app's lifespan starts its step
thread and, on shutdown, drains it (see `drain`). Health, metrics and /version are open; /v1/*,
/tokenize, /detokenize and the API docs (/docs, /redoc, /openapi.json; off with `disable_docs`) require
`Authorization: Bearer <key>` when an API key is set. CORS headers are sent only when `cors` names
allowed origins (vLLM's --allowed-origins etc.); CORS is the outermost layer, so a browser's preflight
is answered before the key is checked. No response names a host path: /v1/models' `root` is the model
folder's name.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import nanoserve
from nanoserve.engine.async_engine import AsyncLLMEngine
from nanoserve.server import chat, completions, tokenize
from nanoserve.server.connections import BodyTimeoutMiddleware
from nanoserve.server.errors import APIError, error_response, install_error_handlers
from nanoserve.server.limits import DEFAULT_LIMITS, RequestLimits
from nanoserve.server.metrics import ServerMetrics
from nanoserve.server.protocol import ModelCard, ModelList
from nanoserve.server.serving import ServerState
from nanoserve.server.tool_parsers import ToolParser

logger = logging.getLogger("nanoserve.server")

DEFAULT_MAX_REQUEST_BODY_BYTES = 8 << 20
DEFAULT_BODY_TIMEOUT_S = 30.0
_DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


@dataclass
class CorsConfig:
    """Starlette CORSMiddleware's settings; no allowed origins = no CORS headers at all."""

    allowed_origins: list[str] = field(default_factory=list)
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False


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


def _key_ok(authorization: str, api_key: str) -> bool:
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), api_key.encode())


_KEY_MESSAGE = "Invalid or missing API key: send `Authorization: Bearer <key>`."


def _api_key_dependency(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        if not _key_ok(request.headers.get("authorization", ""), api_key):
            raise APIError(401, _KEY_MESSAGE, "api_key")

    return check


class DocsKeyMiddleware:
    """The API docs need the key too, when one is set (they describe every endpoint and field)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in _DOCS_PATHS:
            auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not _key_ok(auth, self.api_key):
                await error_response(401, _KEY_MESSAGE, "api_key")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def model_root(model_path: str) -> str:
    """What /v1/models shows as `root`: a local folder's name (never the host path), else the id as given."""
    path = Path(model_path)
    return path.name if path.is_absolute() or path.exists() else model_path


def build_app(engine: AsyncLLMEngine, served_model_names: list[str], model_path: str,
              api_key: str | None = None, max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
              shutdown_grace_s: float = 30.0, limits: RequestLimits = DEFAULT_LIMITS,
              trust_request_chat_template: bool = False, chat_template_timeout_s: float = 10.0,
              body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S, disable_docs: bool = False,
              cors: CorsConfig | None = None, auto_tool_parser: ToolParser | None = None) -> FastAPI:
    """The OpenAI-compatible app around an (unstarted) async engine.

    `auto_tool_parser` reads tool calls for tool_choice "auto" (None: "auto" is refused).
    """
    state = ServerState(engine, list(served_model_names), model_path,
                        ServerMetrics(engine, served_model_names[0]), limits=limits,
                        trust_request_chat_template=trust_request_chat_template,
                        chat_template_timeout_s=chat_template_timeout_s, auto_tool_parser=auto_tool_parser)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await engine.shutdown(grace_s=shutdown_grace_s)
        state.prep_executor.shutdown(wait=False, cancel_futures=True)

    docs = {"docs_url": None, "redoc_url": None, "openapi_url": None} if disable_docs else {}
    app = FastAPI(title="nanoserve", version="0.1.0", lifespan=lifespan, **docs)
    app.state.nanoserve = state
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_request_body_bytes)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=body_timeout_s)
    if api_key is not None and not disable_docs:
        app.add_middleware(DocsKeyMiddleware, api_key=api_key)
    if cors is not None and cors.allowed_origins:  # added last: the outermost layer
        app.add_middleware(CORSMiddleware, allow_origins=cors.allowed_origins,
                           allow_methods=cors.allowed_methods, allow_headers=cors.allowed_headers,
                           allow_credentials=cors.allow_credentials)

    v1 = APIRouter(dependencies=[Depends(_api_key_dependency(api_key))])

    @v1.get("/v1/models")
    async def list_models() -> JSONResponse:
        cards = [ModelCard(id=name, root=model_root(model_path), max_model_len=state.max_model_len)
                 for name in state.served_model_names]
        return JSONResponse(ModelList(data=cards).model_dump())

    v1.include_router(completions.router)
    v1.include_router(chat.router)
    v1.include_router(tokenize.router)
    app.include_router(v1)

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": nanoserve.__version__})

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
