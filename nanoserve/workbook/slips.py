"""Name the likely slip behind a wrong derive answer, by evaluating the typical wrong formulas.

Two sources: exercise-specific wrong formulas in slips.yaml (keyed by exercise id; each `value` is an
expression over the variant's parameters and step values, in the exercise's unit), and generic
numeric relations that fit every exercise: off by 2 (K and V when the exercise is about a KV cache),
8 (bits vs bytes), 1.0737… (GB vs GiB), 1.024, 1000, 1024, and by the parallel degrees (DP, TP, PP,
GPU count) the variant uses — per-GPU vs total, or a division by DP that does not belong. A match is
within the exercise's tolerance; when several fit, all are named.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from nanoserve.workbook.bank import BankError, Exercise, Solution, evaluate

SLIPS_FILE = Path(__file__).with_name("slips.yaml")
_PREFIX = "off by 1000×: a unit prefix (k/M/G, or ms vs s)"
_BINARY = "off by 1024×: one binary prefix (KiB/MiB/GiB)"
_DEGREES = {"dp": "DP", "tp": "TP", "pp": "PP", "gpus": "the GPU count", "n_gpus": "the GPU count"}


@cache
def specific_slips() -> dict[str, list[dict[str, str]]]:
    """{exercise id: [{value, say}]} from slips.yaml."""
    return {str(k): list(v) for k, v in (yaml.safe_load(SLIPS_FILE.read_text()) or {}).items()}


def _close(a: float, b: float, tol: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and b != 0 and abs(a - b) <= tol * abs(b)


def _degrees(sol: Solution, params: dict[str, Any]) -> dict[str, int]:
    """Parallel degrees the variant uses: from its parameters and from the planner steps' inputs."""
    found: dict[str, int] = {}

    def take(d: dict[str, Any]) -> None:
        for k, v in d.items():
            if k in _DEGREES and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1:
                found.setdefault(k, int(v))

    take(params)
    stack = list(sol.steps)
    while stack:
        r = stack.pop()
        take(r.inputs)
        stack.extend(r.steps)
    return found


def _is_kv(e: Exercise) -> bool:
    text = f"{e.title} {e.prompt} {' '.join(e.skills)}".lower()
    return "kv" in text


def name_slips(e: Exercise, sol: Solution, params: dict[str, Any], given: float) -> list[str]:
    """What a wrong `given` (in the exercise's unit) most likely came from; [] if nothing fits."""
    tol = max(e.tolerance, 0.005)
    expected = sol.value
    out: list[str] = []
    names = {**params, **sol.values}
    for s in specific_slips().get(e.id, []):
        try:
            wrong = float(evaluate(str(s["value"]), names))
        except (BankError, ArithmeticError, TypeError, ValueError):
            continue
        if _close(given, wrong, tol) and not _close(wrong, expected, tol):
            out.append(str(s["say"]))
    if not expected or not math.isfinite(given):
        return out
    ratio = given / expected
    relations: list[tuple[float, str]] = [
        (0.5, "forgot the factor 2 for K and V" if _is_kv(e) else "off by 2× (a missing factor of 2?)"),
        (2.0, "counted K and V twice (the 2 is already in)" if _is_kv(e)
         else "off by 2× (a factor 2 too many?)"),
        (8.0, "bits vs bytes: your number is 8× too big (bits where bytes are asked?)"),
        (1 / 8, "bits vs bytes: your number is 8× too small (bytes where bits are asked, or ÷8 twice?)"),
        (1e9 / 2**30, "GB vs GiB: you divided by 2³⁰ (GiB) where the answer is in decimal units (10⁹)"),
        (2**30 / 1e9, "GB vs GiB: you divided by 10⁹ (GB) where the answer is in binary units (2³⁰)"),
        (1 / 1.024, "KB vs KiB (1000 vs 1024)"), (1.024, "KB vs KiB (1000 vs 1024)"),
        (1e3, _PREFIX), (1e-3, _PREFIX), (1024.0, _BINARY), (1 / 1024, _BINARY),
        (1e6, "off by 10⁶: two unit prefixes"), (1e-6, "off by 10⁶: two unit prefixes"),
    ]
    for k, deg in _degrees(sol, params).items():
        who = f"{_DEGREES[k]} = {deg}"
        if k == "dp":
            relations.append((1 / deg, f"divided by DP ({who}): data parallelism replicates, "
                                       "it does not split"))
            relations.append((float(deg), f"multiplied by DP ({who}): per-GPU vs total across replicas"))
        else:
            relations.append((1 / deg, f"per-GPU vs total: off by exactly {who} (divided too often?)"))
            relations.append((float(deg), f"per-GPU vs total: off by exactly {who} (the total?)"))
    for factor, say in relations:
        if _close(ratio, factor, tol) and say not in out:
            out.append(say)
    return out
