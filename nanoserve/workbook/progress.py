"""A learner's progress in SQLite: profiles, attempts, mastery, day streaks and a spaced-review queue.

Review scheduling is the `fsrs` package's (FSRS v6), not ours: each exercise is one FSRS card per
profile, reviewed once per presentation of a variant (ratings: see the teaching rules below; right
after a miss → Hard). Mastery: an exercise is *mastered* once answered right unaided; a chapter's or a
skill's mastery is the fraction of its exercises mastered. A day counts for the streak when the
profile made at least one attempt that (local) day.

Teaching rules (issue #18): hints and reveals are *aids*, recorded per (profile, exercise, variant) in
`aids` and copied onto each later attempt (`attempts.hints`, `attempts.revealed`). Revealing the
answer forfeits the credit: a correct attempt on a revealed variant is kept in the log but is not
mastery, so mastery needs an unaided correct answer (hints allowed) on a fresh variant; an exercise
with one fixed answer (trace, debug, build) counts again once `forget_after` has passed since the
reveal. FSRS is graded by what happened: the reveal itself is Again (unless this variant was already
attempted and rated), a wrong first try Again, a right first try with hints Hard, a right first try
unaided Good, and Easy when it was also fast (within EASY_WITHIN_S of opening the exercise).
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
CREATE TABLE IF NOT EXISTS aids (
    profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE, exercise_id TEXT NOT NULL,
    variant INTEGER NOT NULL, hints INTEGER NOT NULL DEFAULT 0, revealed_at TEXT,
    PRIMARY KEY (profile_id, exercise_id, variant));
"""
# Columns added after the first release; `_migrate` adds them to older databases in place.
ATTEMPT_COLUMNS = {"hints": "INTEGER NOT NULL DEFAULT 0", "revealed": "INTEGER NOT NULL DEFAULT 0"}
EASY_WITHIN_S = 60.0          # a first, unaided, right answer this fast is rated Easy
_UPSERT = "ON CONFLICT (profile_id, exercise_id, variant) DO UPDATE SET"
FIXED_REVEAL_FORGET_S = 86400.0   # one-answer exercises: a reveal stops counting against you after a day


@dataclass(frozen=True)
class AttemptOutcome:
    first_try: bool                 # first attempt on this variant
    rating: str | None              # the FSRS rating given ("Good", "Hard", "Again"), None when not reviewed
    due: datetime | None            # next review of this exercise
    newly_mastered: bool
    streak: int
    best_streak: int
    hints: int = 0                  # hints seen on this variant before the attempt
    revealed: bool = False          # the answer was revealed first: no mastery credit


