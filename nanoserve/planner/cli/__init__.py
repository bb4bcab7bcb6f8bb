"""`nanoserve plan <topic> [options]`: every planner calculator from the command line.

Each topic gathers Results (value, unit, derivation) and prints them as a rich table followed by
the derivations; `--json` prints them for machines, `--plot FILE.png` draws the roofline with the
workload's points and/or the per-GPU memory bar. Models are presets or a config.json path; GPUs are
presets or a JSON/YAML hardware file. Bad input exits with code 2 and a one-line error.

One module per group of topics (memory, parallel, roofline, serving, capacity, speculative, quantization,
cost, training) holds the topics' functions and `TOPICS`, each naming the flags it reads; the
flags themselves are defined once in `flags.py`. `nanoserve plan TOPIC --help` lists a topic's own.
"""

from __future__ import annotations

import argparse
import sys

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.cli import (
    capacity,
    cost,
    memory,
    parallel,
    quantization,
    roofline,
    serving,
    speculative,
    training,
)
from nanoserve.planner.cli.flags import Topic, topic_parser
from nanoserve.planner.cli.output import Output, print_table
from nanoserve.planner.plots import save_figure

TOPICS: dict[str, Topic] = {
    **memory.TOPICS,
    **parallel.TOPICS,
    **roofline.TOPICS,
    **serving.TOPICS,
    **capacity.TOPICS,
    **speculative.TOPICS,
    **quantization.TOPICS,
    **cost.TOPICS,
    **training.TOPICS,
}

_EXAMPLE = (
    "nanoserve plan plan --model llama-3.1-70b --params 70e9 --gpu h100 --gpu-mem 80GiB "
    "--price 2.20 --max-batch 32"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "topics:\n"
        + "\n".join(f"  {name:<12} {topic.help}" for name, topic in TOPICS.items())
        + "\n\n`nanoserve plan TOPIC --help` lists a topic's options."
        + f"\n\nexample (the workbook's capstone):\n  {_EXAMPLE}"
    )
    parser.add_argument("topic", help="what to calculate (see the list below)")
    # The topic's own parser reads these, once the topic is known (an unknown topic is then a
    # one-line error, not argparse's usage dump).
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the topic's options")


def parse_topic(topic: str, options: list[str]) -> argparse.Namespace:
    """The options of one topic, parsed by that topic's parser; `topic` is set on the namespace."""
    name = topic.lower()
    if name not in TOPICS:
        raise InvalidRequestError(f"unknown topic {topic!r}; choose from {', '.join(TOPICS)}", "topic")
    return topic_parser(name, TOPICS[name]).parse_args(options, argparse.Namespace(topic=name))


def compute(args: argparse.Namespace) -> Output:
    """Run one topic on its parsed options (raises InvalidRequestError on bad input)."""
    topic = TOPICS[args.topic]
    if topic.needs == "model or params" and not (args.model or args.params):
        raise InvalidRequestError(f"topic {args.topic!r} needs --model or --params", "model")
    if topic.needs == "model" and not args.model:
        raise InvalidRequestError(
            f"topic {args.topic!r} needs --model (a preset or a config.json path)", "model"
        )
    if "efficiency" in topic.flags and not 0 < args.efficiency <= 1:
        raise InvalidRequestError("--efficiency must be in (0, 1]", "efficiency")
    return topic.compute(args)


def run(args: argparse.Namespace) -> int:
    try:
        args = parse_topic(args.topic, args.options)
        out = compute(args)
        if args.plot:
            if out.roofline is None and out.memory is None:
                raise InvalidRequestError(f"topic {args.topic!r} has nothing to plot", "plot")
            save_figure(args.plot, out.roofline, out.memory)
    except (ValueError, OSError) as e:  # InvalidRequestError is a ValueError
        print(f"nanoserve plan: error: {getattr(e, 'message', None) or e}", file=sys.stderr)
        return 2
    if args.json:
        print(out.to_json(args.topic, args.plot))
    else:
        print_table(out, explain=not args.brief)
        if args.plot:
            print(f"wrote {args.plot}")
    return 0
