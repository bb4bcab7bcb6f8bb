"""The online benchmark against a real `nanoserve serve` and against a scripted local server."""

import json
import math
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from nanoserve.bench.serve import arrival_gaps_s, parse_goodput
from nanoserve.cli import main


def test_arrival_gaps_poisson_mean_and_inf():
    assert arrival_gaps_s(5, math.inf, 1.0, 0) == [0.0] * 5
    gaps = arrival_gaps_s(4000, 4.0, 1.0, 1)
    assert abs(sum(gaps) / len(gaps) - 0.25) < 0.02
    bursty = arrival_gaps_s(4000, 4.0, 0.25, 1)  # same mean, larger spread
    mean = sum(bursty) / len(bursty)
    assert abs(mean - 0.25) < 0.04
    var = sum((g - mean) ** 2 for g in bursty) / len(bursty)
    assert var > 3 * sum((g - 0.25) ** 2 for g in gaps) / len(gaps)
    with pytest.raises(ValueError):
        arrival_gaps_s(3, 0.0, 1.0, 0)


def test_parse_goodput():
    assert parse_goodput(["ttft:500", "tpot:50"]) == {"ttft": 0.5, "tpot": 0.05}
    for bad in (["ttft"], ["foo:3"], ["ttft:abc"], ["tpot:-1"]):
        with pytest.raises(ValueError):
            parse_goodput(bad)


SMALL_CONTEXT = 128  # the demo model's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Scripted(BaseHTTPRequestHandler):
    """OpenAI-style SSE: every 3rd request fails with a 500; the others stream max_tokens chunks."""

    count = 0
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "scripted", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with _Scripted.lock:
            _Scripted.count += 1
            n = _Scripted.count
        if n % 3 == 0:
            self.send_response(500)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(req["max_tokens"]):
            time.sleep(0.002)
            chunk = {"choices": [{"index": 0, "text": f" t{i}"}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        usage = {
            "choices": [],
            "usage": {"prompt_tokens": len(req["prompt"]), "completion_tokens": req["max_tokens"]},
        }
        self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())


def test_serve_bench_counts_failures_and_goodput(tmp_path, tiny_model):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Scripted.count = 0
    out = tmp_path / "serve.json"
    try:
        rc = main(
            [
                "bench",
                "serve",
                "--base-url",
                f"http://127.0.0.1:{server.server_port}",
                "--tokenizer",
                str(tiny_model("llama")),
                "--num-prompts",
                "9",
                "--input-len",
                "8",
                "--output-len",
                "5",
                "--request-rate",
                "200",
                "--max-concurrency",
                "3",
                "--goodput",
                "ttft:60000",
                "tpot:60000",
                "--disable-tqdm",
                "--save-result",
                str(out),
                "--save-detailed",
            ]
        )
    finally:
        server.shutdown()
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["model"] == "scripted"
    assert data["num_requests"] == 9 and data["failed"] == 3 and data["completed"] == 6
    assert data["total_output_tokens"] == 6 * 5 and data["total_input_tokens"] == 6 * 8
    assert any("HTTP 500" in e for e in data["errors"])
    # generous SLOs: every completed request is good
    assert abs(data["goodput"] - data["request_throughput"]) < 1e-9
    for m in ("ttft", "tpot", "itl", "e2el"):
        s = data["metrics_ms"][m]
        assert 0 < s["median"] <= s["p90"] <= s["p99"]
    assert data["metrics_ms"]["e2el"]["mean"] >= data["metrics_ms"]["ttft"]["mean"]
    ok = [r for r in data["requests"] if r["success"]]
    assert len(ok) == 6 and all(len(r["itl_s"]) == 4 for r in ok)


def test_serve_bench_against_nanoserve_serve(tmp_path, tiny_model):
    model = tiny_model("llama")
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nanoserve.cli",
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--kv-cache-memory-bytes",
            str(1 << 24),
            "--max-model-len",
            str(SMALL_CONTEXT),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.time() < deadline, "server did not start"
            time.sleep(0.3)
        out = tmp_path / "serve.json"
        rc = main(
            [
                "bench",
                "serve",
                "--base-url",
                base,
                "--tokenizer",
                str(model),
                "--num-prompts",
                "8",
                "--input-len",
                "10",
                "--output-len",
                "6",
                "--range-ratio",
                "0.3",
                "--request-rate",
                "50",
                "--disable-tqdm",
                "--save-result",
                str(out),
            ]
        )
        assert rc == 0
        data = json.loads(out.read_text())
        assert data["failed"] == 0 and data["completed"] == 8, data["errors"]
        assert data["total_output_tokens"] > 0
        assert data["metrics_ms"]["ttft"]["mean"] > 0 and data["metrics_ms"]["tpot"]["mean"] > 0

        # A first run: no --tokenizer, no lengths, a context as short as the demo model's. The defaults
        # fit it, and the word prompts come out at --input-len tokens by the server's own count.
        for endpoint in ("/v1/completions", "/v1/chat/completions"):
            rc = main(["bench", "serve", "--base-url", base, "--num-prompts", "4", "--endpoint", endpoint,
                       "--disable-tqdm", "--save-result", str(out)])
            assert rc == 0
            data = json.loads(out.read_text())
            assert data["failed"] == 0 and data["completed"] == 4, data["errors"]
            mean_input = data["total_input_tokens"] / 4
            assert abs(mean_input - SMALL_CONTEXT // 2) <= 0.15 * SMALL_CONTEXT // 2, (endpoint, mean_input)
            assert data["total_output_tokens"] == 4 * (SMALL_CONTEXT // 2)
        # Lengths that cannot fit: an error before any request is sent.
        assert main(["bench", "serve", "--base-url", base, "--input-len", "100", "--output-len", "100",
                     "--disable-tqdm"]) == 2
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