def fsrs_rating(correct: bool, first_try: bool, missed_before: bool, hints: int, revealed: bool,
                elapsed_s: float | None) -> Rating | None:
    """The FSRS rating one attempt earns, or None when this variant was already rated."""
    if revealed:
        return None               # the reveal was rated Again already
    if first_try:
        if not correct:
            return Rating.Again
        if hints:
            return Rating.Hard
        if elapsed_s is not None and 0 <= elapsed_s <= EASY_WITHIN_S:
            return Rating.Easy
        return Rating.Good
    if correct and missed_before:
        return Rating.Hard        # got there after a miss on this variant
    return None


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
        self._migrate()
        self.scheduler = scheduler or Scheduler(enable_fuzzing=False)

    def _migrate(self) -> None:
        have = {r["name"] for r in self.db.execute("PRAGMA table_info(attempts)")}
        for col, decl in ATTEMPT_COLUMNS.items():
            if col not in have:
                self.db.execute(f"ALTER TABLE attempts ADD COLUMN {col} {decl}")
        self.db.commit()

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
        elapsed_s: float | None = None,
        forget_after_s: float | None = None,
    ) -> AttemptOutcome:
        """Store one graded attempt, review the exercise's FSRS card, update the streak.

        The hints and reveal recorded for this variant (see `use_hint`, `reveal`) go onto the attempt;
        `elapsed_s` is the time since the exercise was opened (Easy needs it); `forget_after_s`: after
        this long a reveal no longer forfeits (None: never, the rule for exercises with variants).
        """
        now = now or _now()
        day = (local_day or now.astimezone().date()).isoformat()
        pid = self.profile_id(profile)
        hints, revealed = self.aids(profile, exercise_id, variant, now, forget_after_s)
        was_mastered = self.is_mastered(profile, exercise_id)
        prior = self.db.execute(
            "SELECT correct FROM attempts WHERE profile_id=? AND exercise_id=? AND variant=? ORDER BY id",
            (pid, exercise_id, variant)).fetchall()
        self.db.execute(
            "INSERT INTO attempts (profile_id, exercise_id, variant, answer, correct, at, day, hints, "
            "revealed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (pid, exercise_id, int(variant), str(answer)[:2000], int(bool(correct)), now.isoformat(), day,
             hints, int(revealed)))
        rating = fsrs_rating(correct, first_try=not prior, missed_before=bool(prior) and not any(
            r["correct"] for r in prior), hints=hints, revealed=revealed, elapsed_s=elapsed_s)
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
            newly_mastered=bool(correct) and not revealed and not was_mastered, streak=streak,
            best_streak=best, hints=hints, revealed=revealed)

    # aids: hints and reveals -----------------------------------------------------------------------
    def aids(self, profile: str, exercise_id: str, variant: int, now: datetime | None = None,
             forget_after_s: float | None = None) -> tuple[int, bool]:
        """(hints seen, answer revealed and still forfeiting) for one variant."""
        pid = self.profile_id(profile)
        row = self.db.execute("SELECT hints, revealed_at FROM aids WHERE profile_id=? AND exercise_id=? "
                              "AND variant=?", (pid, exercise_id, int(variant))).fetchone()
        if not row:
            return 0, False
        revealed = row["revealed_at"] is not None
        if revealed and forget_after_s is not None:
            age = ((now or _now()) - datetime.fromisoformat(row["revealed_at"])).total_seconds()
            revealed = age < forget_after_s
        return int(row["hints"]), revealed

    def use_hint(self, profile: str, exercise_id: str, variant: int, n: int) -> int:
        """Record that hints 1..n of this variant were shown; returns the number shown so far."""
        pid = self.profile_id(profile)
        self.db.execute("INSERT INTO aids (profile_id, exercise_id, variant, hints) VALUES (?, ?, ?, ?) "
                        f"{_UPSERT} hints = max(hints, excluded.hints)",
                        (pid, exercise_id, int(variant), int(n)))
        self.db.commit()
        return self.aids(profile, exercise_id, variant)[0]

    def reveal(self, profile: str, exercise_id: str, variant: int, now: datetime | None = None) -> str | None:
        """Record a reveal of this variant's answer; rate the card Again unless this variant was already
        attempted (then its first attempt was rated). Returns the rating given, if any."""
        now = now or _now()
        pid = self.profile_id(profile)
        tried = self.db.execute("SELECT 1 FROM attempts WHERE profile_id=? AND exercise_id=? AND variant=? "
                                "LIMIT 1", (pid, exercise_id, int(variant))).fetchone()
        self.db.execute("INSERT INTO aids (profile_id, exercise_id, variant, revealed_at) "
                        f"VALUES (?, ?, ?, ?) {_UPSERT} revealed_at = excluded.revealed_at",
                        (pid, exercise_id, int(variant), now.isoformat()))
        rating = None
        if not tried:
            card, _ = self.scheduler.review_card(self._card(pid, exercise_id), Rating.Again,
                                                 review_datetime=now)
            self.db.execute(
                "INSERT OR REPLACE INTO cards (profile_id, exercise_id, card, due) VALUES (?, ?, ?, ?)",
                (pid, exercise_id, json.dumps(card.to_dict()), card.due.isoformat()))
            rating = Rating.Again.name
        self.db.commit()
        return rating

    def _card(self, pid: int, exercise_id: str) -> Card:
        row = self.db.execute("SELECT card FROM cards WHERE profile_id=? AND exercise_id=?",
                              (pid, exercise_id)).fetchone()
        return Card.from_dict(json.loads(row["card"])) if row else Card()

    def attempts(self, profile: str, exercise_id: str | None = None) -> list[dict[str, Any]]:
        pid = self.profile_id(profile)
        q = ("SELECT exercise_id, variant, answer, correct, at, day, hints, revealed FROM attempts "
             "WHERE profile_id=?")
        args: tuple = (pid,)
        if exercise_id:
            q += " AND exercise_id=?"
            args += (exercise_id,)
        return [dict(r) for r in self.db.execute(q + " ORDER BY id", args)]

    # mastery ----------------------------------------------------------------------------------
    def mastered(self, profile: str) -> set[str]:
        pid = self.profile_id(profile)
        rows = self.db.execute(
            "SELECT DISTINCT exercise_id FROM attempts WHERE profile_id=? AND correct=1 AND revealed=0",
            (pid,))
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
