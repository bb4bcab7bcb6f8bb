"""Grade a typed number with its unit: "17.5 GB", "17.5GB", "1.75e10 bytes", "$0.65", "75%".

Units are read within the *dimension* of the expected unit, so "B" means bytes when the question asks
for memory and billions when it asks for parameters. A unit from another dimension is a unit slip and
gets its own message instead of a wrong-answer verdict; so does a fraction typed as a percentage.
Decimal prefixes are decimal (1 GB = 1e9 bytes); KiB/MiB/GiB are binary.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from nanoserve.errors import InvalidRequestError

_K, _M, _G, _T, _P = 1e3, 1e6, 1e9, 1e12, 1e15

# dimension → {normalized unit alias → factor to the dimension's base unit}
UNITS: dict[str, dict[str, float]] = {
    "bytes": {
        "b": 1, "byte": 1, "bytes": 1, "kb": _K, "mb": _M, "gb": _G, "tb": _T, "pb": _P,
        "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
        "kbytes": _K, "mbytes": _M, "gbytes": _G, "tbytes": _T,
    },
    "bytes/s": {
        "b/s": 1, "bytes/s": 1, "kb/s": _K, "mb/s": _M, "gb/s": _G, "tb/s": _T,
        "gib/s": 2**30, "tib/s": 2**40,
    },
    "s": {
        "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "ms": 1e-3, "msec": 1e-3,
        "milliseconds": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "microseconds": 1e-6,
        "ns": 1e-9, "min": 60, "mins": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600,
        "hrs": 3600, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400, "d": 86400,
        "week": 604800, "weeks": 604800, "year": 365 * 86400, "years": 365 * 86400,
    },
    "flop": {
        "flop": 1, "flops": 1, "kflop": _K, "mflop": _M, "gflop": _G, "gflops": _G, "tflop": _T,
        "tflops": _T, "pflop": _P, "pflops": _P, "eflop": 1e18, "eflops": 1e18, "zflop": 1e21,
        "zflops": 1e21, "yflop": 1e24, "yflops": 1e24, "yottaflops": 1e24, "yottaflop": 1e24,
        "exaflops": 1e18, "zettaflops": 1e21, "petaflops": _P, "teraflops": _T, "gigaflops": _G,
    },
    "flop/s": {
        "flop/s": 1, "flops/s": 1, "gflop/s": _G, "tflop/s": _T, "pflop/s": _P, "tflops/s": _T,
        "top/s": _T, "tops": _T, "flop/sec": 1, "gflop/sec": _G, "tflop/sec": _T,
    },
    "flop/byte": {"flop/byte": 1, "flops/byte": 1, "flop/b": 1, "flops/b": 1, "flop/bytes": 1},
    "tokens": {
        "tok": 1, "tokens": 1, "token": 1, "ktokens": _K, "k tokens": _K, "mtokens": _M, "m tokens": _M,
        "btokens": _G, "b tokens": _G, "ttokens": _T, "t tokens": _T, "k": _K, "m": _M, "b": _G, "t": _T,
        "million tokens": _M, "billion tokens": _G, "trillion tokens": _T,
    },
    "tok/s": {
        "tok/s": 1, "tokens/s": 1, "token/s": 1, "tokens/sec": 1, "tok/sec": 1, "tokens/second": 1,
        "tps": 1, "ktok/s": _K, "k tok/s": _K,
    },
    "params": {
        "params": 1, "parameters": 1, "param": 1, "k": _K, "m": _M, "b": _G, "t": _T,
        "k params": _K, "m params": _M, "b params": _G, "million": _M, "billion": _G, "trillion": _T,
        "million params": _M, "billion params": _G, "mparams": _M, "bparams": _G,
    },
    "usd": {"$": 1, "usd": 1, "dollars": 1, "$k": _K, "k$": _K, "$m": _M, "m$": _M},
    "usd/h": {"$/h": 1, "$/hr": 1, "$/hour": 1, "usd/h": 1, "usd/hr": 1, "usd/hour": 1},
    "usd/month": {"$/month": 1, "$/mo": 1, "usd/month": 1},
    "usd/mtok": {"$/1m tokens": 1, "$/m tokens": 1, "$/mtok": 1, "$/1m": 1, "$/m": 1, "$/1mtok": 1,
                 "$/million tokens": 1, "usd/mtok": 1, "$/1m tok": 1},
    "ratio": {"fraction": 1, "%": 0.01, "percent": 0.01, "x": 1, "×": 1, "times": 1, "α": 1, "alpha": 1},
    "count": {"": 1},
}

# Words a learner may append to a count ("36 GPUs") without changing its value.
COUNT_WORDS = {
    "gpu", "gpus", "pages", "page", "requests", "request", "layers", "layer", "microbatches", "microbatch",
    "replicas", "replica", "nodes", "node", "blocks", "block", "users", "devices", "device", "chips",
    "sequences", "examples", "steps", "step", "sms", "per sm", "warps", "heads", "blocks/sm", "blocks per sm",
    "tokens per step", "tok/step", "layers per gpu", "count", "degree", "lr", "learning rate", "d_model",
    "width",
}

MAX_ANSWER_CHARS = 200     # a longer answer is refused before any parsing (its cost grows with length)
MAX_EXPONENT = 400         # |exponent| beyond this is infinite or zero for a float anyway

_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")
_NUMBER = re.compile(
    r"""^\s*(?P<sign>[+-]?)\s*(?P<dollar>\$?)\s*
        (?P<mant>(\d[\d,_]*(\.\d*)?|\.\d+))
        (\s*(e|E)(?P<exp>[+-]?\d+))?
        (\s*(×|x|\*|·)\s*10\s*(\^|\*\*)?\s*(?P<pow>[+-]?\d+))?
        \s*(?P<rest>.*?)\s*$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Quantity:
    value: float       # in the expected unit
    typed_value: float
    typed_unit: str


