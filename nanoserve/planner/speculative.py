"""Speculative decoding: tokens per verification, wall-clock speedup, break-even acceptance.

A draft proposes k tokens; the target verifies them in one pass and keeps the longest accepted prefix
plus one token of its own. With each draft token accepted independently with probability α, the
tokens gained per target pass are 1 + α + … + α^k = (1 − α^(k+1)) / (1 − α) (Leviathan et al. 2023).

Two approximations circulate and both overestimate: kα + 1 (seed 000 ch. 6) forgets that a rejection
ends the round, and kα (seed 002 ex. 7.3) also forgets the target's own token. `method` picks one:
"exact" (default), "approx" (kα + 1) or "accepted" (kα), so a workbook's figure can be reproduced and
compared with the exact one.

Two optional terms close the gap to a measured engine (benchmarks/RESULTS.md, issue #13), both off by
default so the textbook figures stay as they are:
- `verify_time_s`: the target's pass over k + 1 tokens (and the per-position verification) is not
  the plain decode pass t_target; on a small model or a batch it costs more.
- `overhead_s`: per engine step, time outside the forwards (scheduling, sampling bookkeeping,
  appending and detokenizing tokens, the proposer's Python). Plain decoding pays it once per token,
  speculation once per round, so
      speedup = E[tokens] · (t_target + o) / (k · t_draft + t_verify + o).
  With o comparable to t_target (a tiny model on a CPU) the draft's cost c = t_draft / t_target
  alone says little: what matters is the draft loop's wall time against the whole plain step.
"""

from __future__ import annotations

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.derivation import Result, _fmt, derive

METHODS = ("exact", "approx", "accepted")


def _check(alpha: float, k: int) -> tuple[float, int]:
    if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise InvalidRequestError(f"acceptance rate alpha must be in [0, 1] (got {alpha!r})", "alpha")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidRequestError(f"k (draft tokens per step) must be an integer >= 1 (got {k!r})", "k")
    return float(alpha), k


def _method(method: str) -> str:
    if method not in METHODS:
        raise InvalidRequestError(f"method must be one of {', '.join(METHODS)} (got {method!r})", "method")
    return method


def expected_tokens(alpha: float, k: int, method: str = "exact") -> Result:
    """Expected tokens produced per target forward pass."""
    a, k = _check(alpha, k)
    m = _method(method)
    if m == "approx":
        return derive(
            "expected tokens per step",
            k * a + 1,
            "tokens",
            "k·α + 1",
            f"{k} × {_fmt(a)} + 1",
            {"alpha": a, "k": k, "method": m},
            note="approximation: ignores that a rejection ends the round (overestimates)",
        )
    if m == "accepted":
        return derive(
            "expected tokens per step",
            k * a,
            "tokens",
            "k·α",
            f"{k} × {_fmt(a)}",
            {"alpha": a, "k": k, "method": m},
            note="approximation: ignores the round ending at a rejection and the target's own token",
        )
    value = float(k + 1) if a == 1 else (1 - a ** (k + 1)) / (1 - a)
    return derive(
        "expected tokens per step",
        value,
        "tokens",
        "(1 − α^(k+1)) / (1 − α)",
        f"(1 − {_fmt(a)}^{k + 1}) / (1 − {_fmt(a)}) = (1 − {_fmt(a ** (k + 1))}) / {_fmt(1 - a)}",
        {"alpha": a, "k": k, "method": m},
        note=f"all {k} drafts accepted with probability α^k = {_fmt(a**k)}",
    )


def step_time(
    k: int,
    target_time_s: float,
    draft_time_s: float,
    draft_parallel: bool = False,
    verify_time_s: float | None = None,
    overhead_s: float = 0.0,
) -> Result:
    """Wall time of one speculative round: k sequential draft passes then one target pass.

    With the draft on its own device pipelined against the target, the round costs max of the two.
    verify_time_s: the target's verify pass over k + 1 tokens (default t_target); overhead_s: the
    engine's per-step time outside the forwards.
    """
    if target_time_s <= 0 or draft_time_s < 0:
        raise InvalidRequestError("target_time_s must be > 0 and draft_time_s >= 0", "target_time_s")
    if (verify_time_s is not None and verify_time_s <= 0) or overhead_s < 0:
        raise InvalidRequestError("verify_time_s must be > 0 and overhead_s >= 0", "verify_time_s")
    if verify_time_s is not None or overhead_s:
        t_v = target_time_s if verify_time_s is None else verify_time_s
        value = (max(k * draft_time_s, t_v) if draft_parallel else k * draft_time_s + t_v) + overhead_s
        form = "max(k · t_draft, t_verify) + o" if draft_parallel else "k · t_draft + t_verify + o"
        return derive(
            "round time",
            value,
            "s",
            form,
            f"{k} × {_fmt(draft_time_s)} + {_fmt(t_v)} + {_fmt(overhead_s)}"
            if not draft_parallel
            else f"max({k} × {_fmt(draft_time_s)}, {_fmt(t_v)}) + {_fmt(overhead_s)}",
            {"k": k, "target_time_s": target_time_s, "draft_time_s": draft_time_s,
             "verify_time_s": t_v, "overhead_s": overhead_s},
        )
    if draft_parallel:
        return derive(
            "round time",
            max(k * draft_time_s, target_time_s),
            "s",
            "max(k · t_draft, t_target)",
            f"max({k} × {_fmt(draft_time_s)}, {_fmt(target_time_s)})",
            {"k": k, "target_time_s": target_time_s, "draft_time_s": draft_time_s},
        )
    return derive(
        "round time",
        k * draft_time_s + target_time_s,
        "s",
        "k · t_draft + t_target",
        f"{k} × {_fmt(draft_time_s)} + {_fmt(target_time_s)}",
        {"k": k, "target_time_s": target_time_s, "draft_time_s": draft_time_s},
    )


