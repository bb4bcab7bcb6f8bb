"""What the workbook teaches with besides grading: stepped hints and the on-demand reveal.

Hints come in order, one per click: the exercise's own hints first, then (derive exercises) one per
planner step — what to compute and its formula, without the numbers. The reveal is everything the
learner may see once the answer is earned or forfeited (answer, derivation, explanation, reference
code); it is served only by the reveal endpoint or with a right answer, never with the page.
"""

from __future__ import annotations

from typing import Any

from nanoserve.workbook.bank import BankError, Exercise, render, solve
from nanoserve.workbook.checker import fixed_code
from nanoserve.workbook.grading import _fmt


def hints(e: Exercise, variant: int = 0) -> list[str]:
    """The hints in the order they are shown."""
    out = list(render(e, variant).hints)     # the exercise's own, in this variant's numbers
    if e.type == "derive" and e.steps:
        try:
            steps = solve(e, variant).steps
        except BankError:
            steps = []
        for i, r in enumerate(steps, 1):
            first = "First" if i == 1 else "Then"
            out.append(f"{first} compute {r.name.replace('_', ' ')} ({r.unit}): {r.formula}")
    return out


def reveal(e: Exercise, variant: int = 0) -> dict[str, Any]:
    """The answer and its working for one variant, as the reveal endpoint sends it."""
    r = render(e, variant)
    out: dict[str, Any] = {"expected": "", "derivation": "", "explanation": r.explanation}
    if e.type == "derive":
        sol = solve(e, variant)
        out.update(expected=f"{_fmt(sol.value)} {e.unit}", derivation=sol.explain())
    elif e.type == "trace":
        out.update(expected=r.options[e.correct],
                   derivation=solve(e, variant).explain() if e.steps else "")
    elif e.type == "build":
        out.update(expected="a reference solution:", derivation=e.solution)
    elif e.type == "debug":
        out.update(expected=f"line {e.bug_line} → {e.fix.strip()}", derivation=fixed_code(e))
    elif e.type == "design":
        out.update(expected=" → ".join(e.order))
    return out
