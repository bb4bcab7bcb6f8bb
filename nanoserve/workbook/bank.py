"""The exercise bank: YAML files under bank/, loaded, validated, rendered and solved through the planner.

An exercise never stores its answer. A derive exercise names planner calls (`steps`: dotted path +
arguments written as expressions over the exercise's parameters and earlier steps); the last step's
Result, converted to the exercise's unit, is the answer, and its `.explain()` is the derivation shown
after an attempt. Variant 0 is the seed's own parameters; variant n > 0 draws fresh ones from the
`variants` ranges with a RNG seeded by (exercise id, n), so a variant number always means the same
numbers. `seed_answer` is the number printed in the seed, kept only so the tests can check that the
planner reproduces it.

A variant is whole: its title, prompt, hints and explanation (trace: reasoning) are templates rendered
from the variant's own numbers, so no text keeps the seed's numbers once a variant changes them. A
`{field}` is an expression over the parameters, the step values by name (SI units, as the planner
returns them) and `answer` (in the exercise's unit), with an optional format spec: `{answer:~}` is
three significant digits written plainly (a whole part is never cut: 1,152), `{answer:~2}` two,
`{x:,}` thousands separators; a planner dataclass's fields read as `{spec.layers}`. `{{`/`}}` are
literal braces. Every name a template uses is checked at load (BankError naming the exercise).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import math
import operator
import random
import re
import string
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.derivation import Result, derive
from nanoserve.workbook.grading import convert, dimension_of

BANK_DIR = Path(__file__).with_name("bank")
TYPES = ("derive", "trace", "build", "debug", "design")
SEEDS = {
    "000": "Workbook — Systems & Serving",
    "001": "Chapter 30 — AI Infrastructure & Efficient Inference (worked examples)",
    "002": "Scaling Book workbook",
    "004": "Chapter 27 — Inference Optimization (22 exercises)",
    "ext": "Beyond the seeds: known calculator bugs",
}
PLANNER_PREFIX = "nanoserve.planner."


class BankError(ValueError):
    """An exercise entry that cannot be used: names the exercise and the problem."""


# ---------------------------------------------------------------------------------------------
# A tiny, safe expression language for arguments: arithmetic, comparisons, names, a few functions.
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_CMPOPS = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
           ast.Eq: operator.eq, ast.NotEq: operator.ne}
_FUNCS = {"ceil": math.ceil, "floor": math.floor, "sqrt": math.sqrt, "log2": math.log2, "min": min,
          "max": max, "round": round, "int": int, "float": float, "abs": abs, "sum": sum, "len": len}


def evaluate(expr: Any, names: dict[str, Any]) -> Any:
    """Evaluate an argument expression ("12 * d**2", "'int4'", "[a, b]") over `names`."""
    if isinstance(expr, dict) and "call" in expr:      # a nested planner call or constructor
        fn = _resolve(str(expr["call"]))
        return fn(**{k: evaluate(v, names) for k, v in (expr.get("args") or {}).items()})
    if not isinstance(expr, str):
        if isinstance(expr, list):
            return [evaluate(e, names) for e in expr]
        return expr
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise BankError(f"bad expression {expr!r}: {e.msg}") from None
    return _eval(tree.body, names, expr)


def _eval(node: ast.AST, names: dict[str, Any], src: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        if node.id in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[node.id]
        raise BankError(f"unknown name {node.id!r} in {src!r}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval(node.left, names, src), _eval(node.right, names, src))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
        v = _eval(node.operand, names, src)
        return -v if isinstance(node.op, ast.USub) else (not v if isinstance(node.op, ast.Not) else v)
    if isinstance(node, ast.BoolOp):
        vals = [_eval(v, names, src) for v in node.values]
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    if isinstance(node, ast.Compare) and all(type(o) in _CMPOPS for o in node.ops):
        left = _eval(node.left, names, src)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval(comp, names, src)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body if _eval(node.test, names, src) else node.orelse, names, src)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, names, src) for e in node.elts]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
        return _FUNCS[node.func.id](*[_eval(a, names, src) for a in node.args])
    if isinstance(node, ast.Attribute):     # a field of a planner dataclass (spec.layers), nothing else
        obj = _eval(node.value, names, src)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and \
                node.attr in {f.name for f in dataclasses.fields(obj)}:
            return getattr(obj, node.attr)
        raise BankError(f"no field {node.attr!r} in {src!r}")
    raise BankError(f"unsupported expression {src!r}")


# ---------------------------------------------------------------------------------------------
@dataclass
class Exercise:
    id: str
    seed: str
    chapter: str
    type: str
    title: str
    prompt: str
    number: str = ""
    chapter_title: str = ""
    skills: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, Any] = field(default_factory=dict)
    derived: dict[str, str] = field(default_factory=dict)
    constraint: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    value: str = ""                 # optional final expression over steps/params (then value_unit)
    value_unit: str = ""
    computed: dict[str, str] = field(default_factory=dict)   # extra values after the steps (trace options)
    unit: str = ""
    unit_label: str = ""
    tolerance: float = 0.02
    integer: bool = False
    seed_answer: Any = None
    seed_tolerance: float | None = None
    hints: list[str] = field(default_factory=list)
    explanation: str = ""
    # trace
    options: list[str] = field(default_factory=list)
    correct: int | None = None
    reasoning: str = ""
    why: list[str] = field(default_factory=list)   # per option: why it is wrong ("" for the right one)
    # build
    function: str = ""
    signature: str = ""
    starter: str = ""
    solution: str = ""
    tests: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)
    # debug
    code: list[str] = field(default_factory=list)
    bug_line: int | None = None     # 1-based
    fix: str = ""
    # design
    order: list[str] = field(default_factory=list)
    # provenance
    source: str = ""                # what in the seed this entry stands for (e.g. a Code Lab made a trace)
    title_template: str = ""        # set at load, not in YAML: the raw title; `title` is the seed's rendering

    @property
    def seed_title(self) -> str:
        return SEEDS.get(self.seed, self.seed)


@dataclass(frozen=True)
class Rendered:
    exercise: Exercise
    variant: int
    params: dict[str, Any]
    prompt: str
    options: list[str]
    title: str = ""
    hints: list[str] = field(default_factory=list)
    explanation: str = ""           # derive: the explanation; trace: the reasoning


@dataclass(frozen=True)
class Solution:
    value: float                    # in the exercise's unit
    unit: str
    result: Result | None           # the planner's final Result (derivation)
    steps: list[Result]
    values: dict[str, Any]          # every step's value by name (trace option templates use these)

    def explain(self) -> str:
        parts = [s.explain() for s in self.steps]
        return "\n\n".join(parts)


class _Fmt(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec.startswith("~"):
            return _plain(float(value), int(format_spec[1:] or 3))
        if not format_spec and isinstance(value, float):
            if value.is_integer() and abs(value) < 1e15:
                return str(int(value))
            return f"{value:g}" if abs(value) >= 1e-4 else f"{value:.3g}"
        return super().format_field(value, format_spec)


def _plain(x: float, digits: int) -> str:
    """At most `digits` significant digits, no exponent, whole part kept: 17.5, 0.304, 1,340, 1,152."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    if decimals == 0:
        return f"{round(x):,}"
    return f"{round(x, decimals):,.{decimals}f}".rstrip("0").rstrip(".")


