"""`Result`: a number with its unit and the derivation that produced it.

Every planner calculator returns one, the way the workbook's "Show derivation" explains a number:
the inputs, the formula, the formula with the numbers substituted, and the result with its unit.
Calculators that chain others keep those as `steps`, so a capacity plan explains itself top-down.

Conventions every calculator follows (issue #15): values in SI base units with the unit spelled in
`unit` ("bytes", never "B"; "s" for every duration, training included; `.to("days", 86400)` and the
CLI tables convert for display); counts (GPUs, batch, layers, degrees) are whole numbers ≥ 1 checked
by `checks.positive_int`; bad input is an InvalidRequestError naming the argument, never a silent
coercion; hardware is a `Hardware` or a preset name wherever a function takes one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Result:
    name: str
    value: float
    unit: str
    formula: str
    substituted: str
    inputs: dict[str, Any] = field(default_factory=dict)
    steps: tuple[Result, ...] = ()
    note: str = ""

    def __float__(self) -> float:
        return float(self.value)

    def to(self, unit: str, factor: float) -> Result:
        """The same quantity in another unit: value / factor (e.g. bytes → GB with 1e9)."""
        return Result(
            name=self.name,
            value=self.value / factor,
            unit=unit,
            formula=f"({self.formula}) / {factor:g}",
            substituted=f"{_fmt(self.value)} {self.unit} / {factor:g}",
            inputs=self.inputs,
            steps=self.steps,
            note=self.note,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "formula": self.formula,
            "substituted": self.substituted,
            "inputs": {k: _jsonable(v) for k, v in self.inputs.items()},
            "steps": [s.to_dict() for s in self.steps],
            "note": self.note,
        }

    def explain(self, indent: int = 0) -> str:
        """Multi-line, human-readable derivation (sub-steps first, like a worked solution)."""
        pad = "  " * indent
        lines = [s.explain(indent + 1) for s in self.steps]
        if self.inputs:
            ins = ", ".join(f"{k}={_fmt(v)}" for k, v in self.inputs.items())
            lines.append(f"{pad}{self.name}: inputs {ins}")
        else:
            lines.append(f"{pad}{self.name}:")
        lines.append(f"{pad}  = {self.formula}")
        lines.append(f"{pad}  = {self.substituted}")
        lines.append(f"{pad}  = {_fmt(self.value)} {self.unit}")
        if self.note:
            lines.append(f"{pad}  note: {self.note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.name} = {_fmt(self.value)} {self.unit}"


def derive(
    name: str,
    value: float,
    unit: str,
    formula: str,
    substituted: str,
    inputs: dict[str, Any] | None = None,
    steps: tuple[Result, ...] | list[Result] = (),
    note: str = "",
) -> Result:
    """Shorthand constructor used by the calculators."""
    return Result(name, float(value), unit, formula, substituted, dict(inputs or {}), tuple(steps), note)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
        return f"{v:.4g}"
    return f"{v:,.4f}".rstrip("0").rstrip(".")


def _jsonable(v: Any) -> Any:
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, Result):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)
