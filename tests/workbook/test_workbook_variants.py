"""Variants are whole: a variant's page (title, prompt, hints) and its attempt response (explanation,
derivation) show the variant's own numbers and none of the seed's numbers that the variant changed.

For every exercise with variants and variants 1..5: each parameter whose value the variant changed, and
every step value and the answer that changed with it, is written the ways text writes numbers (70, 70B,
17.5, 17,500, 75%) and searched for in the variant's text. A hit is a stale seed number, unless the
variant itself owns that number too (another parameter, a step value, a number in its derivation, a
constant in the planner steps) — then it cannot be told from a coincidence — or ALLOWED names it as a
constant of the exercise's wording.
"""

from __future__ import annotations

import math
import re

import pytest
from fastapi.testclient import TestClient

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.derivation import Result
from nanoserve.workbook import bank
from nanoserve.workbook.app import create_app
from nanoserve.workbook.bank import (
    Bank,
    BankError,
    Exercise,
    default_bank,
    draw_params,
    parse_variant,
    render,
    solve,
)
from nanoserve.workbook.checker import check

BANK = default_bank()
VARIED = [e for e in BANK.exercises if e.variants and e.type in ("derive", "trace")]
VARIANTS = range(1, 6)

# Numbers that are constants of an exercise's wording and only coincide with a seed value.
# {exercise id: {token: why}}
ALLOWED: dict[str, dict[str, str]] = {
    "000-9.6": {"2": "the 2 of 2 × N × tokens FLOPs (the seed's SLO is 2 s)"},
    "002-7.1": {"70": "the 70B model (the seed's utilization is 70%, written 70% where it is meant)"},
    "002-7.5": {"70": "the 70B model (the seed's utilization is 70%, written 70% where it is meant)"},
}

_SUFFIXES = ((1e3, "K"), (1e6, "M"), (1e9, "B"), (1e12, "T"), (1024, "K"), (2**20, "M"), (2**30, "G"))
_LEFT = r"(?<![\w.,-])"                         # not inside a word (GPT-4) or a longer number
_RIGHT = r"(?![\d¹²³⁰⁴⁵⁶⁷⁸⁹a-z]|[.,]\d)"        # nor followed by digits, a superscript or a letter (8d²)


def forms(x: object) -> set[str]:
    """The ways a page might write the number x."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return set()
    x = float(x)
    out = set()
    if x.is_integer():
        out |= {str(int(x)), f"{int(x):,}"}
    else:
        out |= {f"{x:g}", f"{x:.3g}"} | {f"{x:,.{d}f}".rstrip("0").rstrip(".") for d in (1, 2, 4)}
    for factor, suffix in _SUFFIXES:
        if abs(x) >= factor:
            out |= {f"{x / factor:g}{suffix}", f"{x / factor:.3g}{suffix}"}
    if 0 < abs(x) < 1:
        out |= {f"{x * 100:g}%", f"{x * 100:.3g}%"}
    return {f for f in out if "e" not in f}


def hits(token: str, text: str) -> list[str]:
    return [text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ")
            for m in re.finditer(_LEFT + re.escape(token) + _RIGHT, text)]


class _Marking(bank._Fmt):
    """The bank's formatter, with every value it fills in wrapped in markers."""

    def format_field(self, value, format_spec):
        return f"\x02{super().format_field(value, format_spec)}\x03"


def page_texts(e: Exercise, v: int, marked: bool = False) -> dict[str, str]:
    """What a learner reads for variant v: the page as render() gives it to the template, and the
    attempt response (check() is what /api/attempt returns). `marked`: each number a template filled
    in from the variant's own parameters is wrapped in \x02…\x03."""
    saved = bank._FORMATTER
    bank._FORMATTER = _Marking() if marked else saved
    try:
        r = render(e, v)
        texts = {"title": r.title, "prompt": r.prompt, "hints": "\n".join(r.hints)}
        if e.type == "derive":
            verdict = check(e, v, {"answer": repr(solve(e, v).value)})
        else:
            verdict = check(e, v, {"choice": e.correct})
            texts["options"] = "\n".join(r.options)
    finally:
        bank._FORMATTER = saved
    return texts | {"explanation": verdict.explanation, "derivation": verdict.derivation,
                    "expected": verdict.expected}


def _literal_text(texts: dict[str, str]) -> dict[str, str]:
    """The text the bank wrote, with the values filled in from the variant's numbers cut out."""
    return {k: re.sub("\x02[^\x02\x03]*\x03", " ", t) for k, t in texts.items()}


def _result_numbers(r: Result) -> set[float]:
    out = {r.value}
    for val in r.inputs.values():
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            out.add(float(val))
        elif isinstance(val, (list, tuple)):
            out |= {float(x) for x in val if isinstance(x, (int, float)) and not isinstance(x, bool)}
        elif isinstance(val, Result):
            out |= _result_numbers(val)
    for s in r.steps:
        out |= _result_numbers(s)
    return out


