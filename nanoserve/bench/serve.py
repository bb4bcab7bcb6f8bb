"""`nanoserve bench serve`: online load against any OpenAI-compatible server (ours or another).

Requests are sent at `--request-rate` per second with gamma-distributed gaps of shape `--burstiness`
(1 = Poisson; `inf` = all at once), at most `--max-concurrency` in flight, each streamed. Metrics
use vLLM's definitions (`vllm bench serve`):

- TTFT: send to the first streamed chunk carrying text;
- ITL: the gaps between successive chunks carrying text;
- TPOT: (E2EL − TTFT) / (output tokens − 1), per request with at least 2 output tokens;
- E2EL: send to the last chunk;
- throughput: completed requests, output tokens and prompt + output tokens per second of the
  benchmark's duration; goodput: requests per second meeting every `--goodput` SLO (DistServe).

Output tokens come from the server's usage (stream_options.include_usage), else from the number
of text chunks. A request fails on a connection error, a non-200 status or an error event in the
stream; failures are counted and kept out of the latency statistics.

Lengths are tokens: `--input-len`/`--output-len` default to what fits the served model's context
(`max_model_len` from /v1/models; too-long explicit lengths are an error before any request is sent),
and without `--tokenizer` the word prompts are sized from the server's own token counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from nanoserve.bench.fit import DEFAULT_INPUT_LEN, DEFAULT_OUTPUT_LEN, fit_lengths
from nanoserve.bench.report import print_table, save_json, summarize

METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass
class ServeRequest:
    prompt: list[int] | str
    prompt_len: int
    output_len: int


@dataclass
class RequestResult:
    success: bool = False
    prompt_len: int = 0
    output_len: int = 0  # tokens generated (usage, else text chunks)
    ttft_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    latency_s: float = 0.0  # E2EL
    start_s: float = 0.0  # send time, relative to the benchmark start
    error: str = ""

    @property
    def tpot_s(self) -> float | None:
        if not self.success or self.output_len < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_len - 1)


@dataclass
class ServeSummary:
    num_requests: int
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # completed requests / s
    output_throughput: float  # output tok / s
    total_token_throughput: float  # (input + output) tok / s
    goodput: float | None  # requests / s meeting every SLO; None without --goodput
    metrics_ms: dict[str, dict[str, float]]  # metric -> {mean, median, std, p50, p90, p99}
    request_rate: float
    burstiness: float
    max_concurrency: int | None
    errors: list[str] = field(default_factory=list)


# ---- workload -----------------------------------------------------------------------------------
def make_requests(
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    seed: int,
    vocab_size: int | None,
    special_ids: set[int],
    as_text: bool,
    word_tokens: tuple[float, float] = (0.0, 1.0),
) -> list[ServeRequest]:
    """Token-id prompts when the vocabulary is known; else words ("w123"), as many as make the prompt
    `input_len` tokens by `word_tokens` = (a, b): W words are a + b·W tokens (`calibrate_words`)."""
    from nanoserve.bench.dataset import random_requests

    vocab = vocab_size or 1000
    reqs = random_requests(
        num_prompts, input_len, output_len, vocab, range_ratio, seed=seed, special_ids=special_ids
    )
    a, b = word_tokens
    out = []
    for r in reqs:
        if as_text or vocab_size is None:
            n_words = max(1, round((r.prompt_len - a) / b))
            ids = (r.prompt_token_ids * (n_words // r.prompt_len + 1))[:n_words]
            out.append(ServeRequest(_words(ids), r.prompt_len, r.output_len))
        else:
            out.append(ServeRequest(r.prompt_token_ids, r.prompt_len, r.output_len))
    return out


def _words(ids: list[int]) -> str:
    return " ".join(f"w{t}" for t in ids)


def calibrate_words(base_url: str, endpoint: str, model: str, api_key: str | None,
                    max_model_len: int | None = None) -> tuple[float, float]:
    """(a, b) with prompt tokens = a + b·words for word prompts, measured from the server's usage in
    two one-token requests (a: the chat template's tokens; b: tokens per word), so that --input-len
    counts tokens even without --tokenizer."""
    import httpx

    # Two prompt sizes that fit even a short context with a character-level tokenizer.
    big = max(2, min(64, (max_model_len or 640) // 10))
    sizes = (max(1, big // 4), big)
    rng = random.Random(12345)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    counts = []
    for n in sizes:
        req = ServeRequest(_words([rng.randrange(1000) for _ in range(n)]), n, 1)
        payload = _payload(endpoint, model, req, ignore_eos=True) | {"stream": False}
        del payload["stream_options"]
        r = httpx.post(base_url.rstrip("/") + endpoint, json=payload, headers=headers, timeout=60)
        if r.status_code != 200:
            raise ValueError(f"calibrating prompt lengths: HTTP {r.status_code}: {r.text[:200]}")
        counts.append(r.json()["usage"]["prompt_tokens"])
    b = max((counts[1] - counts[0]) / (sizes[1] - sizes[0]), 1e-3)
    return counts[0] - b * sizes[0], b


def arrival_gaps_s(n: int, request_rate: float, burstiness: float, seed: int) -> list[float]:
    """Gaps before each request: 0 for rate inf; gamma(shape=burstiness, mean=1/rate) otherwise."""
    if request_rate == math.inf:
        return [0.0] * n
    if not request_rate > 0:
        raise ValueError(f"--request-rate must be > 0 or inf (got {request_rate})")
    if not burstiness > 0:
        raise ValueError(f"--burstiness must be > 0 (got {burstiness})")
    rng = random.Random(seed)
    theta = 1.0 / (request_rate * burstiness)
    return [rng.gammavariate(burstiness, theta) for _ in range(n)]


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    """["ttft:500", "tpot:50"] -> {"ttft": 0.5, "tpot": 0.05} (seconds)."""
    slos: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition(":")
        name = name.strip().lower()
        if not sep or name not in ("ttft", "tpot", "e2el"):
            raise ValueError(f"--goodput {item!r}: expected ttft:MS, tpot:MS or e2el:MS")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"--goodput {item!r}: {value!r} is not a number of milliseconds") from None
        if ms <= 0:
            raise ValueError(f"--goodput {item!r}: the SLO must be > 0 ms")
        slos[name] = ms / 1e3
    return slos


# ---- one request --------------------------------------------------------------------------------
def _payload(endpoint: str, model: str, req: ServeRequest, ignore_eos: bool) -> dict[str, Any]:
    common = {
        "model": model,
        "max_tokens": req.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": ignore_eos,
    }
    if "chat" in endpoint:
        text = req.prompt if isinstance(req.prompt, str) else " ".join(f"w{t}" for t in req.prompt)
        return {**common, "messages": [{"role": "user", "content": text}]}
    return {**common, "prompt": req.prompt}


async def send_request(
    client, url: str, payload: dict[str, Any], prompt_len: int, t_origin: float, headers: dict[str, str]
) -> RequestResult:
    res = RequestResult(prompt_len=prompt_len)
    chat = "messages" in payload
    st = time.perf_counter()
    res.start_s = st - t_origin
    last = st
    chunks = 0
    usage_out = None
    try:
        async with client.stream("POST", url, json=payload, headers=headers) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                res.error = f"HTTP {resp.status_code}: {body[:200]}"
                return res
            async for line in resp.aiter_lines():
                line = line.strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                if "error" in msg:
                    res.error = f"stream error: {json.dumps(msg['error'])[:200]}"
                    return res
                if msg.get("usage"):
                    usage_out = msg["usage"].get("completion_tokens")
                    res.prompt_len = msg["usage"].get("prompt_tokens") or prompt_len
                for choice in msg.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    if not text:
                        continue
                    now = time.perf_counter()
                    if chunks == 0:
                        res.ttft_s = now - st
                    else:
                        res.itl_s.append(now - last)
                    last = now
                    chunks += 1
        res.latency_s = last - st if chunks else time.perf_counter() - st
        res.output_len = usage_out if usage_out is not None else chunks
        res.success = chunks > 0 or res.output_len > 0
        if not res.success:
            res.error = "no output"
    except Exception as e:  # connection refused, timeout, bad JSON: a failed request, not a crash
        res.error = f"{type(e).__name__}: {e}"[:200]
    return res


# ---- the benchmark ------------------------------------------------------------------------------
async def run_load(
    base_url: str,
    endpoint: str,
    model: str,
    requests: list[ServeRequest],
    request_rate: float,
    burstiness: float = 1.0,
    max_concurrency: int | None = None,
    seed: int = 0,
    ignore_eos: bool = True,
    api_key: str | None = None,
    timeout_s: float = 600.0,
    progress: bool = True,
) -> tuple[list[RequestResult], float]:
    """Send every request; returns (results in request order, duration in seconds)."""
    import httpx

    url = base_url.rstrip("/") + endpoint
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    gaps = arrival_gaps_s(len(requests), request_rate, burstiness, seed)
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(requests), desc="requests", unit="req")
    limits = httpx.Limits(max_connections=max_concurrency or len(requests) or 1, max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:

        async def one(req: ServeRequest) -> RequestResult:
            payload = _payload(endpoint, model, req, ignore_eos)
            if sem is None:
                r = await send_request(client, url, payload, req.prompt_len, t0, headers)
            else:
                async with sem:
                    r = await send_request(client, url, payload, req.prompt_len, t0, headers)
            if bar is not None:
                bar.update(1)
            return r

        t0 = time.perf_counter()
        tasks = []
        for req, gap in zip(requests, gaps, strict=True):
            if gap > 0:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one(req)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return list(results), duration


def summarize_results(
    results: list[RequestResult],
    duration_s: float,
    slos: dict[str, float],
    request_rate: float,
    burstiness: float,
    max_concurrency: int | None,
    percentiles: tuple[float, ...] = (50, 90, 99),
) -> ServeSummary:
    ok = [r for r in results if r.success]
    ttft = [r.ttft_s for r in ok]
    tpot = [t for r in ok if (t := r.tpot_s) is not None]
    itl = [g for r in ok for g in r.itl_s]
    e2el = [r.latency_s for r in ok]
    metrics = {
        name: {k: v * 1e3 for k, v in summarize(vals, percentiles).items()}
        for name, vals in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2el", e2el))
    }
    n_in = sum(r.prompt_len for r in ok)
    n_out = sum(r.output_len for r in ok)
    goodput = None
    if slos:

        def good(r: RequestResult) -> bool:
            values = {"ttft": r.ttft_s, "tpot": r.tpot_s or 0.0, "e2el": r.latency_s}
            return all(values[k] <= v for k, v in slos.items())

        goodput = sum(1 for r in ok if good(r)) / duration_s
    errors = sorted({r.error for r in results if not r.success})
    return ServeSummary(
        len(results),
        len(ok),
        len(results) - len(ok),
        duration_s,
        n_in,
        n_out,
        len(ok) / duration_s,
        n_out / duration_s,
        (n_in + n_out) / duration_s,
        goodput,
        metrics,
        request_rate,
        burstiness,
        max_concurrency,
        errors[:10],
    )


def print_summary(s: ServeSummary) -> None:
    print(f"successful requests: {s.completed} / {s.num_requests} (failed: {s.failed})")
    print(
        f"duration: {s.duration_s:.2f} s   request rate: {s.request_rate}   burstiness: {s.burstiness}"
        f"   max concurrency: {s.max_concurrency}"
    )
    print(f"input tokens: {s.total_input_tokens}   output tokens: {s.total_output_tokens}")
    print(
        f"request throughput: {s.request_throughput:.3f} req/s   output: {s.output_throughput:.1f} tok/s   "
        f"total: {s.total_token_throughput:.1f} tok/s"
    )
    if s.goodput is not None:
        print(f"goodput: {s.goodput:.3f} req/s")
    cols = [k for k in next(iter(s.metrics_ms.values()))]
    print_table(["ms"] + cols, [[m.upper()] + [f"{s.metrics_ms[m][c]:.2f}" for c in cols] for m in METRICS])
    for e in s.errors:
        print(f"error: {e}")


def _fetch_model(base_url: str, api_key: str | None, name: str | None) -> tuple[str, int | None]:
    """(served name, its max_model_len if the server says) from /v1/models: `name` or the first."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.get(base_url.rstrip("/") + "/v1/models", headers=headers, timeout=30)
    r.raise_for_status()
    cards = r.json()["data"]
    card = next((c for c in cards if c.get("id") == name), None) if name else cards[0]
    if card is None:
        return name, None
    return card["id"], card.get("max_model_len")


def _vocab_from(path: str | None) -> tuple[int | None, set[int]]:
    """Vocabulary size and special ids from a checkpoint directory's config.json, if given."""
    if not path:
        return None, set()
    from nanoserve.bench.models import special_token_ids, vocab_size

    return vocab_size(path), special_token_ids(path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--endpoint", default="/v1/completions", help="/v1/completions or /v1/chat/completions")
    p.add_argument("--model", default=None, help="served model name (default: the first of /v1/models)")
    p.add_argument(
        "--tokenizer",
        default=None,
        metavar="DIR",
        help="checkpoint directory whose config.json gives the vocabulary for token-id prompts "
        "(without it, prompts are words)",
    )
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--input-len", type=int, default=None,
                   help="prompt tokens (default: 128, or what fits the served model's context); without "
                   "--tokenizer the word prompts are sized from the server's token counts")
    p.add_argument("--output-len", type=int, default=None,
                   help="output tokens (default: 128, or what fits the served model's context)")
    p.add_argument("--range-ratio", type=float, default=0.0)
    p.add_argument("--request-rate", type=float, default=math.inf, help="requests/s (inf: all at once)")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the gaps (1 = Poisson)")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--goodput", nargs="+", default=None, metavar="METRIC:MS", help="e.g. ttft:500 tpot:50")
    p.add_argument("--percentiles", default="50,90,99")
    p.add_argument("--no-ignore-eos", action="store_true", help="let requests stop at EOS")
    p.add_argument("--api-key", default=None)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--disable-tqdm", action="store_true")
    p.add_argument("--save-result", default=None, metavar="FILE.json")
    p.add_argument("--save-detailed", action="store_true", help="also save every request's timings")


