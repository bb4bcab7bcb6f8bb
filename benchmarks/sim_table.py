"""The "Simulated vs measured" table of RESULTS.md from benchmarks/validate_sim.sh's JSON files.

Usage: python benchmarks/sim_table.py benchmarks/results/sim
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = (("output_throughput", "output tok/s"), ("median_ttft_ms", "median TTFT ms"),
           ("median_tpot_ms", "median TPOT ms"))


def rows(folder: Path) -> list[tuple[str, str, dict, dict]]:
    out = []
    for f in sorted(folder.glob("*.json")):
        if f.name.startswith(("profile-", "serve-")):
            continue
        d = json.loads(f.read_text())
        pre = f"{d['simulated']['num_preemptions']}/{d['measured']['num_preemptions']}"
        slow = "; ".join(f"{name} {c['calibration_slow_fraction']:.0%} / "
                         + ", ".join(f"{f:.0%}" for f in c["replay_slow_fraction"])
                         for name, c in (d.get("canary") or {}).items() if isinstance(c, dict)) or "-"
        out.append((d["label"], pre, d["simulated"], {**d["measured"], "slow": slow}))
    served, sim = folder / "serve-toy-light.json", folder / "serve-toy-light-sim.json"
    if served.is_file() and sim.is_file():
        m, s = json.loads(served.read_text()), json.loads(sim.read_text())
        for metric, stats in m.get("metrics_ms", {}).items():  # bench serve nests its latencies
            m[f"median_{metric}_ms"] = stats["median"]
        out.append(("toy-light (HTTP: serve + bench serve)", f"{s['num_preemptions']}/-", s, m))
    return out


def main(folder: str) -> None:
    head = (["workload", "preemptions sim/meas"] + [f"{n} sim / meas (err)" for _, n in METRICS]
            + ["replays apart", "slow state (canary): calibration / replays"])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, pre, s, m in rows(Path(folder)):
        cells = [f"{s[k]:.1f} / {m[k]:.1f} ({s[k] / m[k] - 1:+.1%})" if m.get(k) else "-" for k, _ in METRICS]
        spread = m.get("spread") or {}
        apart = " · ".join(f"{spread[k]:.0%}" for k, _ in METRICS if k in spread) or "-"
        print(f"| {label} | {pre} | " + " | ".join(cells) + f" | {apart} | {m.get('slow', '-')} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/sim")
