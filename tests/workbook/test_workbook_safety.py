"""The workbook server's safety: imports that keep history, no open redirect, no answer leaks, body
limits, no 500 for any input (a property-based fuzz of every route), and a server that keeps answering
while a build runs or a huge answer is parsed."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanoserve.workbook.app import create_app
from nanoserve.workbook.bank import default_bank
from nanoserve.workbook.limits import MAX_BODY_BYTES

BANK = default_bank()
IDS = [e.id for e in BANK.exercises]
BUILD = next(e for e in BANK.exercises if e.type == "build")
LOOP = f"def {BUILD.function}(*args):\n    while True:\n        pass\n"


@pytest.fixture
def app():
    return create_app()


@pytest.fixture
def client(app):
    return TestClient(app, raise_server_exceptions=False)


def _history(app, n: int = 6, profile: str = "learner", days_ago: int = 0) -> list[dict]:
    p = app.state.progress
    at = datetime.now(UTC) - timedelta(days=days_ago)
    for i, e in enumerate(BANK.exercises[:n]):
        p.record_attempt(profile, e.id, 0, "1", i % 2 == 0, now=at + timedelta(minutes=i))
    return p.attempts(profile)


# --- import -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [
    ("best_streak", "lots"), ("best_streak", -1), ("attempts", "many"), ("cards", []),
    ("attempts.3.variant", "x"), ("attempts.3.variant", 10**30), ("attempts.3.day", "yesterday"),
    ("attempts.3.correct", "maybe"), ("attempts.3.exercise_id", None), ("attempts.3.at", 5),
])
def test_a_bad_import_names_the_field_and_keeps_history(app, client, field, value):
    before = _history(app)
    data = app.state.progress.export_json("learner")
    data["attempts"] = data["attempts"] * 2            # a different history, so a partial apply shows
    if field.startswith("attempts."):
        _, i, key = field.split(".")
        data["attempts"][int(i)][key] = value
        field = f"attempts[{i}].{key}"
    else:
        data[field] = value
    for query in ("", "?confirm=x"):
        r = client.post("/api/import" + query, content=json.dumps(data))
        assert r.status_code == 400, r.text
        assert field in r.json()["error"]["message"] or r.json()["error"]["param"] == field
        assert app.state.progress.attempts("learner") == before


def test_import_previews_then_applies_only_with_its_confirmation(app, client):
    before = _history(app, 6)
    data = app.state.progress.export_json("learner")
    data["attempts"] = data["attempts"][:2]
    body = json.dumps(data)
    r = client.post("/api/import", content=body).json()
    assert r["applied"] is False
    assert r["preview"]["replaces"]["attempts"] == 6 and r["preview"]["with"]["attempts"] == 2
    assert app.state.progress.attempts("learner") == before          # a preview changes nothing
    other = json.dumps({**data, "attempts": data["attempts"][:1]})
    assert client.post("/api/import", params={"confirm": r["confirm"]}, content=other).status_code == 400
    assert app.state.progress.attempts("learner") == before          # a token is for its own file
    ok = client.post("/api/import", params={"confirm": r["confirm"]}, content=body).json()
    assert ok["applied"] is True and ok["attempts"] == 2
    assert app.state.progress.attempts("learner") == before[:2]


# --- redirects --------------------------------------------------------------------------------------
@pytest.mark.parametrize("back", ["https://example.com/", "//example.com/x", "/\\example.com", "http:/x",
                                  "javascript:alert(1)", "\t//example.com", "/\t/example.com",
                                  "https:example.com", "example.com"])
def test_profile_select_refuses_off_site_redirects(client, back):
    r = client.post("/profile/select", data={"name": "bea", "back": back}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/profile"


def test_profile_select_keeps_a_same_site_path(client):
    r = client.post("/profile/select", data={"name": "bea", "back": "/ex/000-1.1?v=2"},
                    follow_redirects=False)
    assert r.headers["location"] == "/ex/000-1.1?v=2"


# --- leaks ------------------------------------------------------------------------------------------
def _secrets_of(e) -> list[str]:
    """Text that only an earned answer may show: solutions, fixes, trace reasons, reprs of exercises."""
    out = ["seed_answer", "bug_line", "Exercise(", "solution="]
    shown = e.prompt + e.starter + "\n".join(e.code) + "\n".join(e.options)
    out += [ln.strip() for ln in e.solution.splitlines() if len(ln.strip()) > 12 and ln.strip() not in shown]
    if e.fix.strip() and e.fix.strip() not in shown:
        out.append(e.fix.strip())
    if e.reasoning:
        out.append(e.reasoning.strip()[:80])
    return out


def test_no_page_or_response_shows_an_answer_before_it_is_earned(app, client):
    _history(app, 40, days_ago=60)             # many reviews due: the case that leaked through the badge
    assert app.state.progress.due_reviews("learner")
    pages = {path: client.get(path).text for path in ("/", "/review", "/profile")}
    for e in BANK.exercises:
        pages[f"/ex/{e.id}"] = client.get(f"/ex/{e.id}").text
        pages[f"/ex/{e.id}?v=3"] = client.get(f"/ex/{e.id}?v=3").text
    everything = "\n".join(pages.values())
    for e in BANK.exercises:
        for secret in _secrets_of(e):
            assert secret not in pages[f"/ex/{e.id}"], (e.id, secret)
        for generic in ("seed_answer", "bug_line", "Exercise(", "solution="):
            assert generic not in everything, generic
    # Attempts that do not count (unparseable input) earn nothing either.
    for e in BANK.exercises:
        body = {"id": e.id, "variant": 0, "answer": "banana", "choice": "x", "line": "x", "order": "x",
                "code": ""}
        r = client.post("/api/attempt", json=body)
        data = r.json()
        assert r.status_code == 200 and data["counts"] is False
        assert not data.get("expected") and not data.get("derivation")
        assert isinstance(data["due"], int)                 # the header's count, never a list
        for secret in _secrets_of(e):
            assert secret not in r.text, (e.id, secret)


def test_attempt_reports_the_next_review_date_without_clobbering_the_due_count(app, client):
    r = client.post("/api/attempt", json={"id": "000-1.1", "variant": 0, "answer": "0.5"}).json()
    assert r["counts"] and isinstance(r["due"], int)
    datetime.fromisoformat(r["next_review"])


# --- limits and numbers -----------------------------------------------------------------------------
def test_bodies_above_the_limit_get_413_with_a_json_error(client):
    big = json.dumps({"id": "000-1.1", "answer": "1" * (MAX_BODY_BYTES + 10)})
    r = client.post("/api/attempt", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():                                      # no Content-Length: counted while streaming
        for _ in range(40):
            yield b"x" * 65536
    r = client.post("/api/attempt", content=chunks())
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    # /api/import has a larger limit: a 2 MiB file is read and judged on its content
    r = client.post("/api/import", content=json.dumps({"pad": "x" * (2 << 20)}))
    assert r.status_code == 400


BAD_NUMBERS = ["1e400", "1e9999999", "-1e9999999", "Infinity", "-Infinity", "NaN", "-0", "9" * 5000,
               "1" + "0" * 100_000, "1e30", "1" + " " * 5000 + "x", "0x10", "1_000", "١٢٣"]


@pytest.mark.parametrize("raw", BAD_NUMBERS)
def test_no_500_and_no_stall_for_hostile_numbers(client, raw):
    t0 = time.perf_counter()
    for body in ({"id": "000-1.1", "answer": raw}, {"id": "000-1.1", "variant": raw, "answer": "1"},
                 {"id": "000-1.6", "choice": raw}, {"id": "000-3.6", "line": raw}):
        assert client.post("/api/attempt", json=body).status_code < 500, body
    for literal in ("1e400", "-1e400", "Infinity", "NaN", "1" + "0" * 5000, "1e30", "-0"):
        for key in ("variant", "answer", "choice", "line"):
            body = '{"id": "000-1.1", "' + key + '": ' + literal + "}"
            assert client.post("/api/attempt", content=body).status_code < 500, body
    assert client.get("/ex/000-1.1", params={"v": raw[:5000]}).status_code < 500
    assert time.perf_counter() - t0 < 30      # was 14 s for one request of 1e9999999


# --- fuzz -------------------------------------------------------------------------------------------
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40),
                    st.sampled_from(BAD_NUMBERS[:9]))
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module")
def fuzz_client():
    return TestClient(create_app(), raise_server_exceptions=False)


@FUZZ
@given(eid=st.one_of(st.sampled_from([i for i in IDS if i != BUILD.id]), st.text(max_size=20)),
       extra=st.dictionaries(st.sampled_from(["variant", "answer", "choice", "line", "order", "code"]),
                             json_values))
def test_fuzz_attempt_never_500(fuzz_client, eid, extra):
    body = json.dumps({"id": eid, **extra})           # NaN/Infinity floats go out as JSON literals
    r = fuzz_client.post("/api/attempt", content=body)
    assert r.status_code < 500, (body, r.text)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), json_values.map(json.dumps).map(str.encode)))
def test_fuzz_raw_bodies_never_500(fuzz_client, raw):
    for path in ("/api/attempt", "/api/import", "/profile/select", "/api/hint", "/api/reveal",
                 "/api/checklist"):
        assert fuzz_client.post(path, content=raw).status_code < 500, (path, raw)


@FUZZ
@given(eid=st.one_of(st.sampled_from(IDS), st.text(max_size=20)), variant=json_values,
       item=json_values, level=json_values)
def test_fuzz_aids_and_checklist_never_500(fuzz_client, eid, variant, item, level):
    for path in ("/api/hint", "/api/reveal"):
        r = fuzz_client.post(path, content=json.dumps({"id": eid, "variant": variant}))
        assert r.status_code < 500, (path, eid, variant, r.text)
    r = fuzz_client.post("/api/checklist", content=json.dumps({"item": item, "level": level}))
    assert r.status_code < 500, (item, level, r.text)


@FUZZ
@given(q=st.one_of(st.text(max_size=60), st.lists(st.sampled_from(IDS), max_size=3).map(
           lambda ids: ",".join(f"{i}~1~f" for i in ids))),
       i=st.one_of(st.integers(), st.text(max_size=12)), t=st.one_of(st.integers(), st.text(max_size=25)),
       item=st.text(max_size=20))
def test_fuzz_review_sessions_never_500(fuzz_client, q, i, t, item):
    r = fuzz_client.get("/review/session", params={"q": q, "i": i, "t": t, "item": item})
    assert r.status_code < 500, (q, i, t, item, r.text[:300])
    assert fuzz_client.get("/review/start", params={"item": item}, follow_redirects=False).status_code < 500


@FUZZ
@given(eid=st.text(st.characters(min_codepoint=33, exclude_characters="/?#%\x7f"), max_size=30),
       v=st.text(max_size=30), back=st.text(max_size=40), name=st.text(max_size=50))
def test_fuzz_pages_and_forms_never_500(fuzz_client, eid, v, back, name):
    assert fuzz_client.get("/ex/" + eid, params={"v": v}).status_code < 500
    r = fuzz_client.post("/profile/select", data={"name": name, "back": back}, follow_redirects=False)
    assert r.status_code < 500, (name, back)
    if r.status_code == 303:
        loc = r.headers["location"]
        assert loc.startswith("/") and not loc.startswith("//") and "\\" not in loc
    cookie = "profile=" + name.encode("ascii", "replace").decode().replace("\r", "").replace("\n", "")
    for path in ("/", "/review", "/profile", "/api/export", "/checklist"):
        assert fuzz_client.get(path, headers={"cookie": cookie}).status_code < 500, (path, cookie)


@FUZZ
@given(export=st.fixed_dictionaries({
    "format": st.just("nanoserve-workbook-progress"), "profile": st.one_of(st.text(max_size=45), scalars),
    "best_streak": scalars, "attempts": st.one_of(scalars, st.lists(st.one_of(scalars, st.fixed_dictionaries({
        "exercise_id": st.one_of(st.sampled_from(IDS), scalars), "variant": scalars, "answer": scalars,
        "correct": scalars, "at": st.one_of(st.just("2026-01-02T03:04:05+00:00"), scalars),
        "day": st.one_of(st.just("2026-01-02"), scalars)})), max_size=3)),
    "cards": st.one_of(scalars, st.dictionaries(st.text(max_size=5), json_values, max_size=2))}))
def test_fuzz_import_never_500_and_never_half_applies(fuzz_client, export):
    progress = fuzz_client.app.state.progress
    before = progress.attempts("learner")
    body = json.dumps(export)
    r = fuzz_client.post("/api/import", content=body)
    assert r.status_code < 500, (body, r.text)
    if r.status_code == 200:
        r = fuzz_client.post("/api/import", params={"confirm": r.json()["confirm"]}, content=body)
        assert r.status_code == 200, r.text
    else:
        assert progress.attempts("learner") == before


# --- responsiveness ---------------------------------------------------------------------------------
def _ping_while(url: str, slow: callable) -> tuple[list[float], float, float]:
    """Run `slow` in a thread; meanwhile time GET / five times. (ping seconds, slow's start and end)."""
    box: dict[str, float] = {}

    def run() -> None:
        box["start"] = time.perf_counter()
        slow()
        box["end"] = time.perf_counter()
    th = threading.Thread(target=run)
    th.start()
    time.sleep(0.3)                                   # the slow request is in the server now
    pings = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(5):
            t0 = time.perf_counter()
            assert c.get("/review").status_code == 200
            pings.append(time.perf_counter() - t0)
            box.setdefault("last_ping", time.perf_counter())
            box["last_ping"] = time.perf_counter()
    th.join(timeout=60)
    return pings, box["last_ping"], box["end"]


def _all_within_200ms(measure) -> list[list[float]]:
    """Every ping of a round under 200 ms, in one of two rounds: a server that waits for the slow request
    fails both (its pings take the whole build or parse, seconds); one scheduler stall on a loaded 2-core
    box (seen: a single 355 ms ping while a test suite and a training run shared the cores) does not."""
    rounds = []
    for _ in range(2):
        rounds.append(measure())
        print(f"\npings (ms): {[round(p * 1000, 1) for p in rounds[-1]]}")
        if max(rounds[-1]) < 0.2:
            break
    assert max(rounds[-1]) < 0.2, rounds
    return rounds


def test_server_answers_while_a_build_runs(server):
    def build() -> None:
        r = httpx.post(server + "/api/attempt", json={"id": BUILD.id, "code": LOOP}, timeout=60)
        assert "did not return" in r.json()["message"]

    def measure() -> list[float]:
        pings, last_ping, build_end = _ping_while(server, build)
        assert last_ping < build_end, "the other requests waited for the build to finish"
        return pings
    _all_within_200ms(measure)


def test_server_answers_while_huge_answers_are_parsed(server):
    def huge() -> None:
        with httpx.Client(base_url=server, timeout=60) as c:
            for answer in ("1e9999999", "9" * (MAX_BODY_BYTES - 100), "1" + " " * 500_000 + "x") * 3:
                assert c.post("/api/attempt", json={"id": "000-1.1", "answer": answer}).status_code < 500
    _all_within_200ms(lambda: _ping_while(server, huge)[0])


def test_export_import_keeps_reveals_and_hints(tmp_path):
    """A reveal forfeits credit; exporting and importing must not launder it back into mastery."""
    from nanoserve.workbook.progress import Progress

    src = Progress(tmp_path / "a.sqlite")
    src.use_hint("ann", "004-4", 0, 1)
    src.reveal("ann", "004-4", 0)
    src.record_attempt("ann", "004-4", 0, "1", True)
    assert not src.is_mastered("ann", "004-4")
    data = src.export_json("ann")
    assert data["attempts"][0]["revealed"] == 1 and data["attempts"][0]["hints"] == 1
    dst = Progress(tmp_path / "b.sqlite")
    dst.import_json(data)
    assert not dst.is_mastered("ann", "004-4")
    assert dst.attempts("ann")[0]["revealed"] == 1
    assert dst.aids("ann", "004-4", 0) == src.aids("ann", "004-4", 0)
    # An export from before hints and reveals existed still imports, as unaided attempts.
    for a in data["attempts"]:
        del a["hints"], a["revealed"]
    del data["aids"]
    dst.import_json(data)
    assert dst.is_mastered("ann", "004-4")
