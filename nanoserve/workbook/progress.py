"""A learner's progress in SQLite: profiles, attempts, mastery, day streaks and a spaced-review queue.

Review scheduling is the `fsrs` package's (FSRS v6), not ours: each exercise is one FSRS card per
profile, reviewed once per presentation of a variant — first try right → Good, right after a miss
→ Hard, a miss → Again. Mastery: an exercise is *mastered* once answered right; a chapter's or a
skill's mastery is the fraction of its exercises mastered. A day counts for the streak when the
profile made at least one attempt that (local) day.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from nanoserve.errors import InvalidRequestError
from nanoserve.extras import MissingExtraError

try:
    from fsrs import Card, Rating, Scheduler
except ImportError as e:
    raise MissingExtraError("fsrs", "the workbook") from e

SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, created_at TEXT NOT NULL,
    best_streak INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY, profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    exercise_id TEXT NOT NULL, variant INTEGER NOT NULL, answer TEXT NOT NULL, correct INTEGER NOT NULL,
    at TEXT NOT NULL, day TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS attempts_profile ON attempts(profile_id, exercise_id);
CREATE TABLE IF NOT EXISTS cards (
    profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE, exercise_id TEXT NOT NULL,
    card TEXT NOT NULL, due TEXT NOT NULL, PRIMARY KEY (profile_id, exercise_id));
"""
# Added after the first release: created on open when missing, so an older database gains it in place.
SELF_CHECK_SCHEMA = """
CREATE TABLE IF NOT EXISTS self_checks (
    profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE, item_id TEXT NOT NULL,
    level INTEGER NOT NULL, at TEXT NOT NULL, PRIMARY KEY (profile_id, item_id));
"""
# A learner's own answer to a checklist item's "can you do this from scratch?".
SELF_CHECK_LEVELS = ("not yet", "with notes", "from scratch")


@dataclass(frozen=True)
class AttemptOutcome:
    first_try: bool                 # first attempt on this variant
    rating: str | None              # the FSRS rating given ("Good", "Hard", "Again"), None when not reviewed
    due: datetime | None            # next review of this exercise
    newly_mastered: bool
    streak: int
    best_streak: int


def _now() -> datetime:
    return datetime.now(UTC)


