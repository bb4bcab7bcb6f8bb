"""`nanoserve serve [MODEL]`: the OpenAI-compatible server on uvicorn; engine flags are EngineArgs' fields.

SIGTERM / SIGINT drain the server: new requests get 503, in-flight ones may finish within
`--shutdown-grace-s`, the rest are aborted (their streams end with an error event and `[DONE]`),
then the process exits 0. A second signal skips the wait. While draining, the server keeps accepting
connections so that a new request gets the 503 rather than "connection refused".

The port is bound before the model loads: a port in use is a one-line error, not a traceback after
a minute of loading.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import resource
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import uvicorn

from nanoserve import freeze_startup_objects
from nanoserve.config import EngineArgs
from nanoserve.engine.async_engine import AsyncLLMEngine
from nanoserve.engine.core import EngineCore
from nanoserve.engine.data_parallel import DataParallelEngine
from nanoserve.server.app import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_REQUEST_BODY_BYTES,
    CorsConfig,
    build_app,
    model_root,
)
from nanoserve.server.connections import header_timeout_protocol
from nanoserve.server.limits import DEFAULT_LIMITS, RequestLimits
from nanoserve.server.tool_parsers import TOOL_PARSERS, get_tool_parser

logger = logging.getLogger("nanoserve.server")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1/*")
    parser.add_argument("--served-model-name", nargs="+", default=None,
                        help="name(s) clients use in `model` (default: the model folder's name, or "
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
    parser.add_argument("--allowed-origins", type=_str_list, default=None,
                        help='CORS: origins browsers may call from, a JSON list (\'["*"]\') or '
                        "comma-separated (default: no CORS headers)")
    parser.add_argument("--allowed-methods", type=_str_list, default=["*"],
                        help="CORS: allowed methods, with --allowed-origins (default: all)")
    parser.add_argument("--allowed-headers", type=_str_list, default=["*"],
                        help="CORS: allowed request headers, with --allowed-origins (default: all)")
    parser.add_argument("--allow-credentials", action="store_true",
                        help="CORS: allow credentials (cookies, Authorization), with --allowed-origins")
    limits = parser.add_argument_group("limits (one request must not tie up the server)")
    limits.add_argument("--max-n-sequences", type=int, default=DEFAULT_LIMITS.max_n_sequences,
                        help="400 for a request asking for more choices per prompt (`n`); vLLM: "
                        "VLLM_MAX_N_SEQUENCES")
    limits.add_argument("--max-prompts-per-request", type=int, default=DEFAULT_LIMITS.max_prompts_per_request,
                        help="400 for a /v1/completions request with more prompts")
    limits.add_argument("--max-stop-strings", type=int, default=DEFAULT_LIMITS.max_stop_strings,
                        help="400 for more `stop` strings than this")
    limits.add_argument("--max-stop-string-chars", type=int, default=DEFAULT_LIMITS.max_stop_string_chars,
                        help="400 for a longer `stop` string")
    limits.add_argument("--trust-request-chat-template", action="store_true",
                        help="accept `chat_template` in requests (refused by default: even sandboxed, a "
                        "template can run for minutes)")
    limits.add_argument("--chat-template-timeout-s", type=float, default=10.0,
                        help="400 for a request's chat template that takes longer to render")
    limits.add_argument("--limit-concurrency", type=int, default=1000,
                        help="open connections (or running requests) beyond which uvicorn answers 503")
    limits.add_argument("--timeout-keep-alive", type=float, default=5.0,
                        help="close an idle keep-alive connection after this many seconds")
    limits.add_argument("--header-timeout-s", type=float, default=10.0,
                        help="408 and close a connection whose request headers take longer")
    limits.add_argument("--body-timeout-s", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                        help="408 for a request body that takes longer to arrive")
    limits.add_argument("--disable-fastapi-docs", action="store_true",
                        help="no /docs, /redoc or /openapi.json (with --api-key they need the key)")
    EngineArgs.add_cli_args(parser, positional_model=True)


def _str_list(value: str) -> list[str]:
    """vLLM's JSON list (["a", "b"]), or a plain comma-separated list."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(parsed, str):
        return [parsed]
    if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
        raise argparse.ArgumentTypeError(f"expected a JSON list of strings, got {value!r}")
    return parsed


def cors_config(args: argparse.Namespace) -> CorsConfig | None:
    if not args.allowed_origins:
        return None
    return CorsConfig(args.allowed_origins, args.allowed_methods, args.allowed_headers,
                      args.allow_credentials)


