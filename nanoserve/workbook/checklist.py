"""The skill checklist: "can you do this from scratch?" items, each tied to the bank's exercises.

The items live in checklist.yaml (our own list, in the spirit of the JAX Scaling Book's). An item names
bank skills and, optionally, single exercises; its exercises are the union, in bank order. The learner's
self-check per item is stored by `Progress.set_self_check`; practising an item draws its due and weak
exercises (`session.practice_queue`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from nanoserve.workbook.bank import Bank, BankError, default_bank

CHECKLIST_PATH = Path(__file__).with_name("checklist.yaml")


@dataclass(frozen=True)
class ChecklistItem:
    id: str
    section: str
    ask: str
    skills: tuple[str, ...]
    exercise_ids: tuple[str, ...]     # every exercise that practises the item, in bank order


def load_checklist(bank: Bank, path: Path | str = CHECKLIST_PATH) -> list[ChecklistItem]:
    """The items of `path`, checked against `bank`: unknown skills or exercises are a BankError."""
    doc: dict[str, Any] = yaml.safe_load(Path(path).read_text()) or {}
    skills = bank.skills()
    order = {e.id: i for i, e in enumerate(bank.exercises)}
    items: list[ChecklistItem] = []
    for raw in doc.get("items", []):
        iid = str(raw.get("id", ""))
        if not iid or not raw.get("ask") or not raw.get("section"):
            raise BankError(f"checklist item {iid!r} needs an id, a section and an ask")
        ids: set[str] = set()
        for s in raw.get("skills", []):
            if s not in skills:
                raise BankError(f"checklist item {iid}: no exercise has the skill {s!r}")
            ids.update(skills[s])
        for x in raw.get("exercises", []):
            if str(x) not in bank.by_id:
                raise BankError(f"checklist item {iid}: no exercise {x!r}")
            ids.add(str(x))
        if not ids:
            raise BankError(f"checklist item {iid}: names no exercises")
        items.append(ChecklistItem(iid, str(raw["section"]), str(raw["ask"]), tuple(raw.get("skills", [])),
                                   tuple(sorted(ids, key=order.__getitem__))))
    if len({i.id for i in items}) != len(items):
        raise BankError("checklist item ids must be unique")
    return items


@cache
def default_checklist() -> list[ChecklistItem]:
    return load_checklist(default_bank())
