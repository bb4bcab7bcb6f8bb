"""Progress in SQLite: streaks, mastery, the FSRS review queue, export/import."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.workbook.progress import Progress

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _attempt(p, ex, correct, day_offset, variant=0, profile="ann"):
    t = T0 + timedelta(days=day_offset)
    return p.record_attempt(profile, ex, variant, "x", correct, now=t, local_day=t.date())


def test_streak_counts_consecutive_days_and_best_streak_survives_a_gap():
    p = Progress()
    for d in (0, 1, 2):
        o = _attempt(p, "a", True, d)
    assert o.streak == 3 and o.best_streak == 3
    o = _attempt(p, "b", False, 5)              # gap of two days: streak restarts
    assert o.streak == 1 and o.best_streak == 3
    assert p.streak("ann", today=(T0 + timedelta(days=6)).date()) == 1   # yesterday still counts
    assert p.streak("ann", today=(T0 + timedelta(days=7)).date()) == 0
    assert p.best_streak("ann") == 3


def test_mastery_per_exercise_and_group():
    p = Progress()
    _attempt(p, "000-0.1", False, 0)
    assert not p.is_mastered("ann", "000-0.1")
    o = _attempt(p, "000-0.1", True, 0)
    assert o.newly_mastered and p.is_mastered("ann", "000-0.1")
    assert not _attempt(p, "000-0.1", True, 0, variant=2).newly_mastered
    groups = {"ch0": ["000-0.1", "000-0.2"], "tp": ["000-0.1"]}
    assert p.mastery("ann", groups) == {"ch0": (1, 2), "tp": (1, 1)}
    assert p.mastery("bob", groups) == {"ch0": (0, 2), "tp": (0, 1)}


def test_fsrs_ratings_and_review_queue():
    p = Progress()
    miss = _attempt(p, "hard-one", False, 0)
    again = _attempt(p, "hard-one", True, 0)
    good = _attempt(p, "easy-one", True, 0)
    assert (miss.rating, again.rating, good.rating) == ("Again", "Hard", "Good")
    assert _attempt(p, "easy-one", True, 0).rating is None        # repeats on one variant are not reviews
    assert good.due > again.due > T0
    due_soon = p.due_reviews("ann", now=again.due)
    assert [e for e, _ in due_soon] == ["hard-one"]
    assert {e for e, _ in p.due_reviews("ann", now=T0 + timedelta(days=60))} == {"hard-one", "easy-one"}


def test_export_import_round_trip_and_bad_input():
    p = Progress()
    for d in range(4):
        _attempt(p, f"ex{d}", d % 2 == 0, d)
    data = p.export_json("ann")
    q = Progress()
    assert q.import_json(data) == "ann"
    assert q.export_json("ann") == data
    assert q.streak("ann", today=date(2026, 3, 5)) == 4
    assert q.mastered("ann") == p.mastered("ann")
    with pytest.raises(InvalidRequestError):
        q.import_json({"format": "something else"})
    with pytest.raises(InvalidRequestError):
        q.import_json({"format": "nanoserve-workbook-progress", "profile": "x", "attempts": [{}],
                       "cards": {}})


def test_profiles_are_validated_and_persist(tmp_path):
    db = tmp_path / "wb.sqlite"
    p = Progress(db)
    _attempt(p, "a", True, 0, profile="carol")
    assert Progress(db).mastered("carol") == {"a"}
    with pytest.raises(InvalidRequestError):
        p.profile_id("")
    with pytest.raises(InvalidRequestError):
        p.profile_id("x" * 41)