def bind_port(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads; SystemExit with one clear line if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SystemExit(f"nanoserve serve: cannot listen on {host}:{port}: {e.strerror} (is another server "
                         "running there? choose another with --port)") from None
    sock.set_inheritable(True)
    return sock


def raise_open_files_limit() -> None:
    """Every connection is a file descriptor: allow as many as the hard limit (vLLM does the same)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def available_cores() -> int:
    """The cores this process may run on (its affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def serving_threads(engine_args: EngineArgs, cores: int) -> EngineArgs:
    """The engine's torch threads when serving on CPU without --num-cpu-threads: one core fewer than
    there are, left to the HTTP front end (event loop, SSE encoding) and to clients on the same machine,
    as vLLM's CPU backend reserves one. With every core in the forward, the front end's work preempts a
    thread of each parallel region and the whole region waits for it: the demo model served at 20
    requests/s on 2 cores with its client beside it streamed at a median 1.14-1.19 ms per token on 2
    threads, 0.40-0.44 ms on 1; at saturation (200 at once) both gave ~5.2k tok/s. Tensor and data
    parallel runs split the cores between their ranks or replicas already (their own defaults)."""
    import torch

    on_cpu = engine_args.device == "cpu" or (engine_args.device == "auto" and not torch.cuda.is_available())
    if (engine_args.num_cpu_threads is not None or not on_cpu or cores < 2
            or engine_args.tensor_parallel_size > 1 or engine_args.data_parallel_size > 1):
        return engine_args
    logging.getLogger(__name__).info(
        "serving with %d torch threads: one of %d cores is left to the HTTP front end (--num-cpu-threads "
        "to choose)", cores - 1, cores)
    return dataclasses.replace(engine_args, num_cpu_threads=cores - 1)


def run(args: argparse.Namespace) -> int:
    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        raise SystemExit("nanoserve serve: --enable-auto-tool-choice needs --tool-call-parser "
                         f"({' | '.join(sorted(TOOL_PARSERS))})")
    auto_tool_parser = get_tool_parser(args.tool_call_parser) if args.enable_auto_tool_choice else None
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine_args = EngineArgs.from_cli_args(args)
    model = engine_args.model
    # The default name is the folder's name, not its host path (clients may still send the path).
    names = args.served_model_name or [model_root(args.model) if args.model else "toy-assistant"]
    sock = bind_port(args.host, args.port)
    raise_open_files_limit()
    engine_args = serving_threads(engine_args, available_cores())  # once the port is ours
    # The engine thread runs Python between torch ops; a 1 ms GIL switch interval (default 5 ms) lets the
    # event loop answer /health and write stream chunks promptly while a step is being computed.
    sys.setswitchinterval(0.001)
    # Several replicas: each in a process of its own, behind one router with the same face.
    front = DataParallelEngine if engine_args.data_parallel_size > 1 else AsyncLLMEngine
    engine = front.from_engine_args(engine_args, max_num_queued_reqs=args.max_num_queued_reqs)
    limits = RequestLimits(max_n_sequences=args.max_n_sequences,
                           max_prompts_per_request=args.max_prompts_per_request,
                           max_stop_strings=args.max_stop_strings,
                           max_stop_string_chars=args.max_stop_string_chars)
    app = build_app(engine, names, model, api_key=args.api_key, shutdown_grace_s=args.shutdown_grace_s,
                    max_request_body_bytes=args.max_request_body_bytes, limits=limits,
                    trust_request_chat_template=args.trust_request_chat_template,
                    chat_template_timeout_s=args.chat_template_timeout_s, body_timeout_s=args.body_timeout_s,
                    disable_docs=args.disable_fastapi_docs, cors=cors_config(args),
                    auto_tool_parser=auto_tool_parser)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on",
                            http=header_timeout_protocol(args.header_timeout_s),
                            limit_concurrency=args.limit_concurrency,
                            timeout_keep_alive=args.timeout_keep_alive)
    server = DrainingServer(config, engine, args.shutdown_grace_s)
    # Everything loaded so far lives as long as the process; full collections are GIL-holding pauses
    # that would stall the event loop (vLLM freezes too).
    freeze_startup_objects()
    logger.info("nanoserve: serving %s as %s on http://%s:%d/v1 (%s)", model, ", ".join(names), args.host,
                args.port, kv_pool_summary(engine, engine_args.data_parallel_size))
    try:
        server.run(sockets=[sock])
    finally:
        if isinstance(engine, DataParallelEngine):
            engine.close()  # after a drain they are gone already; this covers a failed start
        elif not engine.is_running:
            engine.engine.shutdown()  # the same for tensor-parallel workers (idempotent)
    exit_past_stuck_renders(app.state.nanoserve.prep_executor)
    return 0


def exit_past_stuck_renders(executor: ThreadPoolExecutor, wait_s: float = 1.0) -> None:
    """A request's chat template may still be rendering after its 400 (threads cannot be killed); the
    interpreter would wait for it at exit, so exit now: the engine is drained, nothing else is pending."""
    executor.shutdown(wait=False, cancel_futures=True)  # idle threads end now; a busy one does not
    stuck = False
    for t in threading.enumerate():
        if t.name.startswith("nanoserve-prep"):
            t.join(wait_s)
            stuck = stuck or t.is_alive()
    if stuck:
        logger.warning("exiting while a request's chat template is still rendering")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def kv_pool_summary(engine: EngineCore | AsyncLLMEngine | DataParallelEngine, replicas: int = 1) -> str:
    """"KV pool: N blocks x B tokens = T tokens, M MiB" from the engine's resolved configs (per replica)."""
    blocks, block_size = engine.cache_config.num_blocks, engine.cache_config.block_size
    tokens = blocks * block_size
    mib = tokens * engine.model_config.kv_bytes_per_token(engine.cache_config.cache_dtype) / 2**20
    each = f" in each of {replicas} engine replicas" if replicas > 1 else ""
    return f"KV pool: {blocks} blocks x {block_size} tokens = {tokens} tokens, {mib:.1f} MiB{each}"


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains the engine before the server stops."""

    def __init__(self, config: uvicorn.Config, engine: AsyncLLMEngine | DataParallelEngine,
                 grace_s: float) -> None:
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
            # The listening socket stays open: a new request gets the engine's 503 (shutting down).
            self._drain_task = asyncio.ensure_future(self.engine.shutdown(grace_s=self.grace_s))
        if self._drain_task is not None and self._drain_task.done():
            await asyncio.sleep(0.2)  # let the handlers write their last events and [DONE]
            return True
        return await super().on_tick(counter)
