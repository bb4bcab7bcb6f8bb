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
from nanoserve.workbook.bank import MAX_VARIANT

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
        self.db.executescript(SELF_CHECK_SCHEMA)
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
        aids = [dict(r) for r in self.db.execute(
            "SELECT exercise_id, variant, hints, revealed_at FROM aids WHERE profile_id=?", (pid,))]
        return {"format": "nanoserve-workbook-progress", "version": 1, "profile": profile,
                "best_streak": self._best_streak(pid), "attempts": self.attempts(profile), "cards": cards,
                "aids": aids, "self_checks": self.self_checks(profile)}

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
        raw_aids = data.get("aids", [])      # absent from exports made before hints and reveals existed
        if not isinstance(raw_aids, list) or len(raw_aids) > MAX_IMPORT_ROWS:
            raise InvalidRequestError(f"aids must be a list of at most {MAX_IMPORT_ROWS:,} entries", "aids")
        aids = [_valid_aid(a, f"aids[{i}]") for i, a in enumerate(raw_aids)]
        raw_checks = data.get("self_checks", {})      # absent from exports made before the checklist
        if not isinstance(raw_checks, dict) or len(raw_checks) > 1000:
            raise InvalidRequestError("self_checks must be an object of at most 1,000 items", "self_checks")
        checks = []
        for item, level in raw_checks.items():
            where = f"self_checks[{item[:40]!r}]"
            if not 1 <= len(item) <= 80 or isinstance(level, bool) or not isinstance(level, int) \
                    or not 0 <= level < len(SELF_CHECK_LEVELS):
                raise InvalidRequestError(f"{where} must be a level from 0 to {len(SELF_CHECK_LEVELS) - 1}",
                                          "self_checks")
            checks.append((item, level))
        row = self.db.execute("SELECT id FROM profiles WHERE name = ?", (name,)).fetchone()
        replaces = {"attempts": 0, "cards": 0, "aids": 0, "self_checks": 0}
        if row:
            for table in replaces:
                replaces[table] = self.db.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE profile_id=?", (row["id"],)).fetchone()[0]
        return ImportPlan(name, best, attempts, cards, replaces, aids, checks)

    def apply_import(self, plan: ImportPlan) -> str:
        """Replace the plan's profile history with the plan's, in one transaction (all or nothing)."""
        pid = self.profile_id(plan.profile)
        with self.db:        # commits at the end, rolls back on any error: the old history survives
            self.db.execute("DELETE FROM attempts WHERE profile_id=?", (pid,))
            self.db.execute("DELETE FROM cards WHERE profile_id=?", (pid,))
            self.db.execute("DELETE FROM aids WHERE profile_id=?", (pid,))
            self.db.execute("DELETE FROM self_checks WHERE profile_id=?", (pid,))
            now = _now().isoformat()
            self.db.executemany("INSERT INTO self_checks (profile_id, item_id, level, at) "
                                "VALUES (?, ?, ?, ?)",
                                [(pid, *check, now) for check in plan.self_checks])
            self.db.executemany("INSERT INTO attempts (profile_id, exercise_id, variant, answer, correct, "
                                "at, day, hints, revealed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                [(pid, *a) for a in plan.attempts])
            self.db.executemany("INSERT INTO aids (profile_id, exercise_id, variant, hints, revealed_at) "
                                "VALUES (?, ?, ?, ?, ?)", [(pid, *a) for a in plan.aids])
            self.db.executemany("INSERT INTO cards (profile_id, exercise_id, card, due) VALUES (?, ?, ?, ?)",
                                [(pid, *c) for c in plan.cards])
            self.db.execute("UPDATE profiles SET best_streak=? WHERE id=?", (plan.best_streak, pid))
        return plan.profile


EXPORT_FORMAT = "nanoserve-workbook-progress"
MAX_IMPORT_ROWS = 200_000
MAX_IMPORT_STREAK = 100_000
MAX_IMPORT_VARIANT = MAX_VARIANT


@dataclass(frozen=True)
class ImportPlan:
    """A validated export, ready to apply: rows without the profile id, and what it would replace."""
    profile: str
    best_streak: int
    # exercise_id, variant, answer, correct, at, day, hints, revealed
    attempts: list[tuple[str, int, str, int, str, str, int, int]]
    cards: list[tuple[str, str, str]]                     # exercise_id, card JSON, due
    replaces: dict[str, int]                              # rows of the profile's current history
    aids: list[tuple[str, int, int, str | None]] = ()     # exercise_id, variant, hints, revealed_at
    self_checks: list[tuple[str, int]] = ()               # checklist item id, level

    def preview(self) -> dict[str, Any]:
        return {"profile": self.profile, "replaces": dict(self.replaces),
                "with": {"attempts": len(self.attempts), "cards": len(self.cards), "aids": len(self.aids)},
                "best_streak": self.best_streak}


def _field(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidRequestError(f"{where} must be a {kind.__name__}", where)
    return value


def _valid_count(a: dict[str, Any], key: str, where: str, default: int = 0, top: int = 1000) -> int:
    value = a.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise InvalidRequestError(f"{where}.{key} must be an integer from 0 to {top}", f"{where}.{key}")
    return value


def _valid_aid(a: Any, where: str) -> tuple[str, int, int, str | None]:
    """An `aids` row: hints seen and when the answer was revealed, for one variant."""
    if not isinstance(a, dict):
        raise InvalidRequestError(f"{where} must be an object", where)
    exercise_id = _field(a, "exercise_id", str, f"{where}.exercise_id")
    if not 1 <= len(exercise_id) <= 200:
        raise InvalidRequestError(f"{where}.exercise_id must be 1 to 200 characters", f"{where}.exercise_id")
    variant = _valid_count(a, "variant", where, default=-1, top=MAX_IMPORT_VARIANT)
    hints = _valid_count(a, "hints", where)
    revealed_at = a.get("revealed_at")
    if revealed_at is not None:
        try:
            when = _field(a, "revealed_at", str, f"{where}.revealed_at")
            revealed_at = datetime.fromisoformat(when).isoformat()
        except ValueError:
            raise InvalidRequestError(f"{where}.revealed_at must be an ISO date and time or null",
                                      f"{where}.revealed_at") from None
    return exercise_id, variant, hints, revealed_at


def _valid_attempt(a: Any, where: str) -> tuple[str, int, str, int, str, str, int, int]:
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
    hints = _valid_count(a, "hints", where)         # older exports have neither: unaided, not revealed
    revealed = a.get("revealed", 0)
    if revealed not in (True, False, 0, 1) or isinstance(revealed, float):
        raise InvalidRequestError(f"{where}.revealed must be true or false", f"{where}.revealed")
    return exercise_id, variant, answer[:2000], int(bool(correct)), at, day, hints, int(bool(revealed))


def _valid_card(exercise_id: str, card: Any, where: str) -> tuple[str, str, str]:
    if not 1 <= len(exercise_id) <= 200 or not isinstance(card, dict):
        raise InvalidRequestError(f"{where} must be an FSRS card object", where)
    try:
        due = Card.from_dict(card).due.isoformat()
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise InvalidRequestError(f"{where} is not an FSRS card: {e}", where) from None
    return exercise_id, json.dumps(card), due
