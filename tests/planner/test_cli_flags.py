"""`nanoserve plan TOPIC`: each topic's parser offers exactly the flags the topic reads, with its defaults."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest

from nanoserve.cli import main
from nanoserve.planner.cli import TOPICS, parse_topic
from nanoserve.planner.cli.flags import OUTPUT_FLAGS, number, positive_int, size_bytes


def _reads(fn, seen: set) -> set[str]:
    """`args.X` read by fn, flags it passes to need(args, ...), and the same for the cli helpers it calls."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "args":
            names.add(node.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            callee = fn.__globals__.get(node.func.id)
            if node.func.id == "need":
                names |= {a.value.replace("-", "_") for a in node.args if isinstance(a, ast.Constant)}
            if inspect.isfunction(callee) and callee.__module__.startswith("nanoserve.planner.cli"):
                if callee not in seen:
                    seen.add(callee)
                    names |= _reads(callee, seen)
    return names


@pytest.mark.parametrize("name", sorted(TOPICS))
def test_topic_declares_exactly_the_flags_it_reads(name):
    topic = TOPICS[name]
    declared = {f.replace("-", "_") for f in topic.flags}
    read = _reads(topic.compute, set()) - {"topic", *OUTPUT_FLAGS}
    assert read - declared == set(), "read but not offered: the topic would fail on args.X"
    assert declared - read == set(), "offered but never read: the flag would be silently ignored"


def test_topic_help_lists_only_its_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "spec", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: nanoserve plan spec" in out and "--alpha" in out and "--json" in out
    assert "--model" not in out and "--gpu" not in out


def test_flag_of_another_topic_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "spec", "--model", "llama-3.1-8b"])
    assert e.value.code == 2
    assert "unrecognized arguments: --model" in capsys.readouterr().err


def test_topic_list_in_plan_help(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    out = capsys.readouterr().out
    for name, topic in TOPICS.items():
        assert f"  {name:<12} {topic.help}" in out


def test_per_topic_defaults():
    plan, memory, cost, decode = (parse_topic(t, []) for t in ("plan", "memory", "cost", "decode"))
    assert (plan.dtype, plan.headroom, plan.overhead) == ("int4", 0.2, 5e9)
    assert memory.overhead == 4e9 and cost.headroom == 0.0 and decode.dtype == "bf16"
    assert parse_topic("DECODE", ["--model", "gpt2"]).topic == "decode"


def test_number_and_size_parsers():
    assert number("70B") == 70e9 and number("1.5k") == 1500 and number("3.35T") == 3.35e12
    assert size_bytes("80GB") == 80e9 and size_bytes("80GiB") == 80 * 2**30 and size_bytes("5e9") == 5e9
    assert positive_int("8") == 8
    for bad, parse in (("ten", number), ("inf", number), ("80 apples", size_bytes), ("0", positive_int)):
        with pytest.raises(Exception, match="not a|expected a positive"):
            parse(bad)