def _constants(text: str) -> set[float]:
    """The numbers written in `text` (a percentage also as its fraction)."""
    out = set()
    for n, pct in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?(?:e\d+)?)(%?)", text):
        out |= {float(n), float(n) / 100} if pct else {float(n)}
    return out


def _formulas(r: Result) -> str:
    """The derivation's formulas, substitutions and notes, with their constants (2/64 + 12/64, α^(k+1))."""
    return " ".join([r.formula, r.substituted, r.note] + [_formulas(s) for s in r.steps])


def _numbers(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def stale_numbers(e: Exercise, v: int) -> tuple[list[str], list[str]]:
    """(stale seed numbers found, changed parameters whose variant value is nowhere on the page)."""
    p0, pv = draw_params(e, 0), draw_params(e, v)
    s0, sv = solve(e, 0), solve(e, v)
    seed = _numbers(p0) | {f"step {k}": x for k, x in _numbers(s0.values).items()} | {"answer": s0.value}
    now = _numbers(pv) | {f"step {k}": x for k, x in _numbers(sv.values).items()} | {"answer": sv.value}
    # The variant's own numbers (its parameters and values, every number its derivation works with,
    # the constants of the planner steps and formulas) may coincide with a seed number.
    owned = set(now.values()) | _constants(repr([(s.get("args"), s.get("pos")) for s in e.steps]))
    for r in sv.steps:
        owned |= _result_numbers(r) | _constants(_formulas(r))
    owned_forms = set().union(*(forms(x) for x in owned))
    allowed = ALLOWED.get(e.id, {})
    texts = _literal_text(page_texts(e, v, marked=True))
    stale = []
    for name, x in seed.items():
        if name in now and math.isclose(now[name], x, rel_tol=1e-9):
            continue
        for tok in forms(x) - owned_forms - set(allowed):
            for part, text in texts.items():
                stale += [f"{part}: seed {name}={tok}: …{h}…" for h in hits(tok, text)]
    whole = "\n".join(page_texts(e, v).values())
    missing = [f"{k}={pv[k]}" for k in _numbers(pv) if k in e.variants and pv[k] != p0[k]
               and not any(hits(tok, whole) for tok in forms(pv[k]))]
    return stale, missing


@pytest.mark.parametrize("e", VARIED, ids=lambda e: e.id)
def test_a_variant_page_keeps_none_of_the_seeds_changed_numbers(e):
    report = []
    for v in VARIANTS:
        stale, missing = stale_numbers(e, v)
        report += [f"v{v} {s}" for s in stale]
        report += [f"v{v}: the variant's {m} appears nowhere on its page" for m in missing]
        if solve(e, v).value != solve(e, 0).value:
            if page_texts(e, v)["derivation"] == page_texts(e, 0)["derivation"]:
                report.append(f"v{v}: the derivation is the seed's")
    assert not report, f"{e.id}:\n" + "\n".join(report)


def test_the_variant_test_covers_every_exercise_with_variants():
    derive = [e for e in VARIED if e.type == "derive"]
    assert len(derive) >= 110 and all(e.steps for e in derive)


@pytest.mark.parametrize("e", [e for e in BANK.exercises if e.seed_answer is not None], ids=lambda e: e.id)
def test_variant_0_still_reproduces_the_seed(e):
    assert math.isclose(solve(e, 0).value, float(e.seed_answer), rel_tol=e.seed_tolerance or 0.02)


def test_variant_0_reads_as_the_seed():
    e = BANK.get("000-0.5")
    r = render(e, 0)
    assert r.title == e.title == "70B Model Weight Memory with TP"
    assert "A 70B-parameter model" in r.prompt and r.explanation.startswith("17.5 GB of weights")


def test_the_stale_example_from_the_issue_is_gone():
    """'13B model, 6.5 GB' was explained with '17.5 GB of weights'."""
    e = BANK.get("000-0.5")
    for v in VARIANTS:
        p, sol = draw_params(e, v), solve(e, v)
        r = render(e, v)
        assert f"{p['params_b']}B" in r.title + r.prompt
        if sol.value != 17.5:
            assert "17.5" not in r.explanation
        assert f"{sol.value:g}"[:3] in r.explanation.replace(",", "")


def test_the_search_would_catch_a_stale_explanation():
    """Not vacuous: a hard-coded seed number in an explanation is reported."""
    e = BANK.get("000-0.5")
    stale_copy = Exercise(**{**e.__dict__, "explanation": "17.5 GB of weights for a 70B model at TP=8."})
    v = next(v for v in VARIANTS if draw_params(e, v)["params_b"] != 70 and draw_params(e, v)["tp"] != 8)
    stale, _ = stale_numbers(stale_copy, v)
    assert any("answer=17.5:" in s for s in stale) and any("params_b=70:" in s for s in stale), stale


# ---------------------------------------------------------------------------------------------
def _bank_with(**fields) -> Bank:
    e = BANK.get("000-0.5")
    return Bank([Exercise(**{**e.__dict__, "title": e.title_template, "title_template": "", **fields})])


def test_a_template_naming_an_unknown_parameter_is_a_bank_error():
    from nanoserve.workbook.bank import validate
    for field, text in (("explanation", "{weights_gb} GB"), ("prompt", "A {size_b}B model"),
                        ("hints", ["Divide by {tpp}."]), ("title", "{answer} GB per GPU")):
        e = _bank_with(**{field: text}).exercises[0]
        with pytest.raises(BankError, match=r"000-0\.5"):
            validate(e)


def test_templates_may_compute_from_steps_and_answer():
    text = "{answer:~} GB = {params_b} × 2 / {tp}; {answer * tp:~2} GB in all"
    e = _bank_with(explanation=text).exercises[0]
    from nanoserve.workbook.bank import validate
    validate(e)
    assert render(e, 0).explanation == "17.5 GB = 70 × 2 / 8; 140 GB in all"


@pytest.mark.parametrize("bad", ["1e30", "Infinity", "-1", "abc", "NaN", "1.5", "", " ", "99999999999",
                                 "0x10",
                                 "٣"])
def test_bad_variant_numbers_are_refused_clearly(bad):
    with pytest.raises(InvalidRequestError, match="variant must be a whole number"):
        parse_variant(bad)
    e = BANK.get("000-0.5")
    with pytest.raises(InvalidRequestError):
        render(e, bad)


@pytest.mark.parametrize("bad", [1e30, float("inf"), float("nan"), -1, 2.5, True, None, [1], 10**12])
def test_bad_json_variants_are_refused_clearly(bad):
    with pytest.raises(InvalidRequestError, match="variant"):
        parse_variant(bad)


def test_good_variant_numbers_parse():
    assert [parse_variant(x) for x in ("0", "7", " 12 ", 3, 4.0)] == [0, 7, 12, 3, 4]


def test_the_app_answers_bad_variants_with_a_400_naming_variant():
    client = TestClient(create_app())
    for bad in ("1e30", "Infinity", "-1", "abc"):
        r = client.get(f"/ex/000-0.5?v={bad}")
        assert r.status_code == 400 and r.json()["error"]["param"] == "variant", (bad, r.text[:200])
    for bad in (1e30, "Infinity", -1, "abc"):
        r = client.post("/api/attempt", json={"id": "000-0.5", "variant": bad, "answer": "1"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "variant", (bad, r.text[:200])
    r = client.post("/api/attempt", content=b'{"id": "000-0.5", "variant": Infinity, "answer": "1"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_the_app_shows_the_variants_own_text():
    client = TestClient(create_app())
    e = BANK.get("000-0.5")
    v = next(v for v in VARIANTS if draw_params(e, v)["params_b"] != 70)
    p, sol = draw_params(e, v), solve(e, v)
    html = client.get(f"/ex/000-0.5?v={v}").text
    assert f"{p['params_b']}B Model Weight Memory" in html and "70B" not in html
    out = client.post("/api/attempt", json={"id": "000-0.5", "variant": v, "answer": repr(sol.value)}).json()
    assert out["correct"] and out["explanation"] == render(e, v).explanation
    assert "17.5" not in out["explanation"]


def test_loading_a_bank_with_an_unknown_template_name_fails_naming_the_exercise(tmp_path):
    from nanoserve.workbook.bank import load_bank
    entry = """seed: "ext"
chapter: "t"
exercises:
- id: "ext-t.1"
  type: derive
  title: "{size_b}B weights"
  prompt: "A {size_b}B model in FP16: how many GB?"
  params: {size_b: 70}
  variants: {size_b: [7, 13]}
  steps:
  - call: nanoserve.planner.parallel.tp_weight_memory_per_gpu
    args: {model: size_b * 1e9, tp: 1, bytes_per_param: 2}
  unit: GB
  explanation: "EXPLANATION"
"""
    (tmp_path / "a.yaml").write_text(entry.replace("EXPLANATION", "{answer:~} GB for {size_b}B"))
    b = load_bank(tmp_path)
    assert b.exercises[0].title == "70B weights" and render(b.exercises[0], 1).explanation.endswith("B")
    (tmp_path / "a.yaml").write_text(entry.replace("EXPLANATION", "{answer:~} GB for {params_b}B"))
    with pytest.raises(BankError, match=r"ext-t\.1.*params_b"):
        load_bank(tmp_path)
