"""What a topic produced (`Output`) and how `nanoserve plan` prints it: a table, derivations, JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nanoserve.planner.derivation import Result
from nanoserve.planner.plots import MemorySpec, RooflineSpec


@dataclass
class Output:
    """What a topic produced: results, notes under the table, what to plot, extra JSON keys."""

    title: str
    results: list[Result]
    notes: list[str] = field(default_factory=list)
    roofline: RooflineSpec | None = None
    memory: MemorySpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, topic: str, plot: str | None = None) -> str:
        doc = {
            "topic": topic,
            "title": self.title,
            "results": [r.to_dict() for r in self.results],
            "notes": self.notes,
            **self.extra,
        }
        if plot:
            doc["plot"] = str(plot)
        return json.dumps(doc, indent=2)


def human(value: float, unit: str) -> str:
    """A value in a readable unit: bytes → GB, s → ms, FLOP → TFLOP, fraction → %."""
    v = float(value)
    if unit in ("B", "bytes"):
        return f"{v / 2**30:,.3f} GiB ({v / 1e9:,.3f} GB)" if v >= 1e6 else f"{v:,.0f} B"
    if unit == "s":
        return f"{v * 1e3:,.3f} ms" if v < 1 else (f"{v:,.3f} s" if v < 86400 else f"{v / 86400:,.2f} days")
    if unit in ("FLOP", "FLOP/s"):
        if abs(v) >= 1e21:
            return f"{v:.4g} {unit}"
        for name, f in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9)):
            if abs(v) >= f:
                return f"{v / f:,.4g} {name}{unit}"
        return f"{v:,.4g} {unit}"
    if unit == "fraction":
        return f"{v:.4g} ({100 * v:.2f}%)"
    if unit in ("$/month", "$"):
        return f"${v:,.2f}" + ("/month" if unit == "$/month" else "")
    if unit.startswith("$"):
        return f"${v:,.4g}{unit[1:]}"
    if v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,} {unit}".strip()
    if v != 0 and (abs(v) >= 1e7 or abs(v) < 1e-3):
        return f"{v:.4g} {unit}".strip()
    return f"{v:,.4f}".rstrip("0").rstrip(".") + f" {unit}".rstrip()


def print_table(out: Output, explain: bool) -> None:
    """The results as a rich table, the notes, then (with `explain`) each result's derivation."""
    # rich costs ~60 ms to import: only the table output pays for it, not --json or --help.
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    console = Console(width=max(110, Console().width))
    table = Table(title=out.title, show_lines=False, title_justify="left")
    table.add_column("quantity", style="bold")
    table.add_column("value", justify="right", style="cyan")
    table.add_column("formula", style="dim")
    for r in out.results:
        table.add_row(r.name, human(r.value, r.unit), r.formula)
    console.print(table)
    for note in out.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if explain:
        for r in out.results:
            console.print(Panel(r.explain(), title=r.name, title_align="left", expand=False), highlight=False)
