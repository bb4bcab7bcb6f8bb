"""Teaching rules: named slips, unit slips not counted, hints and reveal recorded, mastery only unaided,
FSRS rated by what happened, trace shuffling mapped back, debug graded by tests, chapter notes."""

from __future__ import annotations

import sqlite3

import pytest
from fastapi.testclient import TestClient

from nanoserve.workbook.app import create_app
from nanoserve.workbook.bank import default_bank, render, solve
from nanoserve.workbook.chapters import all_notes
from nanoserve.workbook.checker import check, fixed_code, trace_order
from nanoserve.workbook.grading import grade_number
from nanoserve.workbook.progress import Progress, fsrs_rating
from nanoserve.workbook.teaching import hints, reveal


@pytest.fixture()
def client(tmp_path):
    return TestClient(create_app(tmp_path / "wb.sqlite"))


def post(client, url, **body):
    return client.post(url, json=body).json()


def test_unit_slips_and_form_errors_are_told_not_counted():
    g = grade_number("17.5 GiB", 17.5, "GB")
    assert not g.counts and "unit slip" in g.message and "GiB" in g.message
    g = grade_number("75", 0.75, "fraction")
    assert not g.counts and "percentage" in g.message
    g = grade_number("17,5", 17.5, "GB")
    assert g.given is None and "17.5" in g.message and "comma" in g.message
    assert grade_number("17,500", 17500, "GB").correct          # a thousands separator still works
    g = grade_number("27.5", 27, "microbatches", integer=True)
    assert not g.counts and "whole number" in g.message
    assert grade_number("20 GB", 17.5, "GB").counts               # a plain miss still counts


@pytest.mark.parametrize("eid, wrong, named", [
    ("000-5.1", lambda v: v / 2, "forgot the factor 2 for K and V"),
    ("000-2.1", lambda v: v / 8, "divided by DP"),
    ("000-0.5", lambda v: v * 1e9 / 2**30, "GB vs GiB"),
    ("000-0.5", lambda v: v * 8, "bits vs bytes"),
    ("000-1.4", lambda v: 16 / (32 + 16), "PP instead of PP − 1"),
    ("000-0.5", lambda v: v * 8, "per-GPU vs total"),   # TP = 8 here: named along with bits vs bytes
])
def test_derive_feedback_names_the_slip(eid, wrong, named):
    e = default_bank().get(eid)
    v = wrong(solve(e, 0).value)
    verdict = check(e, 0, {"answer": f"{v!r}"})
    assert verdict.counts and not verdict.correct and named in verdict.message, verdict.message


def test_fsrs_rating_follows_what_happened():
    R = fsrs_rating
    assert R(False, True, False, 0, False, 10).name == "Again"
    assert R(True, True, False, 2, False, 10).name == "Hard"
    assert R(True, True, False, 0, False, 10).name == "Easy"
    assert R(True, True, False, 0, False, 600).name == "Good"
    assert R(True, True, False, 0, False, None).name == "Good"
    assert R(True, False, True, 0, False, 10).name == "Hard"
    assert R(True, True, False, 0, True, 10) is None              # reveal already rated Again


def test_reveal_forfeits_credit_until_a_fresh_variant(client):
    e = default_bank().get("000-0.5")
    right = solve(e, 0).value
    wrong = post(client, "/api/attempt", id=e.id, variant=0, answer=f"{right * 1.3} GB")
    assert wrong["counts"] and wrong["expected"] == "" and wrong["derivation"] == ""   # not earned yet
    h1 = post(client, "/api/hint", id=e.id, variant=0)
    h2 = post(client, "/api/hint", id=e.id, variant=0)
    assert (h1["n"], h2["n"]) == (1, 2) and h1["hint"] != h2["hint"]
    shown = post(client, "/api/reveal", id=e.id, variant=0)
    assert "17.5 GB" in shown["expected"] and "bytes_per_param" in shown["derivation"]
    r = post(client, "/api/attempt", id=e.id, variant=0, answer=f"{right} GB")
    assert r["correct"] and r["revealed"] and r["mastered"] == 0 and not r["newly_mastered"]
    assert r["rating"] is None
    v = 3
    r = post(client, "/api/attempt", id=e.id, variant=v, answer=f"{solve(e, v).value} GB", elapsed_ms=20000)
    assert r["correct"] and r["mastered"] == 1 and r["newly_mastered"] and r["rating"] == "Easy"


