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
        self.scheduler = scheduler or Scheduler(enable_fuzzing=False)

    # profiles ---------------------------------------------------------------------------------
    def profile_id(self, name: str, create: bool = True) -> int:
        name = (name or "").strip()
        if not name or len(name) > 40 or not name.isprintable():
            raise InvalidRequestError("a profile name is 1 to 40 printable characters", "profile")
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

    # export / import --------------------------------------------------------------------------
    def export_json(self, profile: str) -> dict[str, Any]:
        pid = self.profile_id(profile, create=False)
        cards = {r["exercise_id"]: json.loads(r["card"])
                 for r in self.db.execute("SELECT exercise_id, card FROM cards WHERE profile_id=?", (pid,))}
        return {"format": "nanoserve-workbook-progress", "version": 1, "profile": profile,
                "best_streak": self._best_streak(pid), "attempts": self.attempts(profile), "cards": cards}

    def import_json(self, data: dict[str, Any], profile: str | None = None) -> str:
        """Load an export; replaces that profile's history. Returns the profile name used.

        The whole export is validated first (InvalidRequestError naming the bad field, nothing
        changed), then applied in one transaction."""
        return self.apply_import(self.plan_import(data, profile))

    def plan_import(self, data: Any, profile: str | None = None) -> ImportPlan:
        """Validate a whole export without touching the database; the plan says what it would replace."""
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise InvalidRequestError("not a nanoserve workbook progress export", "file")
        if data.get("version", 1) != 1 or isinstance(data.get("version"), bool):
            raise InvalidRequestError("version: only version 1 exports can be imported", "version")
        name = (profile or _field(data, "profile", str, "profile")).strip()
        if not 1 <= len(name) <= 40:
            raise InvalidRequestError("profile: a profile name is 1 to 40 characters", "profile")
        best = data.get("best_streak", 0)
        if isinstance(best, bool) or not isinstance(best, int) or not 0 <= best <= MAX_IMPORT_STREAK:
            raise InvalidRequestError(f"best_streak must be an integer from 0 to {MAX_IMPORT_STREAK}",
                                      "best_streak")
        raw_attempts = _field(data, "attempts", list, "attempts")
        raw_cards = _field(data, "cards", dict, "cards")
        if len(raw_attempts) > MAX_IMPORT_ROWS or len(raw_cards) > MAX_IMPORT_ROWS:
            raise InvalidRequestError(f"an export holds at most {MAX_IMPORT_ROWS:,} attempts and cards",
                                      "attempts")
        attempts = [_valid_attempt(a, f"attempts[{i}]") for i, a in enumerate(raw_attempts)]
        cards = [_valid_card(e, c, f"cards[{e!r}]") for e, c in raw_cards.items()]
        row = self.db.execute("SELECT id FROM profiles WHERE name = ?", (name,)).fetchone()
        replaces = {"attempts": 0, "cards": 0}
        if row:
            for table in replaces:
                replaces[table] = self.db.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE profile_id=?", (row["id"],)).fetchone()[0]
        return ImportPlan(name, best, attempts, cards, replaces)

    def apply_import(self, plan: ImportPlan) -> str:
        """Replace the plan's profile history with the plan's, in one transaction (all or nothing)."""
        pid = self.profile_id(plan.profile)
        with self.db:        # commits at the end, rolls back on any error: the old history survives
            self.db.execute("DELETE FROM attempts WHERE profile_id=?", (pid,))
            self.db.execute("DELETE FROM cards WHERE profile_id=?", (pid,))
            self.db.executemany("INSERT INTO attempts (profile_id, exercise_id, variant, answer, correct, "
                                "at, day) VALUES (?, ?, ?, ?, ?, ?, ?)", [(pid, *a) for a in plan.attempts])
            self.db.executemany("INSERT INTO cards (profile_id, exercise_id, card, due) VALUES (?, ?, ?, ?)",
                                [(pid, *c) for c in plan.cards])
            self.db.execute("UPDATE profiles SET best_streak=? WHERE id=?", (plan.best_streak, pid))
        return plan.profile


EXPORT_FORMAT = "nanoserve-workbook-progress"
MAX_IMPORT_ROWS = 200_000
MAX_IMPORT_STREAK = 100_000
MAX_IMPORT_VARIANT = 1_000_000


@dataclass(frozen=True)
class ImportPlan:
    """A validated export, ready to apply: rows without the profile id, and what it would replace."""
    profile: str
    best_streak: int
    attempts: list[tuple[str, int, str, int, str, str]]   # exercise_id, variant, answer, correct, at, day
    cards: list[tuple[str, str, str]]                     # exercise_id, card JSON, due
    replaces: dict[str, int]                              # rows of the profile's current history

    def preview(self) -> dict[str, Any]:
        return {"profile": self.profile, "replaces": dict(self.replaces),
                "with": {"attempts": len(self.attempts), "cards": len(self.cards)},
                "best_streak": self.best_streak}


def _field(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidRequestError(f"{where} must be a {kind.__name__}", where)
    return value


def _valid_attempt(a: Any, where: str) -> tuple[str, int, str, int, str, str]:
    if not isinstance(a, dict):
        raise InvalidRequestError(f"{where} must be an object", where)
    exercise_id = _field(a, "exercise_id", str, f"{where}.exercise_id")
    if not 1 <= len(exercise_id) <= 200:
        raise InvalidRequestError(f"{where}.exercise_id must be 1 to 200 characters", f"{where}.exercise_id")
    variant = a.get("variant")
    if isinstance(variant, bool) or not isinstance(variant, int) or not 0 <= variant <= MAX_IMPORT_VARIANT:
        raise InvalidRequestError(f"{where}.variant must be an integer from 0 to {MAX_IMPORT_VARIANT}",
                                  f"{where}.variant")
    answer = _field(a, "answer", str, f"{where}.answer")
    correct = a.get("correct")
    if correct not in (True, False, 0, 1) or isinstance(correct, float):
        raise InvalidRequestError(f"{where}.correct must be true or false", f"{where}.correct")
    at = _field(a, "at", str, f"{where}.at")
    day = _field(a, "day", str, f"{where}.day")
    try:
        datetime.fromisoformat(at)
    except ValueError:
        raise InvalidRequestError(f"{where}.at must be an ISO date and time", f"{where}.at") from None
    try:
        day = date.fromisoformat(day).isoformat()
    except ValueError:
        raise InvalidRequestError(f"{where}.day must be an ISO date (YYYY-MM-DD)", f"{where}.day") from None
    return exercise_id, variant, answer[:2000], int(bool(correct)), at, day


def _valid_card(exercise_id: str, card: Any, where: str) -> tuple[str, str, str]:
    if not 1 <= len(exercise_id) <= 200 or not isinstance(card, dict):
        raise InvalidRequestError(f"{where} must be an FSRS card object", where)
    try:
        due = Card.from_dict(card).due.isoformat()
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise InvalidRequestError(f"{where} is not an FSRS card: {e}", where) from None
    return exercise_id, json.dumps(card), due
