"""`nanoserve workbook [--host 127.0.0.1] [--port 8765] [--db PATH] [--cli]`.

Starts the web app on loopback and prints its URL; `--cli` practises the same bank in the terminal
(same grading, same progress database, same FSRS review queue).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

DEFAULT_DB = Path.home() / ".nanoserve" / "workbook.sqlite"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--db", default=str(DEFAULT_DB), help=f"progress database (default {DEFAULT_DB})")
    parser.add_argument("--cli", action="store_true", help="practise in the terminal instead of the browser")
    parser.add_argument("--profile", default="learner", help="profile name for --cli")
    parser.add_argument("--exercise", default=None, help="--cli: start at this exercise id (e.g. 000-0.5)")
    parser.add_argument("--review", action="store_true", help="--cli: practise the exercises due for review")


def run(args: argparse.Namespace) -> int:
    if args.cli:
        return practise(args.db, args.profile, args.exercise, args.review)
    import uvicorn

    from nanoserve.workbook.app import create_app

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving the workbook on {args.host}, not loopback", file=sys.stderr)
    app = create_app(args.db)
    print(f"nanoserve workbook: http://{args.host}:{args.port}/  (progress in {args.db}; Ctrl+C stops)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def practise(db: str, profile: str, start: str | None = None, review: bool = False,
             stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Terminal practice loop. Commands at any prompt: v (new variant), s (skip), q (quit)."""
    from nanoserve.workbook.bank import default_bank, render
    from nanoserve.workbook.checker import check, design_shuffle
    from nanoserve.workbook.progress import Progress

    inp, out = stdin or sys.stdin, stdout or sys.stdout
    bank, progress = default_bank(), Progress(db)
    progress.profile_id(profile)

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    def ask(prompt: str) -> str | None:
        out.write(prompt)
        out.flush()
        line = inp.readline()
        return None if line == "" else line.rstrip("\n")

    if review:
        queue = [bank.by_id[i] for i, _ in progress.due_reviews(profile) if i in bank.by_id]
        if not queue:
            say("Nothing is due for review.")
            return 0
    else:
        queue = list(bank.exercises)
        if start:
            queue = queue[queue.index(bank.get(start)):]
    say(f"nanoserve workbook — profile {profile}: {len(progress.mastered(profile))}/{len(bank.exercises)} "
        f"mastered, {progress.streak(profile)}-day streak. Commands: v new variant, s skip, q quit.")
    for e in queue:
        variant = 0
        while True:
            r = render(e, variant)
            say(f"\n[{e.id}] {r.title} ({e.type}{', variant ' + str(variant) if variant else ''})")
            say(r.prompt.strip())
            payload: dict = {}
            if e.type == "trace":
                for i, o in enumerate(r.options):
                    say(f"  {chr(65 + i)}. {o}")
                line = ask("choice> ")
                if line is not None and len(line.strip()) == 1 and line.strip().upper() in "ABCDEFGH":
                    payload["choice"] = ord(line.strip().upper()) - 65
            elif e.type == "debug":
                for i, code_line in enumerate(e.code, 1):
                    say(f"  {i:>2} | {code_line}")
                line = ask("buggy line> ")
                payload["line"] = line
            elif e.type == "design":
                steps = design_shuffle(e, variant)
                for i, s in enumerate(steps, 1):
                    say(f"  {i}. {s}")
                line = ask("order (e.g. 3 1 2 …)> ")
                try:
                    payload["order"] = [steps[int(x) - 1] for x in (line or "").replace(",", " ").split()]
                except (ValueError, IndexError):
                    payload["order"] = None
            elif e.type == "build":
                say(f"Write {e.signature}; end with a line containing only '.'")
                first = ask("... ")
                if first is not None and first.strip() in ("q", "s", "v"):
                    line = first
                else:
                    lines = [] if first is None else [first]
                    while lines and lines[-1].strip() != ".":
                        nxt = ask("... ")
                        if nxt is None:
                            break
                        lines.append(nxt)
                    if lines and lines[-1].strip() == ".":
                        lines.pop()
                    payload["code"] = "\n".join(lines)
                    line = "." if first is not None else None
            else:
                line = ask(f"answer [{e.unit_label or e.unit}]> ")
                payload["answer"] = line
            if line is None or (line or "").strip() == "q":
                say("Bye.")
                return 0
            if (line or "").strip() == "s":
                break
            if (line or "").strip() == "v":
                variant += 1
                continue
            verdict = check(e, variant, payload)
            say(("✓ " if verdict.correct else "✗ ") + verdict.message)
            if not verdict.counts:
                continue
            o = progress.record_attempt(profile, e.id, variant, verdict.answer_text, verdict.correct)
            if verdict.expected:
                say(f"Answer: {verdict.expected}")
            if verdict.derivation:
                say(verdict.derivation)
            if verdict.explanation:
                say(verdict.explanation)
            say(f"streak {o.streak} (best {o.best_streak}); next review {o.due:%Y-%m-%d %H:%M} UTC"
                if o.due else f"streak {o.streak} (best {o.best_streak})")
            if verdict.correct:
                break
    say("Done.")
    return 0
