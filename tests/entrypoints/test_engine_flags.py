"""Every command that builds an engine offers EngineArgs' flags, spelled and defaulted alike.

The parsers are the real ones (`nanoserve.cli.build_parser`) and the expected flags come from the
dataclass's fields, so a field added to EngineArgs is checked here without editing this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from nanoserve.cli import build_parser, main
from nanoserve.config import EngineArgs

# The commands that must agree on defaults as well as spellings; latency and roofline turn prefix
# caching off by default (and say so in --help), so they are checked for spellings only.
SAME_DEFAULTS = [("serve",), ("generate",), ("bench", "throughput")]
ENGINE_COMMANDS = SAME_DEFAULTS + [("bench", "latency"), ("bench", "roofline")]


def _parser(command: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser(command[0])
    for name in command[1:]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def _engine_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Option string -> action, for the parser's "engine" group."""
    group = next(g for g in parser._action_groups if g.title == "engine")
    return {s: a for a in group._group_actions for s in a.option_strings}


def _expected_flags() -> set[str]:
    hints = typing.get_type_hints(EngineArgs)
    flags = set()
    for f in dataclasses.fields(EngineArgs):
        flag = "--" + f.name.replace("_", "-")
        flags.add(flag)
        flags.update(f.metadata.get("aliases", ()))  # vLLM's short forms (-tp, -dp)
        if hints[f.name] is bool:
            flags.add("--no-" + flag[2:])
    return flags


@pytest.mark.parametrize("command", ENGINE_COMMANDS, ids=" ".join)
def test_engine_flags_are_exactly_engine_args_fields(command):
    parser = _parser(command)
    flags = _engine_flags(parser)
    assert set(flags) == _expected_flags()
    assert "--no-enable-prefix-caching" in flags and "--num-cpu-threads" in flags
    # No second spelling of an engine setting outside the group (the old ones included).
    others = [a for a in parser._actions if a.option_strings and a not in flags.values()]
    assert {a.dest for a in others}.isdisjoint(f.name for f in dataclasses.fields(EngineArgs))
    assert {s for a in others for s in a.option_strings}.isdisjoint(
        {"--threads", "--no-prefix-caching", "--no-chunked-prefill"}
    )


def test_serve_generate_and_bench_throughput_agree_on_every_engine_flag():
    def describe(parser):
        return {
            flag: (a.dest, a.default, a.type, tuple(a.choices or ()), a.help, type(a).__name__)
            for flag, a in _engine_flags(parser).items()
        }

    serve, *others = [describe(_parser(c)) for c in SAME_DEFAULTS]
    for other in others:
        assert other == serve
    for command in SAME_DEFAULTS:
        ns = _parser(command).parse_args(["--seed", "5", "--model", "m"])
        assert EngineArgs.from_cli_args(ns) == EngineArgs("m", seed=5)


def test_serve_takes_the_model_positionally_or_as_a_flag():
    parser = _parser(("serve",))
    assert parser.parse_args(["some/dir", "--port", "1"]).model == "some/dir"
    assert parser.parse_args(["--model", "some/dir"]).model == "some/dir"
    assert parser.parse_args([]).model is None  # the demo model, served as toy-assistant
    with pytest.raises(SystemExit):
        parser.parse_args(["a", "--model", "b"])


def test_generate_keeps_a_per_request_seed_apart_from_the_engine_seed():
    ns = _parser(("generate",)).parse_args(["hi", "--seed", "1", "--sampling-seed", "2"])
    assert (ns.seed, ns.sampling_seed, ns.prompts) == (1, 2, ["hi"])


def test_latency_and_roofline_run_without_prefix_caching_unless_asked():
    for command in (("bench", "latency"), ("bench", "roofline")):
        parser = _parser(command)
        assert parser.parse_args([]).enable_prefix_caching is False
        assert parser.parse_args(["--enable-prefix-caching"]).enable_prefix_caching is True
        assert "(default: False)" in " ".join(parser.format_help().split())


def test_help_of_each_command_lists_the_engine_group(capsys):
    for argv in (["serve", "--help"], ["generate", "--help"], ["bench", "throughput", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "engine arguments (EngineArgs' fields)" in out and "--no-enable-prefix-caching" in out