class Progress:
    """All progress of all local profiles in one SQLite file (":memory:" for tests)."""

    def __init__(self, path: str | Path = ":memory:", scheduler: Scheduler | None = None) -> None:
        if str(path) != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.executescript(SCHEMA)
        self.db.executescript(SELF_CHECK_SCHEMA)
        self.scheduler = scheduler or Scheduler(enable_fuzzing=False)

    # profiles ---------------------------------------------------------------------------------
    def profile_id(self, name: str, create: bool = True) -> int:
        name = (name or "").strip()
        if not name or len(name) > 40:
            raise InvalidRequestError("a profile name is 1 to 40 characters", "profile")
        row = self.db.execute("SELECT id FROM profiles WHERE name = ?", (name,)).fetchone()
        if row:
            return int(row["id"])
        if not create:
            raise InvalidRequestError(f"no profile named {name!r}", "profile")
        cur = self.db.execute("INSERT INTO profiles (name, created_at) VALUES (?, ?)",
                              (name, _now().isoformat()))
        self.db.commit()
        return int(cur.lastrowid)

    def profiles(self) -> list[str]:
        return [r["name"] for r in self.db.execute("SELECT name FROM profiles ORDER BY id")]

    # attempts ---------------------------------------------------------------------------------
    def record_attempt(
        self,
        profile: str,
        exercise_id: str,
        variant: int,
        answer: str,
        correct: bool,
        now: datetime | None = None,
        local_day: date | None = None,
    ) -> AttemptOutcome:
        """Store one graded attempt, review the exercise's FSRS card, update the streak."""
        now = now or _now()
        day = (local_day or now.astimezone().date()).isoformat()
        pid = self.profile_id(profile)
        was_mastered = self.is_mastered(profile, exercise_id)
        prior = self.db.execute(
            "SELECT correct FROM attempts WHERE profile_id=? AND exercise_id=? AND variant=? ORDER BY id",
            (pid, exercise_id, variant)).fetchall()
        self.db.execute(
            "INSERT INTO attempts (profile_id, exercise_id, variant, answer, correct, at, day) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (pid, exercise_id, int(variant), str(answer)[:2000], int(bool(correct)), now.isoformat(), day))
        rating: Rating | None = None
        if not prior:
            rating = Rating.Good if correct else Rating.Again
        elif correct and not any(r["correct"] for r in prior):
            rating = Rating.Hard          # got there after a miss on this variant
        due = None
        if rating is not None:
            card = self._card(pid, exercise_id)
            card, _ = self.scheduler.review_card(card, rating, review_datetime=now)
            due = card.due
            self.db.execute(
                "INSERT OR REPLACE INTO cards (profile_id, exercise_id, card, due) VALUES (?, ?, ?, ?)",
                (pid, exercise_id, json.dumps(card.to_dict()), card.due.isoformat()))
        streak = self.streak(profile, today=date.fromisoformat(day))
        best = max(streak, self._best_streak(pid))
        self.db.execute("UPDATE profiles SET best_streak=? WHERE id=?", (best, pid))
        self.db.commit()
        return AttemptOutcome(
            first_try=not prior, rating=rating.name if rating else None, due=due,
            newly_mastered=bool(correct) and not was_mastered, streak=streak, best_streak=best)

    def _card(self, pid: int, exercise_id: str) -> Card:
        row = self.db.execute("SELECT card FROM cards WHERE profile_id=? AND exercise_id=?",
                              (pid, exercise_id)).fetchone()
        return Card.from_dict(json.loads(row["card"])) if row else Card()

    def attempts(self, profile: str, exercise_id: str | None = None) -> list[dict[str, Any]]:
        pid = self.profile_id(profile)
        q = "SELECT exercise_id, variant, answer, correct, at, day FROM attempts WHERE profile_id=?"
        args: tuple = (pid,)
        if exercise_id:
            q += " AND exercise_id=?"
            args += (exercise_id,)
        return [dict(r) for r in self.db.execute(q + " ORDER BY id", args)]

    # mastery ----------------------------------------------------------------------------------
    def mastered(self, profile: str) -> set[str]:
        pid = self.profile_id(profile)
        rows = self.db.execute(
            "SELECT DISTINCT exercise_id FROM attempts WHERE profile_id=? AND correct=1", (pid,))
        return {r["exercise_id"] for r in rows}

    def is_mastered(self, profile: str, exercise_id: str) -> bool:
        return exercise_id in self.mastered(profile)

    def mastery(self, profile: str, groups: dict[str, list[str]]) -> dict[str, tuple[int, int]]:
        """{group: (mastered, total)} for groups of exercise ids (chapters, skills, seeds)."""
        done = self.mastered(profile)
        return {g: (sum(e in done for e in ids), len(ids)) for g, ids in groups.items()}

    # streaks ----------------------------------------------------------------------------------
    def practice_days(self, profile: str) -> list[date]:
        pid = self.profile_id(profile)
        rows = self.db.execute("SELECT DISTINCT day FROM attempts WHERE profile_id=? ORDER BY day", (pid,))
        return [date.fromisoformat(r["day"]) for r in rows]

    def streak(self, profile: str, today: date | None = None) -> int:
        """Consecutive practice days ending today (or yesterday: today's practice may still come)."""
        days = set(self.practice_days(profile))
        today = today or datetime.now().date()
        cur = today if today in days else today - timedelta(days=1)
        n = 0
        while cur in days:
            n += 1
            cur -= timedelta(days=1)
        return n

    def best_streak(self, profile: str) -> int:
        days = sorted(self.practice_days(profile))
        best = run = 0
        for i, d in enumerate(days):
            run = run + 1 if i and d - days[i - 1] == timedelta(days=1) else 1
            best = max(best, run)
        return max(best, self._best_streak(self.profile_id(profile)))

    def _best_streak(self, pid: int) -> int:
        row = self.db.execute("SELECT best_streak FROM profiles WHERE id=?", (pid,)).fetchone()
        return int(row["best_streak"]) if row else 0

    # review queue -----------------------------------------------------------------------------
    def due_reviews(self, profile: str, now: datetime | None = None) -> list[tuple[str, datetime]]:
        """Exercises whose FSRS card is due, most overdue first."""
        pid = self.profile_id(profile)
        now = now or _now()
        rows = self.db.execute("SELECT exercise_id, due FROM cards WHERE profile_id=? ORDER BY due", (pid,))
        out = [(r["exercise_id"], datetime.fromisoformat(r["due"])) for r in rows]
        return [(e, d) for e, d in out if d <= now]

    def next_due(self, profile: str) -> list[tuple[str, datetime]]:
        pid = self.profile_id(profile)
        rows = self.db.execute("SELECT exercise_id, due FROM cards WHERE profile_id=? ORDER BY due", (pid,))
        return [(r["exercise_id"], datetime.fromisoformat(r["due"])) for r in rows]

    def last_attempt(self, profile: str) -> dict[str, Any] | None:
        """The profile's most recent attempt ("continue where you left off"), None before any."""
        pid = self.profile_id(profile)
        row = self.db.execute("SELECT exercise_id, variant, correct, at FROM attempts WHERE profile_id=? "
                              "ORDER BY id DESC LIMIT 1", (pid,)).fetchone()
        return dict(row) if row else None

    # checklist self-checks --------------------------------------------------------------------
    def set_self_check(self, profile: str, item_id: str, level: int, now: datetime | None = None) -> None:
        """Store the learner's own rating of a checklist item (an index into SELF_CHECK_LEVELS)."""
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level < len(SELF_CHECK_LEVELS):
            raise InvalidRequestError(f"level must be 0..{len(SELF_CHECK_LEVELS) - 1}", "level")
        item_id = str(item_id)
        if not item_id or len(item_id) > 80:
            raise InvalidRequestError("a checklist item id is 1 to 80 characters", "item")
        pid = self.profile_id(profile)
        self.db.execute("INSERT OR REPLACE INTO self_checks (profile_id, item_id, level, at) "
                        "VALUES (?, ?, ?, ?)", (pid, item_id, level, (now or _now()).isoformat()))
        self.db.commit()

    def self_checks(self, profile: str) -> dict[str, int]:
        """{item id: level} of every item the profile has rated."""
        pid = self.profile_id(profile)
        rows = self.db.execute("SELECT item_id, level FROM self_checks WHERE profile_id=?", (pid,))
        return {r["item_id"]: int(r["level"]) for r in rows}

    # export / import --------------------------------------------------------------------------
    def export_json(self, profile: str) -> dict[str, Any]:
        pid = self.profile_id(profile, create=False)
        cards = {r["exercise_id"]: json.loads(r["card"])
                 for r in self.db.execute("SELECT exercise_id, card FROM cards WHERE profile_id=?", (pid,))}
        return {"format": "nanoserve-workbook-progress", "version": 1, "profile": profile,
                "best_streak": self._best_streak(pid), "attempts": self.attempts(profile), "cards": cards}

    def import_json(self, data: dict[str, Any], profile: str | None = None) -> str:
        """Load an export; replaces that profile's history. Returns the profile name used."""
        if not isinstance(data, dict) or data.get("format") != "nanoserve-workbook-progress":
            raise InvalidRequestError("not a nanoserve workbook progress export", "file")
        name = profile or str(data.get("profile") or "")
        pid = self.profile_id(name)
        try:
            attempts = [(pid, str(a["exercise_id"]), int(a["variant"]), str(a["answer"]),
                         int(bool(a["correct"])), str(a["at"]), date.fromisoformat(str(a["day"])).isoformat())
                        for a in data["attempts"]]
            cards = [(pid, str(e), json.dumps(c), Card.from_dict(c).due.isoformat())
                     for e, c in dict(data["cards"]).items()]
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidRequestError(f"progress export is malformed: {e}", "file") from None
        self.db.execute("DELETE FROM attempts WHERE profile_id=?", (pid,))
        self.db.execute("DELETE FROM cards WHERE profile_id=?", (pid,))
        self.db.executemany("INSERT INTO attempts (profile_id, exercise_id, variant, answer, correct, at, "
                            "day) VALUES (?, ?, ?, ?, ?, ?, ?)", attempts)
        self.db.executemany("INSERT INTO cards (profile_id, exercise_id, card, due) VALUES (?, ?, ?, ?)",
                            cards)
        best = int(data.get("best_streak") or 0)
        self.db.execute("UPDATE profiles SET best_streak=? WHERE id=?", (best, pid))
        self.db.commit()
        return name