_FORMATTER = _Fmt()


def template_fields(template: str) -> list[str]:
    """The `{expression}` fields of a template (format specs left off)."""
    try:
        return [f for _, f, _, _ in _FORMATTER.parse(template) if f is not None]
    except ValueError as e:
        raise BankError(f"template {template[:60]!r}…: {e}") from None


def fmt(template: str, names: dict[str, Any]) -> str:
    """Fill a template: every field is an expression over `names`, then formatted by its spec."""
    out: list[str] = []
    try:
        for literal, field_expr, spec, conversion in _FORMATTER.parse(template):
            out.append(literal)
            if field_expr is None:
                continue
            if not field_expr.strip() or conversion:
                raise BankError(f"template {template[:60]!r}…: empty field or !conversion")
            out.append(_FORMATTER.format_field(evaluate(field_expr, names), spec or ""))
    except (ValueError, TypeError, ArithmeticError) as e:
        if isinstance(e, BankError):
            raise
        raise BankError(f"template {template[:60]!r}…: {e}") from None
    return "".join(out)


def _names_in(expr: str) -> set[str]:
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise BankError(f"bad template field {{{expr}}}: {e.msg}") from None
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - called - {"True", "False", "None"}


def _check_templates(e: Exercise) -> None:
    """Every name in every template is a parameter, a step, a computed value or `answer`."""
    known = set(e.params) | set(e.derived) | set(e.computed) | set(_FUNCS)
    for i, step in enumerate(e.steps):
        name = step.get("name", f"s{i}")
        known |= {name, name + "_unit"}
    if e.steps:
        known |= {"answer", "answer_unit"}
    template_names = set(e.params) | set(e.derived) | set(_FUNCS)
    for f in template_fields(e.title):     # a title is shown in lists too: parameters only
        if _names_in(f) - template_names:
            raise BankError(f"exercise {e.id}: title: names unknown parameter(s) "
                            f"{sorted(_names_in(f) - template_names)} in {{{f}}}")
    texts = {"prompt": e.prompt}
    if e.type in ("derive", "trace"):
        texts |= {"explanation": e.explanation, "reasoning": e.reasoning,
                  **{f"hint {i + 1}": h for i, h in enumerate(e.hints)}}
    if e.type == "trace":
        texts |= {f"option {i + 1}": o for i, o in enumerate(e.options)}
    for where, text in texts.items():
        try:
            for f in template_fields(text):
                unknown = sorted(_names_in(f) - known)
                if unknown:
                    raise BankError(f"names unknown parameter(s) {unknown} in {{{f}}}")
        except BankError as ex:
            raise BankError(f"exercise {e.id}: {where}: {ex}") from None


