"""Shared fixtures for the workbook's headless-Chromium tests: a live workbook server on a free port,
a Playwright page in Debian's Chromium, and the screenshot folder (WORKBOOK_SCREENSHOTS chooses it).
A test that takes `page` is skipped, with the reason, where Chromium is absent.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(url, app): the workbook app on a free port; the app itself lets a test seed progress directly."""
    import uvicorn

    from nanoserve.workbook.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(tmp_path_factory.mktemp("wb") / "e2e.sqlite")
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "workbook server did not start"
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    th.join(timeout=10)


@pytest.fixture(scope="module")
def server(live) -> str:
    return live[0]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("WORKBOOK_SCREENSHOTS") or tmp_path_factory.mktemp("workbook_screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nworkbook screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def page(server):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (scripts/install_test_browser.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        pg.set_default_timeout(20000)
        yield pg
        browser.close()
