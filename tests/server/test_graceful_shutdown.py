"""A server of its own (it gets killed): queue overflow is a 503, and SIGTERM with requests in flight
lets the short ones finish, ends the long ones cleanly, refuses new ones and exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
from server_process import LONG_MAX_TOKENS, metric_values
from server_process import SHUTDOWN_GRACE_S as GRACE_S


class StreamReader(threading.Thread):
    """Reads one streaming completion in the background, keeping every SSE data line."""

    def __init__(self, url: str, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.url, self.max_tokens = url, max_tokens
        self.events: list[str] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self.leave = threading.Event()  # set to disconnect mid-stream

    def run(self) -> None:
        body = {"prompt": "shutdown test", "max_tokens": self.max_tokens, "stream": True, "ignore_eos": True}
        try:
            with httpx.stream("POST", self.url + "/v1/completions", json=body, timeout=60) as resp:
                self.status = resp.status_code
                for line in resp.iter_lines():
                    if self.leave.is_set():
                        return
                    if line.startswith("data: "):
                        self.events.append(line[6:])
        except BaseException as e:  # noqa: BLE001 -- recorded and asserted by the test
            self.error = e

    def payloads(self) -> list[dict]:
        return [json.loads(e) for e in self.events if e != "[DONE]"]

    def wait_tokens(self, n: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.events) < n and time.monotonic() < deadline and self.error is None:
            time.sleep(0.01)
        assert len(self.events) >= n, (self.status, self.error, self.events)


def wait_metric(url: str, name: str, value: float, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while metric_values(url)[name] != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)


def test_queue_overflow_is_503(busy_server):
    url = busy_server.url
    readers = [StreamReader(url, LONG_MAX_TOKENS) for _ in range(2)]
    for r in readers:  # one at a time: a request counts as queued until its first step
        r.start()
        r.wait_tokens(2)
    readers.append(StreamReader(url, LONG_MAX_TOKENS))
    readers[-1].start()
    wait_metric(url, "nanoserve:num_requests_waiting", 1)
    resp = httpx.post(url + "/v1/completions", json={"prompt": "one too many", "max_tokens": 2})
    assert resp.status_code == 503
    err = resp.json()["error"]
    assert err["type"] == "ServiceUnavailableError" and "max-num-queued-reqs" in err["message"]
    assert httpx.get(url + "/health").status_code == 200
    for r in readers:
        r.leave.set()
    wait_metric(url, "nanoserve:num_requests_running", 0)
    wait_metric(url, "nanoserve:num_requests_waiting", 0)


def test_sigterm_finishes_short_requests_ends_long_ones_and_exits_0(busy_server):
    url = busy_server.url
    long, short = StreamReader(url, LONG_MAX_TOKENS), StreamReader(url, 30)
    for r in (long, short):  # one at a time: a request counts as queued until its first step
        r.start()
        r.wait_tokens(2)
    busy_server.proc.send_signal(signal.SIGTERM)
    t_signal = time.monotonic()
    time.sleep(0.3)
    # Draining refuses new work at once, on a new connection too: the documented 503, never a hang
    # and never "connection refused".
    late = httpx.post(url + "/v1/completions", json={"prompt": "late", "max_tokens": 2}, timeout=5)
    assert late.status_code == 503 and late.json()["error"]["type"] == "ServiceUnavailableError"
    rc = busy_server.proc.wait(GRACE_S + 15)
    elapsed = time.monotonic() - t_signal
    long.join(5)
    short.join(5)
    assert rc == 0, busy_server.log()
    assert elapsed < GRACE_S + 10

    # The short request finished normally within the grace period.
    assert short.error is None and short.events[-1] == "[DONE]"
    assert short.payloads()[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(p["choices"][0]["text"] for p in short.payloads())
    # The long one was aborted after the grace period: an error event, then [DONE].
    assert long.error is None and long.events[-1] == "[DONE]", (long.error, long.events[-3:])
    last = long.payloads()[-1]
    assert last["error"]["code"] == 503 and "shutting down" in last["error"]["message"]
    assert all("error" not in p for p in long.payloads()[:-1])

    log = busy_server.log()
    assert "SIGTERM: draining" in log and "Traceback" not in log