def test_reveal_before_any_attempt_is_rated_again_and_hints_make_it_hard(client):
    e = default_bank().get("000-2.1")
    assert post(client, "/api/reveal", id=e.id, variant=0)["rating"] == "Again"
    post(client, "/api/hint", id=e.id, variant=2)
    r = post(client, "/api/attempt", id=e.id, variant=2, answer=f"{solve(e, 2).value} GB", elapsed_ms=5000)
    assert r["correct"] and r["rating"] == "Hard" and r["hints_used"] == 1 and r["mastered"] == 1


def test_old_database_is_migrated_and_keeps_its_mastery(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE profiles (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, created_at TEXT NOT NULL,
            best_streak INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE attempts (id INTEGER PRIMARY KEY, profile_id INTEGER NOT NULL, exercise_id TEXT NOT NULL,
            variant INTEGER NOT NULL, answer TEXT NOT NULL, correct INTEGER NOT NULL, at TEXT NOT NULL,
            day TEXT NOT NULL);
        INSERT INTO profiles VALUES (1, 'learner', '2025-01-01T00:00:00+00:00', 1);
        INSERT INTO attempts VALUES
            (1, 1, '000-0.5', 0, '17.5', 1, '2025-01-01T00:00:00+00:00', '2025-01-01');
    """)
    db.commit()
    db.close()
    p = Progress(path)
    assert p.mastered("learner") == {"000-0.5"}
    assert p.attempts("learner")[0]["revealed"] == 0
    p.reveal("learner", "000-0.6", 0)
    p.record_attempt("learner", "000-0.6", 0, "x", True)
    assert p.mastered("learner") == {"000-0.5"}


def test_trace_shuffle_is_mapped_back_and_wrong_picks_say_why():
    bank = default_bank()
    traces = [e for e in bank.exercises if e.type == "trace"]
    assert len(traces) >= 31 and all(len(e.why) == len(e.options) for e in traces)
    firsts = set()
    for e in traces:
        for seed in (1, 2, 3):
            order = trace_order(e, 0, seed)
            firsts.add(order[0] == e.correct)
            shown_right = order.index(e.correct)
            assert check(e, 0, {"choice": shown_right, "shuffle": seed}).correct
            wrong_pos = next(i for i, o in enumerate(order) if o != e.correct)
            v = check(e, 0, {"choice": wrong_pos, "shuffle": seed})
            assert not v.correct and e.why[order[wrong_pos]] in v.message
    assert firsts == {True, False}


def test_debug_exercises_are_fixed_and_graded_by_tests():
    for e in (x for x in default_bank().exercises if x.type == "debug"):
        assert check(e, 0, {"code": fixed_code(e)}).correct, e.id
        buggy = check(e, 0, {"code": "\n".join(e.code)})
        assert buggy.counts and not buggy.correct, e.id


def test_chapter_notes_for_every_chapter_linked_from_exercises(client):
    keys = {f"{s}-{c}" for s, c in default_bank().chapters()}
    assert keys == set(all_notes())
    for key, n in all_notes().items():
        assert n["title"] and n["notes"].strip() and 1 <= len(n["formulas"]) <= 5, key
    page = client.get("/chapter/000-5")
    assert page.status_code == 200 and "b_\\text{KV/token}" in page.text and "PagedAttention" in page.text
    assert 'href="/chapter/000-5"' in client.get("/ex/000-5.1").text
    assert client.get("/chapter/nope").status_code == 400


def test_exercise_page_holds_no_answer_before_it_is_earned(client):
    e = default_bank().get("000-3.6")
    page = client.get(f"/ex/{e.id}").text
    assert e.fix.strip() not in page
    t = default_bank().get("000-0.3")
    assert t.reasoning[:40] not in client.get(f"/ex/{t.id}").text


def test_hints_and_reveal_speak_in_the_variants_numbers():
    """Hints and the reveal come from the rendered variant, never the raw `{template}` text."""
    checked = 0
    for e in default_bank().exercises:
        if not e.variants or e.type != "derive":
            continue
        r = render(e, 3)
        assert hints(e, 3)[: len(r.hints)] == r.hints, e.id
        shown = reveal(e, 3)
        assert shown["explanation"] == r.explanation, e.id
        assert not any("{" in h and "}" in h for h in hints(e, 3)), e.id
        checked += 1
    assert checked > 100