@dataclass(frozen=True)
class Grade:
    correct: bool
    message: str
    given: float | None = None      # the learner's number in the expected unit (None when unparseable)
    expected: float | None = None
    rel_error: float | None = None
    counts: bool = True             # False: a unit slip or a form error, told but not graded as a miss


def normalize_unit(unit: str) -> str:
    u = unit.strip().lower().replace("per ", "/").replace(" / ", "/").replace("/ ", "/").replace(" /", "/")
    u = re.sub(r"\s+", " ", u)
    u = u.replace("tokens per second", "tok/s").replace("per second", "/s")
    return u


def dimension_of(unit: str) -> str:
    """The dimension of an exercise or planner unit; raises for a unit no table knows."""
    u = normalize_unit(unit)
    if u in ("", "count") or u in COUNT_WORDS:
        return "count"
    for dim in ("ratio", "bytes", "bytes/s", "s", "flop", "flop/s", "flop/byte", "tok/s", "usd", "usd/h",
                "usd/month", "usd/mtok", "tokens", "params"):
        if u in UNITS[dim]:
            return dim
    raise InvalidRequestError(f"unknown unit {unit!r}", "unit")


def unit_factor(unit: str, dimension: str | None = None) -> float:
    """Factor from `unit` to the base unit of its dimension (GB → 1e9)."""
    dim = dimension or dimension_of(unit)
    u = normalize_unit(unit)
    if dim == "count":
        return 1.0
    if u not in UNITS[dim]:
        raise InvalidRequestError(f"{unit!r} is not a unit of {dim}", "unit")
    return float(UNITS[dim][u])


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """`value` in `from_unit` expressed in `to_unit` (same dimension, e.g. bytes → GiB)."""
    d_from, d_to = dimension_of(from_unit), dimension_of(to_unit)
    if d_from != d_to:
        raise InvalidRequestError(f"cannot convert {from_unit!r} ({d_from}) to {to_unit!r} ({d_to})", "unit")
    return value * unit_factor(from_unit, d_from) / unit_factor(to_unit, d_to)


