"""The web app through FastAPI's TestClient, and the terminal practice loop."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient

from nanoserve.workbook.app import create_app
from nanoserve.workbook.bank import default_bank, solve
from nanoserve.workbook.cli import practise


@pytest.fixture()
def client(tmp_path):
    return TestClient(create_app(tmp_path / "wb.sqlite"))


def test_pages_render(client):
    r = client.get("/")
    assert r.status_code == 200 and "Tensor Parallelism" in r.text
    assert "Workbook — Systems &amp; Serving" in r.text     # the book's title, not "Seed 000"
    for e in default_bank().exercises[::7]:
        page = client.get(f"/ex/{e.id}?v=3")
        assert page.status_code == 200 and e.title.split("(")[0].strip()[:10] in page.text
    assert client.get("/review").status_code == 200
    assert client.get("/profile").status_code == 200
    assert client.get("/static/katex/katex.min.js").status_code == 200
    assert client.get("/ex/nope").status_code == 400


def test_derive_wrong_then_right_updates_mastery_and_streak(client):
    e = default_bank().get("000-0.5")
    right = solve(e, 0).value
    r = client.post("/api/attempt", json={"id": e.id, "variant": 0, "answer": "not a number"}).json()
    assert not r["counts"] and "not a number" in r["message"] and r["streak"] == 0
    r = client.post("/api/attempt", json={"id": e.id, "variant": 0, "answer": f"{right * 1.2} GB"}).json()
    assert r["counts"] and not r["correct"] and r["mastered"] == 0 and r["streak"] == 1
    assert r["expected"] == "" and r["derivation"] == ""     # a miss does not earn the answer (issue #18)
    r = client.post("/api/attempt", json={"id": e.id, "variant": 0, "answer": f"{right} GB"}).json()
    assert r["correct"] and r["mastered"] == 1 and r["newly_mastered"] and r["rating"] == "Hard"
    assert "17.5 GB" in r["expected"] and "bytes_per_param" in r["derivation"]
    assert r["chapter_done"] == 1 and r["chapter_total"] == 5
    assert "000-0.5" in client.get("/review").text or "Coming up" in client.get("/review").text


def test_variant_pages_show_new_numbers_graded_by_the_planner(client):
    e = default_bank().get("000-0.5")
    v = 4
    value = solve(e, v).value
    r = client.post("/api/attempt", json={"id": e.id, "variant": v, "answer": f"{value} GB"})
    assert r.json()["correct"]


def test_bad_requests_get_clear_errors_and_server_keeps_going(client):
    assert client.post("/api/attempt", content=b"{oops").json()["error"]["param"] == "body"
    assert client.post("/api/attempt", json=[1]).status_code == 400
    assert client.post("/api/attempt", json={"id": "000-0.5", "variant": "x"}).status_code == 400
    code = "import socket\ndef pipeline_bubble_fraction(p, m):\n    return 0\n"
    r = client.post("/api/attempt", json={"id": "000-1.5", "code": code})
    assert r.status_code == 200 and "refused" in r.json()["message"] and not r.json()["counts"]
    loop = "def pipeline_bubble_fraction(pp, m):\n    while True:\n        pass\n"
    r = client.post("/api/attempt", json={"id": "000-1.5", "code": loop}).json()
    assert not r["correct"] and "did not return" in r["message"]
    assert client.get("/").status_code == 200


def test_export_import_and_profiles(client, tmp_path):
    client.post("/api/attempt", json={"id": "000-1.1", "variant": 0, "answer": "0.75"})
    data = client.get("/api/export").json()
    assert data["profile"] == "learner" and len(data["attempts"]) == 1
    r = client.post("/profile/select", data={"name": "bea"}, follow_redirects=False)
    assert r.status_code == 303 and "profile=bea" in r.headers["set-cookie"]
    client.cookies.set("profile", "bea")
    preview = client.post("/api/import", content=json.dumps(data)).json()
    assert preview["applied"] is False and preview["preview"]["with"]["attempts"] == 1
    r = client.post("/api/import", params={"confirm": preview["confirm"]}, content=json.dumps(data))
    assert r.json() == {"applied": True, "imported": "bea", "attempts": 1}
    assert "1</b> / " in client.get("/").text.replace("\n", "")
    assert client.post("/api/import", content=b"nope").status_code == 400
    assert client.post("/profile/select", data={"name": ""}).status_code == 400


def test_terminal_practice(tmp_path):
    e = default_bank().get("000-0.5")
    right = solve(e, 0).value
    out = io.StringIO()
    rc = practise(str(tmp_path / "cli.sqlite"), "tess", start="000-0.5",
                  stdin=io.StringIO(f"banana\n20\n{right}\nq\n"), stdout=out)
    text = out.getvalue()
    assert rc == 0
    assert "not a number" in text and "✗ Not quite" in text and "✓ Correct" in text
    assert "streak 1" in text and "[000-1.1]" in text and text.rstrip().endswith("Bye.")


def test_nanoserve_workbook_starts_on_loopback_and_prints_the_url(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "nanoserve.cli", "workbook", "--port", str(port),
                             "--db", str(tmp_path / "wb.sqlite")], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line
        import httpx
        for _ in range(100):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                import time
                time.sleep(0.1)
        assert r.status_code == 200 and "Chapters" in r.text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
