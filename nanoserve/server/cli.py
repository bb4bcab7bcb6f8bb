"""`nanoserve serve [MODEL]`: the OpenAI-compatible server on uvicorn; engine flags are EngineArgs' fields.

SIGTERM / SIGINT drain the server: new requests get 503, in-flight ones may finish within
`--shutdown-grace-s`, the rest are aborted (their streams end with an error event and `[DONE]`),
then the process exits 0. A second signal skips the wait.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from types import FrameType

import uvicorn

from nanoserve.config import EngineArgs
from nanoserve.engine.async_engine import AsyncLLMEngine
from nanoserve.engine.core import EngineCore
from nanoserve.server.app import DEFAULT_MAX_REQUEST_BODY_BYTES, build_app
from nanoserve.server.tool_parsers import TOOL_PARSERS, get_tool_parser

logger = logging.getLogger("nanoserve.server")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1/*")
    parser.add_argument("--served-model-name", nargs="+", default=None,
                        help="name(s) clients use in `model` (default: the model argument, or "
                        "toy-assistant for the demo model)")
    parser.add_argument("--max-num-queued-reqs", type=int, default=None,
                        help="503 when more requests than this are waiting (default: no limit)")
    parser.add_argument("--max-request-body-bytes", type=int, default=DEFAULT_MAX_REQUEST_BODY_BYTES,
                        help="413 for larger request bodies")
    parser.add_argument("--shutdown-grace-s", type=float, default=30.0,
                        help="on SIGTERM, how long in-flight requests may run before being aborted")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--enable-auto-tool-choice", action="store_true",
                        help='read tool calls out of the output for tool_choice "auto" '
                        "(needs --tool-call-parser)")
    parser.add_argument("--tool-call-parser", choices=sorted(TOOL_PARSERS), default=None,
                        help="the model's tool-call format: hermes (<tool_call>...</tool_call>) "
                        "or llama3_json")
    EngineArgs.add_cli_args(parser, positional_model=True)


def run(args: argparse.Namespace) -> int:
    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        raise SystemExit("nanoserve serve: --enable-auto-tool-choice needs --tool-call-parser "
                         f"({' | '.join(sorted(TOOL_PARSERS))})")
    auto_tool_parser = get_tool_parser(args.tool_call_parser) if args.enable_auto_tool_choice else None
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine_args = EngineArgs.from_cli_args(args)
    model = engine_args.model
    names = args.served_model_name or [args.model or "toy-assistant"]
    # The engine thread runs Python between torch ops; a 1 ms GIL switch interval (default 5 ms) lets the
    # event loop answer /health and write stream chunks promptly while a step is being computed.
    sys.setswitchinterval(0.001)
    engine = AsyncLLMEngine.from_engine_args(engine_args, max_num_queued_reqs=args.max_num_queued_reqs)
    app = build_app(engine, names, model, api_key=args.api_key, shutdown_grace_s=args.shutdown_grace_s,
                    max_request_body_bytes=args.max_request_body_bytes, auto_tool_parser=auto_tool_parser)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on")
    server = DrainingServer(config, engine, args.shutdown_grace_s)
    # Everything loaded so far (torch, transformers, the model) lives as long as the process: moving it
    # out of the collector's reach keeps full collections short, which are GIL-holding pauses that
    # would stall the event loop (vLLM does the same).
    gc.collect()
    gc.freeze()
    logger.info("nanoserve: serving %s as %s on http://%s:%d/v1 (%s)", model, ", ".join(names), args.host,
                args.port, kv_pool_summary(engine.engine))
    server.run()
    return 0


def kv_pool_summary(engine: EngineCore) -> str:
    """"KV pool: N blocks x B tokens = T tokens, M MiB" from the engine's resolved configs."""
    blocks, block_size = engine.cache_config.num_blocks, engine.cache_config.block_size
    tokens = blocks * block_size
    mib = tokens * engine.model_config.kv_bytes_per_token() / 2**20
    return f"KV pool: {blocks} blocks x {block_size} tokens = {tokens} tokens, {mib:.1f} MiB"


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains the engine before the server stops."""

    def __init__(self, config: uvicorn.Config, engine: AsyncLLMEngine, grace_s: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.grace_s = grace_s
        self._drain_requested = False
        self._drain_task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn we do not re-raise the signal after shutdown: a drained exit is a clean exit (0).
        name = signal.Signals(sig).name
        if self._drain_requested:
            logger.warning("second %s: stopping without waiting", name)
            self.should_exit = self.force_exit = True
            return
        logger.info("%s: draining (in-flight requests get up to %.0f s)", name, self.grace_s)
        self._drain_requested = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_requested and self._drain_task is None:
            for server in getattr(self, "servers", []):
                server.close()  # refuse new connections while draining
            self._drain_task = asyncio.ensure_future(self.engine.shutdown(grace_s=self.grace_s))
        if self._drain_task is not None and self._drain_task.done():
            await asyncio.sleep(0.2)  # let the handlers write their last events and [DONE]
            return True
        return await super().on_tick(counter)
