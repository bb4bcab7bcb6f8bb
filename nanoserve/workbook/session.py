"""Review sessions: a queue of cards shown one at a time, then a summary.

A card is one exercise at one variant. Where the exercise has variant ranges the card draws numbers
the profile has never been shown (a *fresh* card); an exercise never attempted is *new*; anything
else — trace, debug, build and design items without variants — comes back as the same item, and the
page says so (a *repeat*), because re-reading an item you remember is not the same as re-deriving it.

Queues: the review queue is every due FSRS card, most overdue first; practising a checklist item
draws that item's due exercises first, then its weak ones (last attempt wrong, then never tried), and
if every one is solved and not due, the least recently practised. A queue travels in the URL
(`encode`/`decode`), so a session needs no server state; its summary is read back from the attempts
made since it started.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nanoserve.errors import InvalidRequestError
from nanoserve.workbook.bank import Bank, Exercise
from nanoserve.workbook.progress import Progress

KINDS = {"n": "new", "f": "fresh", "r": "repeat"}
MAX_CARDS = 30


@dataclass(frozen=True)
class Card:
    exercise_id: str
    variant: int
    kind: str                       # "new", "fresh" or "repeat" (see the module docstring)


def next_card(e: Exercise, attempts: list[dict[str, Any]]) -> Card:
    """The card to show for `e` given the profile's attempts at it (any exercises; others are ignored)."""
    seen = {int(a["variant"]) for a in attempts if a["exercise_id"] == e.id}
    if not seen:
        return Card(e.id, 0, "new")
    variant = max(seen) + 1
    if e.variants:
        return Card(e.id, variant, "fresh")
    # Design items reshuffle by variant, so a new number still changes the order; the steps are the same.
    return Card(e.id, variant if e.type == "design" else 0, "repeat")


def review_queue(progress: Progress, bank: Bank, profile: str, now: datetime | None = None,
                 limit: int = 20) -> list[Card]:
    """Every due exercise as a card, most overdue first, at most `limit`."""
    attempts = progress.attempts(profile)
    due = [i for i, _ in progress.due_reviews(profile, now) if i in bank.by_id]
    return [next_card(bank.by_id[i], attempts) for i in due[:limit]]


def practice_queue(progress: Progress, bank: Bank, profile: str, exercise_ids: list[str],
                   now: datetime | None = None, limit: int = 6) -> list[Card]:
    """Cards for a set of exercises (a checklist item): due ones, then weak ones, never empty."""
    ids = [i for i in exercise_ids if i in bank.by_id]
    attempts = progress.attempts(profile)
    due = [i for i, _ in progress.due_reviews(profile, now) if i in ids]
    last: dict[str, dict[str, Any]] = {}
    for a in attempts:
        last[a["exercise_id"]] = a          # attempts come oldest first, so the last one wins
    missed = [i for i in ids if i in last and not last[i]["correct"] and i not in due]
    untried = [i for i in ids if i not in last]
    picked = due + missed + untried
    if not picked:                          # all solved and not due: the longest unpractised first
        picked = sorted(ids, key=lambda i: last[i]["at"])
    return [next_card(bank.by_id[i], attempts) for i in picked[:limit]]


def encode(cards: list[Card]) -> str:
    return ",".join(f"{c.exercise_id}~{c.variant}~{c.kind[0]}" for c in cards)


def decode(text: str, bank: Bank) -> list[Card]:
    """The cards of an encoded queue; a malformed or unknown entry is a 400, not a 500."""
    cards = []
    for part in (text or "").split(",")[:MAX_CARDS]:
        if not part:
            continue
        try:
            eid, variant, kind = part.split("~")
            v = int(variant)
        except ValueError:
            raise InvalidRequestError(f"bad review card {part[:40]!r}", "q") from None
        if eid not in bank.by_id or kind not in KINDS or not 0 <= v < 10**6:
            raise InvalidRequestError(f"bad review card {part[:40]!r}", "q")
        cards.append(Card(eid, v, KINDS[kind]))
    return cards


@dataclass(frozen=True)
class CardResult:
    card: Card
    outcome: str                    # "right" (first try), "missed" (first try wrong) or "skipped"
    tries: int


def summarize(progress: Progress, profile: str, cards: list[Card], started: datetime) -> list[CardResult]:
    """How each card of a session went, from the attempts made since `started`."""
    since = [a for a in progress.attempts(profile) if datetime.fromisoformat(a["at"]) >= started]
    out = []
    for c in cards:
        mine = [a for a in since if a["exercise_id"] == c.exercise_id and int(a["variant"]) == c.variant]
        outcome = "skipped" if not mine else ("right" if mine[0]["correct"] else "missed")
        out.append(CardResult(c, outcome, len(mine)))
    return out


def started_at(epoch_s: int | str | None) -> datetime:
    try:
        return datetime.fromtimestamp(int(epoch_s or 0), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise InvalidRequestError("bad session start time", "t") from None
