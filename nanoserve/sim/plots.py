"""`nanoserve simulate --plot FILE.png`: the simulated run over time.

Three panels sharing the time axis: requests running and waiting, KV-cache usage, preemptions so far.
matplotlib comes through nanoserve.extras.require (the `plots` extra), with the Agg backend, like
`plan --plot`.
"""

from __future__ import annotations

from pathlib import Path

from nanoserve.extras import require


def plot_timeline(timeline: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """Write the timeline (sim/metrics.py's timeline()) as a PNG (or any format matplotlib infers)."""
    matplotlib = require("matplotlib", "--plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = timeline["time_s"]
    fig, (ax_q, ax_kv, ax_p) = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
    ax_q.step(t, timeline["num_running"], where="post", label="running")
    ax_q.step(t, timeline["num_waiting"], where="post", label="waiting (queue)")
    ax_q.set_ylabel("requests")
    ax_q.legend(loc="upper right")
    ax_kv.step(t, [100 * u for u in timeline["kv_usage"]], where="post", color="tab:green")
    ax_kv.set_ylabel("KV blocks used (%)")
    ax_kv.set_ylim(0, 105)
    ax_p.step(t, timeline["num_preemptions"], where="post", color="tab:red")
    ax_p.set_ylabel("preemptions (total)")
    ax_p.set_xlabel("time (s)")
    for ax in (ax_q, ax_kv, ax_p):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