def parse_number(text: str) -> tuple[float, str]:
    """'1.75e10 bytes' → (1.75e10, 'bytes'); '3/4' → (0.75, ''); raises on anything that is not a number."""
    if text is None or not str(text).strip():
        raise InvalidRequestError("type a number (for example 17.5 or 17.5 GB)", "answer")
    s = str(text).strip()
    if len(s) > MAX_ANSWER_CHARS:
        raise InvalidRequestError(f"your answer is {len(s):,} characters long; type a single number "
                                  f"(at most {MAX_ANSWER_CHARS} characters)", "answer")
    s = s.translate(_SUPERSCRIPT).replace("−", "-").replace("\u00a0", " ")
    frac = re.fullmatch(r"\s*([+-]?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*", s)
    if frac:
        den = float(frac.group(2))
        if den == 0:
            raise InvalidRequestError("division by zero in your answer", "answer")
        return float(frac.group(1)) / den, ""
    _reject_decimal_comma(s, text)
    m = _NUMBER.match(s)
    if not m:
        raise InvalidRequestError(f"{text!r} is not a number; type digits such as 17.5 or 1.75e10", "answer")
    mant = m.group("mant").replace(",", "").replace("_", "")
    # float("1e400") is inf and cheap; 10 ** int("9999999") is an integer of 10⁷ digits and is not.
    exponent = int(m.group("exp") or 0) + int(m.group("pow") or 0)
    exponent = max(-MAX_EXPONENT - len(mant), min(MAX_EXPONENT + len(mant), exponent))
    value = float(f"{mant}e{exponent}")
    if m.group("sign") == "-":
        value = -value
    rest = m.group("rest")
    if m.group("dollar"):
        rest = "$" + rest if rest.startswith("/") or not rest else "$" + rest
    if re.search(r"\d", rest) and not re.fullmatch(r"\$?/?\s*1?\s*m\s*tok(en)?s?|\$/1m", rest.lower()):
        raise InvalidRequestError(f"{text!r} has more than one number; type a single value", "answer")
    if not math.isfinite(value):
        raise InvalidRequestError(f"{text!r} is not a finite number", "answer")
    return value, rest


def _reject_decimal_comma(s: str, text: str) -> None:
    """'17,5' may be a decimal comma or a typo; a comma is read only as a thousands separator."""
    lead = re.match(r"\s*[+-]?\s*\$?\s*(\d[\d,]*)", s)
    if lead and "," in lead.group(1) and not re.fullmatch(r"\d{1,3}(,\d{3})+", lead.group(1)):
        guess = lead.group(1).replace(",", ".", 1) if lead.group(1).count(",") == 1 else None
        hint = f" Did you mean {guess}? Type a dot for decimals" if guess else " Type a dot for decimals"
        raise InvalidRequestError(f"{text!r}: is the comma a decimal point?{hint}; commas only group "
                                  "thousands (17,500).", "answer")


def parse_quantity(text: str, expected_unit: str) -> Quantity:
    """The typed answer converted to `expected_unit`; a bare number is taken to be in that unit."""
    value, typed_unit = parse_number(text)
    dim = dimension_of(expected_unit)
    u = normalize_unit(typed_unit)
    if not u or (dim == "count" and (u in COUNT_WORDS)):
        return Quantity(value, value, typed_unit)
    if dim in ("usd", "usd/h", "usd/month", "usd/mtok") and u == "$":
        return Quantity(value, value, typed_unit)
    if dim == "ratio" and u in ("x", "×", "times") and normalize_unit(expected_unit) in ("x", "×", "times"):
        return Quantity(value, value, typed_unit)
    table = UNITS.get(dim, {})
    if u in table:
        return Quantity(value * table[u] / unit_factor(expected_unit, dim), value, typed_unit)
    try:
        other = dimension_of(typed_unit)
    except InvalidRequestError:
        other = None
    if other and other != dim:
        raise InvalidRequestError(
            f"unit slip: {typed_unit!r} measures {_DIM_WORDS.get(other, other)}, but this asks for "
            f"{_DIM_WORDS.get(dim, dim)} in {expected_unit}", "unit")
    accepted = ", ".join(sorted(k for k in table if k)[:12]) or "no unit"
    raise InvalidRequestError(
        f"unknown unit {typed_unit!r}; answer in {expected_unit} (accepted: {accepted})", "unit")