# ---------------------------------------------------------------------------------------------
class Bank:
    def __init__(self, exercises: list[Exercise]) -> None:
        self.exercises = exercises
        self.by_id = {e.id: e for e in exercises}
        if len(self.by_id) != len(exercises):
            dup = sorted({e.id for e in exercises if sum(x.id == e.id for x in exercises) > 1})
            raise BankError(f"duplicate exercise ids: {dup}")

    def get(self, exercise_id: str) -> Exercise:
        try:
            return self.by_id[exercise_id]
        except KeyError:
            raise InvalidRequestError(f"no exercise {exercise_id!r}", "exercise") from None

    def chapters(self) -> dict[tuple[str, str], list[Exercise]]:
        """{(seed, chapter): exercises} in bank order."""
        out: dict[tuple[str, str], list[Exercise]] = {}
        for e in self.exercises:
            out.setdefault((e.seed, e.chapter), []).append(e)
        return out

    def skills(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for e in self.exercises:
            for s in e.skills:
                out.setdefault(s, []).append(e.id)
        return dict(sorted(out.items()))

    def next_after(self, exercise_id: str) -> Exercise | None:
        idx = self.exercises.index(self.get(exercise_id))
        return self.exercises[idx + 1] if idx + 1 < len(self.exercises) else None


def load_bank(directory: Path | str = BANK_DIR) -> Bank:
    """Every *.yaml under `directory` (one file per seed or chapter), validated."""
    exercises: list[Exercise] = []
    for path in sorted(Path(directory).glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        defaults = {k: doc[k] for k in ("seed", "chapter", "chapter_title") if k in doc}
        chapters = doc.get("chapters") or [{"exercises": doc.get("exercises", []), **defaults}]
        for ch in chapters:
            base = {**defaults, **{k: ch[k] for k in ("chapter", "chapter_title") if k in ch}}
            for raw in ch.get("exercises", []):
                exercises.append(_build(path.name, {**base, **raw}))
    bank = Bank(exercises)
    for e in bank.exercises:
        validate(e)
        e.title_template = e.title
        e.title = _title(e, draw_params(e, 0))   # lists and headers show the seed's title
    return bank


def _title(e: Exercise, params: dict[str, Any]) -> str:
    template = e.title_template or e.title
    return fmt(template, params) if "{" in template else template


@cache
def default_bank() -> Bank:
    return load_bank()


def _build(filename: str, raw: dict[str, Any]) -> Exercise:
    known = set(Exercise.__dataclass_fields__) - {"title_template"}
    extra = set(raw) - known
    if extra:
        raise BankError(f"{filename}: exercise {raw.get('id')!r} has unknown fields {sorted(extra)}")
    for k in ("id", "seed", "chapter", "type", "title", "prompt"):
        if k not in raw:
            raise BankError(f"{filename}: exercise {raw.get('id')!r} lacks {k!r}")
    seed = str(raw["seed"])
    raw = {**raw, "seed": seed.zfill(3) if seed.isdigit() else seed, "chapter": str(raw["chapter"]),
           "id": str(raw["id"]), "number": str(raw.get("number", ""))}
    return Exercise(**raw)


def validate(e: Exercise) -> None:
    """Structural checks per type (the bank test then solves every exercise)."""
    where = f"exercise {e.id}"
    if e.type not in TYPES:
        raise BankError(f"{where}: type {e.type!r} is not one of {TYPES}")
    if e.type == "derive":
        if not e.steps or not e.unit:
            raise BankError(f"{where}: a derive exercise needs planner steps and a unit")
        dimension_of(e.unit)
        if not 0 < e.tolerance < 0.1:
            raise BankError(f"{where}: tolerance must be in (0, 0.1) so a 10%-off answer fails")
    for step in e.steps:
        if "call" not in step or not str(step["call"]).startswith(PLANNER_PREFIX):
            raise BankError(f"{where}: every step calls a {PLANNER_PREFIX}* function, "
                            f"got {step.get('call')!r}")
    if e.type == "trace":
        if len(e.options) < 2 or e.correct is None or not 0 <= e.correct < len(e.options) or not e.reasoning:
            raise BankError(f"{where}: a trace exercise needs ≥2 options, a valid correct index "
                            "and reasoning")
        if e.why and len(e.why) != len(e.options):
            raise BankError(f"{where}: `why` needs one entry per option")
    if e.type == "build":
        if not (e.function and e.starter and e.tests and e.solution):
            raise BankError(f"{where}: a build exercise needs function, starter, solution and tests")
    if e.type == "debug":
        if not e.code or e.bug_line is None or not 1 <= e.bug_line <= len(e.code) or not e.fix:
            raise BankError(f"{where}: a debug exercise needs code lines, a valid bug_line and the fix")
    if e.type == "design":
        if len(e.order) < 3:
            raise BankError(f"{where}: a design exercise needs at least 3 steps in order")
    for name in e.variants:
        if name not in e.params:
            raise BankError(f"{where}: variant range for unknown parameter {name!r}")
    _check_templates(e)


# ---------------------------------------------------------------------------------------------
MAX_VARIANT = 1_000_000  # also the most an import accepts (progress.py)


def parse_variant(value: Any) -> int:
    """A variant number from a request (query string, JSON): a whole number 0..MAX_VARIANT, or a 400."""
    bad = InvalidRequestError(
        f"variant must be a whole number from 0 to {MAX_VARIANT:,}, got {str(value)[:40]!r}", "variant")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 10):
            raise bad
        value = int(text)
    elif isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise bad
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= MAX_VARIANT:
        raise bad
    return value


def draw_params(e: Exercise, variant: int) -> dict[str, Any]:
    """Variant 0: the seed's parameters. Variant n: fresh values, the same for the same n."""
    variant = parse_variant(variant)
    if variant == 0 or not e.variants:
        return _with_derived(e, dict(e.params))
    rng = random.Random(f"{e.id}:{variant}")
    for _ in range(500):
        p = dict(e.params)
        for name, spec in e.variants.items():
            p[name] = _draw(rng, spec, e.id, name)
        p = _with_derived(e, p)
        if not e.constraint or evaluate(e.constraint, p):
            if p != _with_derived(e, dict(e.params)) or len(e.variants) == 0:
                return p
    raise BankError(f"exercise {e.id}: no variant satisfies {e.constraint!r}")


def _with_derived(e: Exercise, p: dict[str, Any]) -> dict[str, Any]:
    for k, expr in e.derived.items():
        p[k] = evaluate(expr, p)
    return p


def _draw(rng: random.Random, spec: Any, eid: str, name: str) -> Any:
    if isinstance(spec, list):
        return rng.choice(spec)
    if isinstance(spec, dict) and "min" in spec and "max" in spec:
        lo, hi, step = spec["min"], spec["max"], spec.get("step")
        if step:
            n = int(round((hi - lo) / step))
            v = lo + step * rng.randint(0, n)
            return int(v) if all(isinstance(x, int) for x in (lo, hi, step)) else round(v, 10)
        if isinstance(lo, int) and isinstance(hi, int):
            return rng.randint(lo, hi)
        return round(rng.uniform(lo, hi), spec.get("digits", 3))
    raise BankError(f"exercise {eid}: bad variant range for {name!r}: {spec!r}")


def render(e: Exercise, variant: int = 0) -> Rendered:
    """The variant's page text: every template filled from this variant's own numbers."""
    variant = parse_variant(variant)
    p = draw_params(e, variant)
    names = dict(p)
    if e.steps:
        try:
            sol = solve(e, variant, p)
            names.update(sol.values, answer=sol.value, answer_unit=sol.unit)
        except BankError:   # the planner cannot solve it yet: the page still shows, the attempt says why
            return Rendered(e, variant, p, fmt(e.prompt, names), list(e.options), _title(e, p))
    try:
        options = [fmt(o, names) for o in e.options] if e.type == "trace" and e.steps else list(e.options)
        text = e.reasoning if e.type == "trace" else e.explanation
        if e.type in ("derive", "trace"):
            hints, explanation = [fmt(h, names) for h in e.hints], fmt(text, names)
        else:
            hints, explanation = list(e.hints), text
        return Rendered(e, variant, p, fmt(e.prompt, names), options, _title(e, p), hints, explanation)
    except BankError as ex:
        raise BankError(f"exercise {e.id} variant {variant}: {ex}") from None


def _resolve(dotted: str):
    mod, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError):
        raise BankError(f"planner function {dotted} does not exist (yet)") from None


