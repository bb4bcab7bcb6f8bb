"""EngineArgs validation and the sizing of the KV pool and the scheduler."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from nanoserve.config import (
    CPU_KV_CAP_BYTES,
    EngineArgs,
    ModelConfig,
    SchedulerConfig,
    default_cpu_kv_budget_bytes,
    make_cache_config,
    make_scheduler_config,
)
from nanoserve.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dtype", "float64"),
        ("block_size", 0),
        ("max_num_seqs", 0),
        ("max_num_batched_tokens", -1),
        ("kv_cache_memory_bytes", 0),
        ("num_gpu_blocks_override", 0),
        ("max_model_len", 0),
        ("device", "tpu"),
        ("gpu_memory_utilization", 1.5),
        ("num_cpu_threads", 0),
    ],
)
def test_bad_engine_args_name_the_field(field, value):
    with pytest.raises(InvalidRequestError) as info:
        EngineArgs(model="m", **{field: value})
    assert info.value.param == field


def _model_config(**kw) -> ModelConfig:
    base = dict(
        model="m",
        tokenizer="m",
        architecture="LlamaForCausalLM",
        hf_config={},
        dtype="bfloat16",
        max_model_len=1024,
        num_layers=4,
        hidden_size=256,
        num_heads=8,
        num_kv_heads=2,
        head_dim=32,
        vocab_size=100,
    )
    base.update(kw)
    return ModelConfig(**base)


def test_kv_bytes_per_token_counts_k_and_v_of_every_layer_with_gqa():
    assert _model_config().kv_bytes_per_token() == 2 * 4 * 2 * 32 * 2
    assert _model_config(dtype="float32").kv_bytes_per_token() == 2 * 4 * 2 * 32 * 4


def test_pool_sizing_override_budget_and_default_cap():
    mc = _model_config()
    block_bytes = 16 * mc.kv_bytes_per_token()
    assert make_cache_config(EngineArgs(model="m", num_gpu_blocks_override=7), mc, 1 << 40).num_blocks == 7
    cc = make_cache_config(EngineArgs(model="m", kv_cache_memory_bytes=10 * block_bytes + 5), mc, 1 << 40)
    assert cc.num_blocks == 10 and cc.num_tokens == 160
    # the device default is capped at what max_num_seqs full-length sequences can use
    assert make_cache_config(EngineArgs(model="m"), mc, 1 << 40, max_num_seqs=4).num_blocks == 4 * 1024 // 16
    assert make_cache_config(EngineArgs(model="m"), mc, 3 * block_bytes).num_blocks == 3
    with pytest.raises(InvalidRequestError, match="no block"):
        make_cache_config(EngineArgs(model="m", kv_cache_memory_bytes=1), mc, 0)


def test_cpu_default_budget_is_bounded():
    assert 0 < default_cpu_kv_budget_bytes() <= CPU_KV_CAP_BYTES


def test_scheduler_defaults_and_chunked_prefill_off():
    cfg = make_scheduler_config(EngineArgs(model="m"), 4096)
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.enable_chunked_prefill) == (256, 2048, True)
    off = make_scheduler_config(EngineArgs(model="m", enable_chunked_prefill=False), 4096)
    assert off.max_num_batched_tokens == 4096  # a whole prompt must fit one step
    with pytest.raises(InvalidRequestError) as info:
        SchedulerConfig(max_num_batched_tokens=100, max_model_len=200, enable_chunked_prefill=False)
    assert info.value.param == "max_num_batched_tokens"


# ---- EngineArgs as command-line flags ------------------------------------------------------------


def _parser(cls: type[EngineArgs] = EngineArgs, **kw) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    cls.add_cli_args(parser, **kw)
    return parser


def _argv(args: EngineArgs) -> list[str]:
    """The command line asking for `args`, written from its fields alone."""
    argv = []
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def test_every_field_round_trips_through_the_command_line():
    wanted = EngineArgs(
        model="some/dir", tokenizer="tok/dir", dtype="bfloat16", seed=7, max_model_len=512, block_size=8,
        max_num_seqs=3, max_num_batched_tokens=4096, enable_prefix_caching=False,
        enable_chunked_prefill=False, kv_cache_memory_bytes=1 << 20, num_gpu_blocks_override=9,
        device="cpu", gpu_memory_utilization=0.5, num_cpu_threads=2, cpu_linear="torch",
        attention_backend="torch", quantization="int4", quantization_group_size=64,
        quantization_zero_point=True,
        speculative_config='{"method": "ngram", "num_speculative_tokens": 2}',  # JSON on the command line
        kv_cache_dtype="int8",
        tensor_parallel_size=4, nnodes=2, node_rank=1, master_addr="10.0.0.1",
        master_port=29500,
        data_parallel_size=2, quantization_lm_head=True, enforce_eager=True, max_seq_len_to_capture=1024,
    )
    changed = [f.name for f in dataclasses.fields(EngineArgs)
               if getattr(wanted, f.name) != f.default and f.name != "model"]
    assert len(changed) == len(dataclasses.fields(EngineArgs)) - 1  # every field differs from its default
    assert EngineArgs.from_cli_args(_parser().parse_args(_argv(wanted))) == wanted


def test_flags_default_to_the_fields_defaults_and_no_model_means_the_demo_model(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("NANOSERVE_MODEL", str(tmp_path))
    assert EngineArgs.from_cli_args(_parser().parse_args([])) == EngineArgs(model=str(tmp_path))
    assert EngineArgs.from_cli_args(_parser().parse_args([]), model="x", seed=3) == EngineArgs("x", seed=3)


def test_vllm_short_flags():
    assert _parser().parse_args(["-dp", "3"]).data_parallel_size == 3
    assert _parser().parse_args(["--data-parallel-size", "2"]).data_parallel_size == 2
    with pytest.raises(InvalidRequestError, match="data_parallel_size"):
        EngineArgs(model="m", data_parallel_size=0)


def test_choices_and_types_come_from_the_fields():
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        _parser().parse_args(["--dtype", "float64"])
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        _parser().parse_args(["--cpu-linear", "nonsense"])
    with pytest.raises(argparse.ArgumentError, match="invalid int"):
        _parser().parse_args(["--max-num-seqs", "many"])
    ns = _parser().parse_args(["--gpu-memory-utilization", "0.25", "--no-enable-chunked-prefill"])
    assert ns.gpu_memory_utilization == 0.25 and ns.enable_chunked_prefill is False


def test_model_positional_or_flag_but_not_two_different_ones():
    parse = _parser(positional_model=True).parse_args
    assert parse(["m"]).model == "m"
    assert parse(["--model", "m"]).model == "m"
    assert parse(["m", "--model", "m"]).model == "m"
    assert parse(["--seed", "1"]).model is None
    for argv in (["a", "--model", "b"], ["--model", "b", "a"]):
        with pytest.raises(SystemExit):
            parse(argv)
    with pytest.raises(SystemExit):  # without positional_model there is no MODEL
        _parser().parse_args(["m"])


@dataclasses.dataclass
class _ExtendedArgs(EngineArgs):
    attention_backend: str = dataclasses.field(
        default="auto", metadata={"help": "which attention", "choices": ("auto", "torch")}
    )
    enable_magic: bool = False
    draft_tokens: int | None = None


def test_a_new_field_becomes_a_flag_without_other_code():
    parser = _parser(_ExtendedArgs)
    ns = parser.parse_args(["--attention-backend", "torch", "--enable-magic", "--draft-tokens", "4"])
    args = _ExtendedArgs.from_cli_args(ns, model="m")
    assert (args.attention_backend, args.enable_magic, args.draft_tokens) == ("torch", True, 4)
    off = parser.parse_args(["--no-enable-magic"])
    assert _ExtendedArgs.from_cli_args(off, model="m") == _ExtendedArgs("m")
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        parser.parse_args(["--attention-backend", "triton"])
    assert "which attention" in parser.format_help()


def test_a_field_of_a_type_without_a_flag_is_refused():
    @dataclasses.dataclass
    class Bad(EngineArgs):
        sizes: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="sizes: no flag for type"):
        _parser(Bad)


def test_quantization_lm_head_needs_a_method_quantized_at_load():
    with pytest.raises(InvalidRequestError, match="quantization_lm_head needs quantization"):
        EngineArgs(model="m", quantization_lm_head=True)
    with pytest.raises(InvalidRequestError, match="quantization_lm_head needs quantization"):
        EngineArgs(model="m", quantization="gptq", quantization_lm_head=True)
    assert EngineArgs(model="m", quantization="int4", quantization_lm_head=True).quantization_lm_head