def speedup(
    alpha: float,
    k: int,
    target_time_s: float,
    draft_time_s: float,
    method: str = "exact",
    draft_parallel: bool = False,
    verify_time_s: float | None = None,
    overhead_s: float = 0.0,
) -> Result:
    """Wall-clock speedup over plain decoding: (E[tokens] / round time) / (1 / (t_target + o)).

    verify_time_s, overhead_s: the optional terms of the module docstring (defaults: the textbook
    formula, verify = t_target and no per-step overhead)."""
    e = expected_tokens(alpha, k, method)
    t = step_time(k, target_time_s, draft_time_s, draft_parallel, verify_time_s, overhead_s)
    plain_s = target_time_s + overhead_s  # one plain decode step, one token
    value = e.value * plain_s / t.value
    return derive(
        "speculative speedup",
        value,
        "×",
        "E[tokens] · (t_target + o) / round time" if overhead_s else "E[tokens] · t_target / round time",
        f"{_fmt(e.value)} × {_fmt(plain_s)} / {_fmt(t.value)}",
        {
            "alpha": alpha,
            "k": k,
            "method": method,
            "tok_per_s": e.value / t.value,
            "baseline_tok_per_s": 1 / plain_s,
        },
        [e, t],
        note="slower than plain decoding" if value < 1 else "",
    )


def break_even_acceptance(
    k: int,
    target_time_s: float,
    draft_time_s: float,
    method: str = "exact",
    target_speedup: float = 1.0,
    draft_parallel: bool = False,
) -> Result:
    """Smallest α at which speculation reaches `target_speedup` (1.0 = break-even with plain decoding)."""
    _check(0.0, k)
    m = _method(method)
    if target_speedup <= 0:
        raise InvalidRequestError("target_speedup must be > 0", "target_speedup")
    t = step_time(k, target_time_s, draft_time_s, draft_parallel)
    need = target_speedup * t.value / target_time_s  # tokens per round required
    need_r = derive(
        "tokens per round needed",
        need,
        "tokens",
        "speedup · round time / t_target",
        f"{_fmt(target_speedup)} × {_fmt(t.value)} / {_fmt(target_time_s)}",
        steps=[t],
    )
    ceiling = {"exact": k + 1, "approx": k + 1, "accepted": k}[m]
    if need > ceiling + 1e-12:
        raise InvalidRequestError(
            f"a {_fmt(target_speedup)}× speedup needs {_fmt(need)} tokens per round, more than the {ceiling} "
            f"possible with k={k}",
            "target_speedup",
        )
    if m == "approx":
        a = max(0.0, (need - 1) / k)
        return derive(
            "break-even acceptance",
            a,
            "α",
            "(needed − 1) / k",
            f"({_fmt(need)} − 1) / {k}",
            {"k": k, "method": m, "target_speedup": target_speedup},
            [need_r],
        )
    if m == "accepted":
        a = need / k
        return derive(
            "break-even acceptance",
            a,
            "α",
            "needed / k",
            f"{_fmt(need)} / {k}",
            {"k": k, "method": m, "target_speedup": target_speedup},
            [need_r],
        )
    lo, hi = 0.0, 1.0  # 1 + α + … + α^k increases monotonically from 1 to k + 1
    if need <= 1:
        hi = 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if expected_tokens(mid, k).value < need:
            lo = mid
        else:
            hi = mid
    return derive(
        "break-even acceptance",
        hi,
        "α",
        "solve (1 − α^(k+1)) / (1 − α) = needed for α",
        f"(1 − α^{k + 1}) / (1 − α) = {_fmt(need)} → α = {_fmt(hi)}",
        {"k": k, "method": m, "target_speedup": target_speedup},
        [need_r],
        note="solved by bisection",
    )


def optimal_k(
    alpha: float, target_time_s: float, draft_time_s: float, k_max: int = 16, draft_parallel: bool = False
) -> Result:
    """The k in 1..k_max with the largest exact speedup."""
    _check(alpha, 1)
    best = max(
        range(1, k_max + 1),
        key=lambda k: speedup(alpha, k, target_time_s, draft_time_s, "exact", draft_parallel).value,
    )
    s = speedup(alpha, best, target_time_s, draft_time_s, "exact", draft_parallel)
    return derive(
        "best k",
        best,
        "tokens",
        "argmax_k speedup(α, k)",
        f"k = {best} → {_fmt(s.value)}×",
        {"alpha": alpha, "k_max": k_max},
        [s],
    )