def solve(e: Exercise, variant: int = 0, params: dict[str, Any] | None = None) -> Solution:
    """Run the exercise's planner steps on a variant's parameters."""
    p = params if params is not None else draw_params(e, variant)
    names: dict[str, Any] = dict(p)
    results: list[Result] = []
    last: Result | None = None
    for i, step in enumerate(e.steps):
        fn = _resolve(step["call"])
        args = {k: evaluate(v, names) for k, v in (step.get("args") or {}).items()}
        pos = [evaluate(v, names) for v in (step.get("pos") or [])]
        try:
            out = fn(*pos, **args)
        except TypeError as ex:
            raise BankError(f"exercise {e.id}: {step['call']}{tuple(pos)} {args}: {ex}") from None
        pick = step.get("pick")
        if pick is not None:
            out = out[pick] if isinstance(pick, int) else getattr(out, pick)
        if not isinstance(out, Result):
            raise BankError(f"exercise {e.id}: {step['call']} returned {type(out).__name__}, not a Result "
                            f"(add `pick`)")
        results.append(out)
        last = out
        names[step.get("name", f"s{i}")] = out.value
        names[step.get("name", f"s{i}") + "_unit"] = out.unit
    if last is None:
        raise BankError(f"exercise {e.id}: no planner steps")
    for k, expr in e.computed.items():
        names[k] = evaluate(expr, names)
    if e.value:
        raw, unit = float(evaluate(e.value, names)), e.value_unit or last.unit
        results.append(_value_step(e.value, names, raw, unit))   # the derivation ends at the answer
    else:
        raw, unit = last.value, last.unit
    target = e.unit or unit
    try:
        value = convert(raw, unit, target)
    except InvalidRequestError as ex:
        raise BankError(f"exercise {e.id}: {ex.message}") from None
    return Solution(value, target, last, results, {k: v for k, v in names.items() if k not in p})


