"""Charts for `nanoserve plan --plot FILE.png`: a roofline with the workload's points, a memory bar.

matplotlib is imported inside the functions with the Agg backend, so the planner stays importable
(and fast) without a display and without matplotlib, which only the `plots` extra installs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanoserve.extras import require


@dataclass(frozen=True)
class RooflineSpec:
    """A chip's roof and the ops to place under it."""

    title: str
    peak_flops_per_s: float
    bandwidth_bytes_per_s: float
    points: tuple[tuple[str, float], ...]  # (label, arithmetic intensity in FLOP/B)
    efficiency: float = 1.0


@dataclass(frozen=True)
class MemorySpec:
    """Bytes per GPU by item, stacked against the GPU's capacity."""

    title: str
    breakdown: dict[str, float]
    capacity_bytes: float


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "--plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_roofline(ax: Any, spec: RooflineSpec) -> None:
    import numpy as np

    p, bw = spec.peak_flops_per_s, spec.bandwidth_bytes_per_s
    ridge = p / bw
    lo = min([ridge / 100] + [i / 4 for _, i in spec.points if i > 0])
    hi = max([ridge * 100] + [i * 4 for _, i in spec.points])
    x = np.logspace(np.log10(lo), np.log10(hi), 400)
    ax.loglog(x, np.minimum(p, x * bw) / 1e12, color="black", lw=2, label="peak roof")
    if spec.efficiency < 1:
        ax.loglog(
            x,
            spec.efficiency * np.minimum(p, x * bw) / 1e12,
            color="gray",
            ls="--",
            label=f"achievable ({spec.efficiency:.0%})",
        )
    ax.axvline(ridge, color="gray", ls=":", lw=1)
    ax.annotate(
        f"ridge {ridge:.0f} FLOP/B",
        (ridge, p / 1e12),
        textcoords="offset points",
        xytext=(5, -15),
        fontsize=8,
        color="gray",
    )
    for label, i in spec.points:
        y = spec.efficiency * min(p, i * bw) / 1e12
        color = "tab:blue" if i < ridge else "tab:red"
        ax.scatter([i], [y], color=color, zorder=3)
        ax.annotate(label, (i, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attainable TFLOP/s")
    ax.set_title(spec.title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def draw_memory(ax: Any, spec: MemorySpec) -> None:
    bottom = 0.0
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    for (label, value), color in zip(spec.breakdown.items(), colors * 3, strict=False):
        gb = value / 1e9
        ax.bar([0], [gb], bottom=[bottom], color=color, label=f"{label}: {gb:.1f} GB", width=0.5)
        bottom += gb
    cap = spec.capacity_bytes / 1e9
    ax.axhline(cap, color="red", ls="--", label=f"capacity {cap:.0f} GB")
    ax.set_xticks([])
    ax.set_xlim(-0.8, 1.6)
    ax.set_ylim(0, max(cap, bottom) * 1.1)
    ax.set_ylabel("GB per GPU")
    ax.set_title(spec.title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")


def save_figure(
    path: str | Path, roofline: RooflineSpec | None = None, memory: MemorySpec | None = None
) -> Path:
    """Write a PNG with the roofline and/or the memory bar side by side; returns the path."""
    if roofline is None and memory is None:
        raise ValueError("nothing to plot")
    plt = _pyplot()
    panels = [p for p in (roofline, memory) if p is not None]
    widths = [3 if isinstance(p, RooflineSpec) else 1.6 for p in panels]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(sum(widths) * 2.4, 4.8), squeeze=False, gridspec_kw={"width_ratios": widths}
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        if isinstance(panel, RooflineSpec):
            draw_roofline(ax, panel)
        else:
            draw_memory(ax, panel)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
