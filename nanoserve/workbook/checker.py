"""Grade one attempt at any exercise type; shared by the web app and the terminal practice.

Bad input (a non-number, a unit slip, a build answer that loops or imports `os`) comes back as a
`Verdict` with a clear message — never as an exception — so the session and the server carry on.
A derive answer that could not be parsed is *not* an attempt (nothing is recorded); a wrong number is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from nanoserve.workbook.bank import Exercise, build_cases, render, solve
from nanoserve.workbook.grading import _fmt, grade_number
from nanoserve.workbook.sandbox import grade_function
from nanoserve.workbook.slips import name_slips


@dataclass
class Verdict:
    correct: bool
    message: str
    counts: bool = True                     # False: unparseable input, not recorded as an attempt
    answer_text: str = ""                   # what the learner submitted, for the attempt log
    expected: str = ""                      # the right answer, shown after the attempt
    derivation: str = ""                    # the planner's derivation (derive; trace with steps)
    explanation: str = ""
    details: list[dict[str, Any]] = field(default_factory=list)   # build: per-case results

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def design_shuffle(e: Exercise, variant: int) -> list[str]:
    """The design steps in a scrambled order (never the solved one), fixed per variant."""
    steps = list(e.order)
    rng = random.Random(f"{e.id}:design:{variant}")
    for _ in range(20):
        rng.shuffle(steps)
        if steps != e.order:
            break
    return steps


def trace_order(e: Exercise, variant: int, shuffle: int) -> list[int]:
    """Display position → option index: the options in an order fixed by (variant, attempt seed)."""
    order = list(range(len(e.options)))
    random.Random(f"{e.id}:trace:{variant}:{shuffle}").shuffle(order)
    return order


def fixed_code(e: Exercise) -> str:
    """A debug exercise's code with its bug fixed (what the tests accept)."""
    lines = list(e.code)
    lines[e.bug_line - 1] = e.fix.rstrip("\n")
    return "\n".join(lines) + "\n"


def debug_function(e: Exercise) -> str:
    """The function a debug exercise's tests call: the first `def` in its code."""
    for line in e.code:
        if line.lstrip().startswith("def "):
            return line.split("def ", 1)[1].split("(", 1)[0].strip()
    return ""


def check(e: Exercise, variant: int, payload: dict[str, Any]) -> Verdict:
    if e.type == "derive":
        return _derive(e, variant, str(payload.get("answer", "")))
    if e.type == "trace":
        return _trace(e, variant, payload.get("choice"), payload.get("shuffle"))
    if e.type == "build":
        return _build(e, str(payload.get("code", "")))
    if e.type == "debug":
        if "code" in payload and e.tests:
            return _debug_fix(e, str(payload.get("code", "")))
        return _debug(e, payload.get("line"))
    return _design(e, payload.get("order"))


def _derive(e: Exercise, variant: int, answer: str) -> Verdict:
    sol = solve(e, variant)
    g = grade_number(answer, sol.value, e.unit, e.tolerance, integer=e.integer)
    shown = f"{_fmt(sol.value)} {e.unit}"
    if g.given is None or not g.counts:
        return Verdict(False, g.message, counts=False, answer_text=answer)
    message = g.message
    r = render(e, variant)
    if not g.correct:
        slips = name_slips(e, sol, r.params, g.given)
        if slips:
            message = f"Not quite: {_fmt(g.given)} {e.unit}. Likely slip: " + "; or ".join(slips) + "."
    return Verdict(g.correct, message, True, answer, shown, sol.explain(), r.explanation)


def _trace(e: Exercise, variant: int, choice: Any, shuffle: Any = None) -> Verdict:
    r = render(e, variant)
    try:
        shown = int(choice)
        if not 0 <= shown < len(r.options):
            raise ValueError
    except (TypeError, ValueError):
        msg = f"pick one of the {len(r.options)} options"
        return Verdict(False, msg, counts=False, answer_text=str(choice))
    # With an attempt seed the page showed the options shuffled: map the picked position back.
    try:
        idx = trace_order(e, variant, int(shuffle))[shown] if shuffle is not None else shown
    except (TypeError, ValueError, OverflowError):
        idx = shown
    ok = idx == e.correct
    derivation = solve(e, variant).explain() if e.steps else ""
    why = e.why[idx] if idx < len(e.why) and e.why[idx] else ""
    msg = "Correct." if ok else f"Not this one: “{r.options[idx]}”" + (f" — {why}" if why else " is wrong.")
    return Verdict(ok, msg, True, str(idx), f"{chr(65 + e.correct)}. {r.options[e.correct]}", derivation,
                   r.explanation)


def _build(e: Exercise, code: str) -> Verdict:
    if not code.strip():
        return Verdict(False, "write your function first", counts=False)
    res = grade_function(code, e.function, build_cases(e))
    details = [{"args": c.args, "expected": c.expected, "got": c.got, "passed": c.passed, "error": c.error}
               for c in res.cases]
    # A refused or syntactically broken submission is feedback, not a graded attempt.
    return Verdict(res.ok, res.message, counts=not res.refused, answer_text=code, expected=e.solution,
                   explanation=e.explanation, details=details)


def _debug(e: Exercise, line: Any) -> Verdict:
    try:
        n = int(line)
        if not 1 <= n <= len(e.code):
            raise ValueError
    except (TypeError, ValueError):
        return Verdict(False, f"click one of the {len(e.code)} lines", counts=False, answer_text=str(line))
    ok = n == e.bug_line
    msg = "Correct: that is the buggy line." if ok else f"Line {n} is fine; look again."
    return Verdict(ok, msg, True, str(n), f"line {e.bug_line} → {e.fix.strip()}", "", e.explanation)


def _debug_fix(e: Exercise, code: str) -> Verdict:
    if not code.strip():
        return Verdict(False, "fix the code first", counts=False)
    res = grade_function(code, debug_function(e), build_cases(e))
    details = [{"args": c.args, "expected": c.expected, "got": c.got, "passed": c.passed, "error": c.error}
               for c in res.cases]
    msg = res.message.replace("hidden tests", "tests")
    if res.ok:
        msg = f"Fixed: {msg}"
    return Verdict(res.ok, msg, counts=not res.refused, answer_text=code,
                   expected=f"line {e.bug_line} → {e.fix.strip()}", derivation=fixed_code(e),
                   explanation=e.explanation, details=details)


def _design(e: Exercise, order: Any) -> Verdict:
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(e.order):
        return Verdict(False, "submit every step exactly once", counts=False, answer_text=str(order))
    ok = list(order) == e.order
    right = sum(a == b for a, b in zip(order, e.order, strict=True))
    msg = "Correct order." if ok else f"{right} of {len(e.order)} steps are in the right place."
    expected = " → ".join(e.order)
    return Verdict(ok, msg, True, " | ".join(order), expected, "", e.explanation)
