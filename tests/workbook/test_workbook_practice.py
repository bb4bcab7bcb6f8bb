"""Practice: the skill checklist (items tied to the bank, self-checks stored per profile and kept
across a reopen of an older database), review-session queues (due first, fresh variants for derive
cards, honest repeats otherwise), the queue's URL form, the session summary and the pages that use them."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from nanoserve.errors import InvalidRequestError
from nanoserve.workbook import session
from nanoserve.workbook.app import create_app
from nanoserve.workbook.bank import BankError, default_bank
from nanoserve.workbook.checklist import default_checklist, load_checklist
from nanoserve.workbook.progress import SELF_CHECK_LEVELS, Progress

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LATER = T0 + timedelta(days=60)       # every card reviewed at T0 is due by then


# checklist -----------------------------------------------------------------------------------------
def test_checklist_items_name_real_exercises_and_cover_every_skill():
    bank = default_bank()
    items = default_checklist()
    assert len(items) >= 20
    assert all("can you" in i.ask.lower() and i.ask.endswith("?") for i in items)
    for it in items:
        assert it.exercise_ids and all(x in bank.by_id for x in it.exercise_ids)
    kv = next(i for i in items if i.id == "kv-bytes-per-token")
    assert "000-5.1" in kv.exercise_ids and "KV-cache bytes per token" in kv.ask
    covered = {s for i in items for s in i.skills}
    assert covered == set(bank.skills()), "every bank skill belongs to some checklist item"


def test_checklist_refuses_unknown_skills_and_exercises(tmp_path):
    bank = default_bank()
    bad = tmp_path / "c.yaml"
    bad.write_text("items:\n  - {id: x, section: S, ask: 'Can you?', skills: [no-such-skill]}\n")
    with pytest.raises(BankError, match="no-such-skill"):
        load_checklist(bank, bad)
    bad.write_text("items:\n  - {id: x, section: S, ask: 'Can you?', exercises: [999-1.1]}\n")
    with pytest.raises(BankError, match="999-1.1"):
        load_checklist(bank, bad)


def test_self_checks_are_per_profile_and_overwrite():
    p = Progress()
    p.set_self_check("ann", "kv-budget", 1)
    p.set_self_check("ann", "kv-budget", 2)
    p.set_self_check("bob", "kv-budget", 0)
    assert p.self_checks("ann") == {"kv-budget": 2}
    assert p.self_checks("bob") == {"kv-budget": 0}
    assert SELF_CHECK_LEVELS[2] == "from scratch"
    for bad in (3, -1, True, "2"):
        with pytest.raises(InvalidRequestError):
            p.set_self_check("ann", "kv-budget", bad)


def test_an_older_database_gains_the_self_check_table_and_keeps_its_history(tmp_path):
    db = tmp_path / "old.sqlite"
    old = Progress(db)
    old.record_attempt("ann", "000-0.5", 0, "17.5", True, now=T0)
    old.db.execute("DROP TABLE self_checks")         # as written by a release before the checklist
    old.db.commit()
    old.db.close()
    assert "self_checks" not in {r[0] for r in sqlite3.connect(db).execute(
        "SELECT name FROM sqlite_master WHERE type='table'")}
    p = Progress(db)
    assert len(p.attempts("ann")) == 1
    p.set_self_check("ann", "param-count", 2)
    assert Progress(db).self_checks("ann") == {"param-count": 2}


# queues --------------------------------------------------------------------------------------------
def test_next_card_is_new_then_fresh_for_variants_and_an_honest_repeat_otherwise():
    bank = default_bank()
    derive = next(e for e in bank.exercises if e.type == "derive" and e.variants)
    build = next(e for e in bank.exercises if e.type == "build" and not e.variants)
    assert session.next_card(derive, []) == session.Card(derive.id, 0, "new")
    seen = [{"exercise_id": derive.id, "variant": v} for v in (0, 4)]
    card = session.next_card(derive, seen)
    assert card.kind == "fresh" and card.variant == 5       # never one the learner has been shown
    card = session.next_card(build, [{"exercise_id": build.id, "variant": 0}])
    assert card == session.Card(build.id, 0, "repeat")


def test_review_queue_is_the_due_cards_most_overdue_first_with_fresh_variants():
    bank = default_bank()
    p = Progress()
    p.record_attempt("ann", "000-0.5", 0, "x", False, now=T0 + timedelta(hours=1))
    p.record_attempt("ann", "000-1.5", 0, "x", False, now=T0)
    p.record_attempt("ann", "000-0.1", 0, "x", True, now=LATER)         # just reviewed: not due
    cards = session.review_queue(p, bank, "ann", now=LATER + timedelta(minutes=1))
    assert [c.exercise_id for c in cards] == ["000-1.5", "000-0.5"]
    assert cards[0].kind == "repeat" and cards[1].kind == "fresh" and cards[1].variant == 1
    assert session.review_queue(p, bank, "bob", now=LATER) == []


def test_practice_queue_draws_due_then_missed_then_untried_and_is_never_empty():
    bank = default_bank()
    p = Progress()
    ids = ["000-5.1", "000-5.2", "000-5.3", "000-9.5"]
    p.record_attempt("ann", "000-5.1", 0, "x", True, now=T0)            # due by LATER
    p.record_attempt("ann", "000-5.2", 0, "x", False, now=LATER)        # missed just now: weak
    cards = session.practice_queue(p, bank, "ann", ids, now=LATER)
    assert [c.exercise_id for c in cards] == ["000-5.1", "000-5.2", "000-5.3", "000-9.5"]
    assert [c.kind for c in cards] == ["fresh", "fresh", "new", "new"]
    assert len(session.practice_queue(p, bank, "ann", ids, now=LATER, limit=2)) == 2
    q = Progress()
    for k, i in enumerate(ids):                                           # all solved, none due
        q.record_attempt("ann", i, 0, "x", True, now=LATER - timedelta(seconds=60 - k))
    cards = session.practice_queue(q, bank, "ann", ids, now=LATER)
    assert [c.exercise_id for c in cards] == ids                         # least recently practised first


def test_queue_round_trips_through_the_url_and_rejects_junk():
    bank = default_bank()
    cards = [session.Card("000-0.5", 3, "fresh"), session.Card("002-6.3b", 0, "repeat")]
    assert session.decode(session.encode(cards), bank) == cards
    for junk in ("nope~1~f", "000-0.5~x~f", "000-0.5~1~z", "000-0.5", "000-0.5~-1~f"):
        with pytest.raises(InvalidRequestError):
            session.decode(junk, bank)


def test_summary_counts_first_tries_since_the_session_started():
    p = Progress()
    cards = [session.Card("000-0.5", 2, "fresh"), session.Card("000-1.5", 0, "repeat"),
             session.Card("000-0.1", 1, "fresh")]
    p.record_attempt("ann", "000-0.5", 2, "x", True, now=T0 - timedelta(hours=1))   # before: ignored
    p.record_attempt("ann", "000-0.5", 2, "x", False, now=T0 + timedelta(minutes=1))
    p.record_attempt("ann", "000-0.5", 2, "x", True, now=T0 + timedelta(minutes=2))
    p.record_attempt("ann", "000-1.5", 0, "x", True, now=T0 + timedelta(minutes=3))
    res = session.summarize(p, "ann", cards, T0)
    assert [(r.outcome, r.tries) for r in res] == [("missed", 2), ("right", 1), ("skipped", 0)]


# pages ---------------------------------------------------------------------------------------------
@pytest.fixture()
def app_client(tmp_path):
    app = create_app(tmp_path / "wb.sqlite")
    return app, TestClient(app)


def test_home_shows_continue_due_count_and_collapsed_chapters(app_client):
    app, client = app_client
    text = client.get("/").text
    assert 'id="continue-link" href="/ex/000-0.1"' in text and "Start:" in text
    assert 'id="home-due-count">0<' in text and 'href="/checklist"' in text
    assert '<details class="chapter" id="ch-000-0">' in text
    assert "Seed 000" not in text and "seed's own" not in text
    app.state.progress.record_attempt("learner", "000-0.5", 0, "x", True, now=T0)
    text = client.get("/").text
    nxt = default_bank().next_after("000-0.5")
    assert f'id="continue-link" href="/ex/{nxt.id}"' in text and "Next:" in text
    assert 'id="home-due-count">1<' in text and 'href="/review/start"' in text


def test_review_session_walks_the_queue_and_ends_with_a_summary(app_client):
    app, client = app_client
    pr = app.state.progress
    pr.record_attempt("learner", "000-0.5", 0, "x", False, now=T0)
    pr.record_attempt("learner", "000-1.5", 0, "x", False, now=T0 + timedelta(hours=1))
    r = client.get("/review/start", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/review/session?q=000-0.5~1~f,000-1.5~0~r")
    first = client.get(r.headers["location"])
    assert "card 1 of 2" in first.text and "Fresh numbers" in first.text and 'data-variant="1"' in first.text
    nxt = client.get(r.headers["location"].replace("i=0", "i=1"))
    assert "card 2 of 2" in nxt.text and "Repeat" in nxt.text and "Finish session" in nxt.text
    ok = client.post("/api/attempt", json={"id": "000-1.5", "variant": 0,
                                            "code": default_bank().get("000-1.5").solution})
    assert ok.json()["correct"]
    done = client.get(r.headers["location"].replace("i=0", "i=2"))
    assert 'id="sum-right">1<' in done.text and 'id="sum-skipped">1<' in done.text
    assert client.get("/review/session?q=junk~0~f&i=0&t=0").status_code == 400


def test_checklist_page_saves_a_self_check_and_practise_starts_a_session(app_client):
    app, client = app_client
    page = client.get("/checklist")
    assert page.status_code == 200 and "KV-cache bytes per token" in page.text
    assert client.post("/api/checklist", json={"item": "kv-bytes-per-token", "level": 2}).json()["label"] == \
        "from scratch"
    assert app.state.progress.self_checks("learner") == {"kv-bytes-per-token": 2}
    item = client.get("/checklist").text.split('id="item-kv-bytes-per-token"')[1].split("</li>")[0]
    assert item.count("checked") == 1 and 'value="2"\n            checked' in item
    for bad in ({"item": "nope", "level": 1}, {"item": "kv-budget", "level": 9}, {"item": "kv-budget"}, []):
        assert client.post("/api/checklist", json=bad).status_code == 400
    r = client.get("/review/start?item=kv-bytes-per-token", follow_redirects=False)
    assert r.status_code == 303 and "q=000-5.1~0~n" in r.headers["location"]
    assert "Checklist:" in client.get(r.headers["location"]).text
    assert client.get("/review/start?item=nope").status_code == 400