def run(args: argparse.Namespace) -> int:
    try:
        slos = parse_goodput(args.goodput)
        percentiles = tuple(float(x) for x in args.percentiles.split(","))
        model, max_model_len = _fetch_model(args.base_url, args.api_key, args.model)
        input_len, output_len = args.input_len, args.output_len
        if max_model_len:  # before any request is sent: lengths that fit, or a clear error
            input_len, output_len = fit_lengths(input_len, output_len, max_model_len, args.range_ratio,
                                                args.range_ratio)
        input_len, output_len = input_len or DEFAULT_INPUT_LEN, output_len or DEFAULT_OUTPUT_LEN
        vocab, special = _vocab_from(args.tokenizer)
        as_text = "chat" in args.endpoint
        word_tokens = (0.0, 1.0)
        if as_text or vocab is None:
            word_tokens = calibrate_words(args.base_url, args.endpoint, model, args.api_key, max_model_len)
    except Exception as e:
        print(f"error: {e}")
        return 2
    requests = make_requests(
        args.num_prompts,
        input_len,
        output_len,
        args.range_ratio,
        args.seed,
        vocab,
        special,
        as_text=as_text,
        word_tokens=word_tokens,
    )
    results, duration = asyncio.run(
        run_load(
            args.base_url,
            args.endpoint,
            model,
            requests,
            args.request_rate,
            args.burstiness,
            args.max_concurrency,
            args.seed,
            not args.no_ignore_eos,
            args.api_key,
            args.request_timeout,
            not args.disable_tqdm,
        )
    )
    summary = summarize_results(
        results, duration, slos, args.request_rate, args.burstiness, args.max_concurrency, percentiles
    )
    print_summary(summary)
    if args.save_result:
        out: dict[str, Any] = {
            "benchmark": "serve",
            "base_url": args.base_url,
            "endpoint": args.endpoint,
            "model": model,
            "args": {k: v for k, v in vars(args).items() if k != "api_key"},
            "slos_s": slos,
            **asdict(summary),
        }
        if args.save_detailed:
            out["requests"] = [asdict(r) | {"tpot_s": r.tpot_s} for r in results]
        save_json(args.save_result, out)
    return 0 if summary.completed else 1