def _value_step(expr: str, names: dict[str, Any], value: float, unit: str) -> Result:
    """The `value` expression as a derivation step, its names replaced by this variant's numbers."""
    def number(m: re.Match[str]) -> str:
        v = names.get(m.group())
        return _plain(float(v), 4) if isinstance(v, (int, float)) and not isinstance(v, bool) else m.group()
    substituted = re.sub(r"(?<![\w.])[A-Za-z_]\w*", number, expr)
    return derive("answer", value, unit, expr, substituted)


def planner_calls(e: Exercise) -> list[str]:
    return [s["call"] for s in e.steps] + ([e.reference["call"]] if e.reference.get("call") else [])


def build_cases(e: Exercise) -> list[tuple[list[Any], Any]]:
    """Hidden tests of a build exercise: expected values from the planner reference where given."""
    cases = []
    for t in e.tests:
        args = list(t["args"])
        if "expected" in t:
            expected = t["expected"]
        else:
            ref = e.reference
            names = dict(zip(ref["params"], args, strict=True))
            fn = _resolve(ref["call"])
            kwargs = {k: evaluate(v, names) for k, v in ref.get("args", {}).items()}
            out = fn(**kwargs)
            if ref.get("pick") is not None:
                out = getattr(out, ref["pick"]) if isinstance(ref["pick"], str) else out[ref["pick"]]
            expected = float(out.value) if isinstance(out, Result) else out
            if ref.get("scale"):
                expected = expected / float(ref["scale"])
        cases.append((args, expected))
    return cases
