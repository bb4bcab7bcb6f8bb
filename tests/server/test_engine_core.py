"""`LLMEngine` and the test fake both implement `EngineCore`, member by member, and the async front uses
nothing else of the engine."""

from __future__ import annotations

import ast
import inspect
import types
import typing
from pathlib import Path

import pytest
from fake_engine import FakeEngine
from transformers import PreTrainedTokenizerBase

import nanoserve.engine.async_engine as async_engine_module
from nanoserve.engine.core import EngineCore
from nanoserve.engine.stats import EngineStats
from nanoserve.server.cli import kv_pool_summary

EXPECTED_MEMBERS = {"tokenizer", "model_config", "cache_config", "add_request", "abort_request", "step",
                    "has_unfinished_requests", "get_stats", "check_health", "shutdown"}


def protocol_attributes() -> dict[str, type]:
    return typing.get_type_hints(EngineCore, localns={"PreTrainedTokenizerBase": PreTrainedTokenizerBase})


def protocol_methods() -> dict[str, types.FunctionType]:
    return {name: f for name, f in vars(EngineCore).items()
            if inspect.isfunction(f) and not name.startswith("_")}


def _accepted(t: object) -> set[object]:
    """A type as the set of classes it accepts (X | Y -> {X, Y}); generics by origin (list[int] -> list)."""
    members = typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else (t,)
    return {typing.get_origin(m) or m for m in members}


def _accepts(have: object, want: object) -> bool:
    """Whether a parameter annotated `have` accepts every argument of type `want` (unannotated: anything)."""
    return have is typing.Any or _accepted(want) <= _accepted(have)


def _signature_errors(name: str, proto_fn: types.FunctionType, impl_fn: typing.Callable) -> list[str]:
    want = list(inspect.signature(proto_fn).parameters.values())
    have = list(inspect.signature(impl_fn).parameters.values())
    want_hints, have_hints = typing.get_type_hints(proto_fn), typing.get_type_hints(impl_fn)
    errors = []
    for i, p in enumerate(want):
        if i >= len(have) or have[i].name != p.name:
            errors.append(f"{name}: parameter {i} should be {p.name!r}")
        elif p.name in want_hints and not _accepts(have_hints.get(p.name, typing.Any), want_hints[p.name]):
            errors.append(f"{name}({p.name}) does not accept {want_hints[p.name]}")
    for q in have[len(want):]:
        if q.default is inspect.Parameter.empty and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD):
            errors.append(f"{name}: extra required parameter {q.name!r}")
    if _accepted(have_hints.get("return")) != _accepted(want_hints["return"]):
        errors.append(f"{name} returns {have_hints.get('return')}, not {want_hints['return']}")
    return errors


def conformance_errors(engine: object) -> list[str]:
    """Every way `engine` falls short of EngineCore (empty when it implements it)."""
    errors = []
    for name, typ in protocol_attributes().items():
        if not hasattr(engine, name):
            errors.append(f"missing attribute {name}")
        elif not isinstance(getattr(engine, name), typ):
            errors.append(f"{name} is a {type(getattr(engine, name)).__name__}, not a {typ.__name__}")
    for name, proto_fn in protocol_methods().items():
        impl = getattr(type(engine), name, None)
        if not callable(impl):
            errors.append(f"missing method {name}")
        else:
            errors += _signature_errors(name, proto_fn, impl)
    return errors


def test_the_protocol_has_the_members_the_front_and_server_need():
    assert set(protocol_attributes()) | set(protocol_methods()) == EXPECTED_MEMBERS


def test_the_fake_implements_the_protocol_with_the_real_classes():
    fake = FakeEngine()
    assert conformance_errors(fake) == []
    assert type(fake.get_stats()) is EngineStats


def test_the_real_engine_implements_the_protocol(offline_llm):
    engine = offline_llm.llm_engine
    assert conformance_errors(engine) == []
    assert type(engine.get_stats()) is EngineStats


def test_the_check_finds_a_missing_or_mismatched_member():
    no_cache = FakeEngine()
    del no_cache.cache_config
    assert conformance_errors(no_cache) == ["missing attribute cache_config"]

    class NoStats(FakeEngine):
        get_stats = None

    class StricterAdd(FakeEngine):
        def add_request(self, request_id: str, prompt: str, params, priority: int) -> None: ...

    class OtherStats(FakeEngine):
        def get_stats(self) -> dict: ...

    assert conformance_errors(NoStats()) == ["missing method get_stats"]
    assert conformance_errors(StricterAdd()) == [
        "add_request(prompt) does not accept str | list[int] | dict[str, typing.Any]",
        "add_request: extra required parameter 'priority'",
    ]
    assert conformance_errors(OtherStats()) == [
        f"get_stats returns {dict}, not {EngineStats}",
    ]


def test_the_async_front_reads_only_protocol_members_of_its_engine():
    tree = ast.parse(Path(async_engine_module.__file__).read_text())
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "engine" and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"}
    assert used  # the walk found the engine calls
    assert used <= EXPECTED_MEMBERS, used - EXPECTED_MEMBERS


@pytest.mark.parametrize("blocks, block_size", [(64, 16), (10, 4)])
def test_kv_pool_summary_reads_the_resolved_configs(blocks, block_size):
    fake = FakeEngine()
    fake.cache_config.num_blocks, fake.cache_config.block_size = blocks, block_size
    mib = blocks * block_size * fake.model_config.kv_bytes_per_token() / 2**20
    assert kv_pool_summary(fake) == (f"KV pool: {blocks} blocks x {block_size} tokens = "
                                     f"{blocks * block_size} tokens, {mib:.1f} MiB")