_DIM_WORDS = {
    "bytes": "memory (bytes)", "bytes/s": "bandwidth", "s": "time", "flop": "a FLOP count",
    "flop/s": "a FLOP rate", "flop/byte": "arithmetic intensity", "tokens": "a token count",
    "tok/s": "throughput (tokens/s)", "params": "a parameter count", "usd": "money", "usd/h": "$ per hour",
    "usd/month": "$ per month", "usd/mtok": "$ per 1M tokens", "ratio": "a ratio", "count": "a plain count",
}


def grade_number(
    text: str,
    expected: float,
    unit: str,
    rel_tol: float = 0.02,
    abs_tol: float = 0.0,
    integer: bool = False,
) -> Grade:
    """Compare the typed answer with the planner's `expected` value (both in `unit`)."""
    try:
        q = parse_quantity(text, unit)
    except InvalidRequestError as e:
        return Grade(False, e.message, None, expected)
    given = q.value
    if integer and abs(given - round(given)) > 1e-9:
        return Grade(False, f"{_fmt(given)} must be a whole number: round to the count you would really "
                            "need (usually up).", given, expected, None, counts=False)
    slip = _unit_label_slip(q, expected, unit, rel_tol)
    if slip:
        return Grade(False, slip, q.value, expected, None, counts=False)
    err = abs(given - expected) / abs(expected) if expected else abs(given)
    if integer:
        ok = abs(given - round(given)) < 1e-9 and round(given) == round(expected)
    else:
        ok = abs(given - expected) <= max(rel_tol * abs(expected), abs_tol)
    shown = _fmt(given)
    if ok:
        return Grade(True, f"Correct: {shown} {unit}.", given, expected, err)
    if dimension_of(unit) == "ratio" and normalize_unit(unit) == "fraction" and expected:
        if abs(given / 100 - expected) <= rel_tol * abs(expected):
            return Grade(False, f"unit slip: {shown} looks like a percentage; this asks for a fraction "
                                f"between 0 and 1 (or type it with a % sign)", given, expected, err,
                         counts=False)
    for factor, name in ((1e3, "a factor of 1,000"), (1e-3, "a factor of 1,000"), (1e6, "a factor of 10⁶"),
                         (1e-6, "a factor of 10⁶"), (1e9, "a factor of 10⁹"), (1e-9, "a factor of 10⁹"),
                         (1.073741824, "GB vs GiB"), (1 / 1.073741824, "GB vs GiB"),
                         (1.024, "KB vs KiB"), (1 / 1.024, "KB vs KiB")):
        if expected and abs(given * factor - expected) <= rel_tol * abs(expected) and not integer:
            return Grade(False, f"Not quite: {shown} {unit} is off by {name}; check the unit prefix.",
                         given, expected, err)
    direction = "high" if given > expected else "low"
    msg = f"Not quite: {shown} {unit} is too {direction} ({err:.0%} off)."
    return Grade(False, msg, given, expected, err)


def _unit_label_slip(q: Quantity, expected: float, unit: str, rel_tol: float) -> str:
    """The right number under another unit of the same dimension ('17.5 GiB' when 17.5 GB is right)."""
    typed = normalize_unit(q.typed_unit)
    if not typed or typed == normalize_unit(unit) or not expected:
        return ""
    if abs(q.typed_value - expected) > rel_tol * abs(expected):
        return ""
    if abs(q.value - expected) <= rel_tol * abs(expected):
        return ""      # the unit changes nothing here (e.g. 'GPUs' on a count): not a slip
    return (f"unit slip: you typed {_fmt(q.typed_value)} {q.typed_unit.strip()}, but this asks for {unit}; "
            f"{_fmt(q.typed_value)} {q.typed_unit.strip()} = {_fmt(q.value)} {unit}. Check which unit your "
            "number is in (not counted as a miss).")


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) >= 1e7 or abs(v) < 1e-3):
        return f"{v:.4g}"
    return f"{v:,.4f}".rstrip("0").rstrip(".")
