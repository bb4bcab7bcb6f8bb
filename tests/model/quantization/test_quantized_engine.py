"""The engine with quantization=...: greedy tokens equal to an engine whose linears compute with the same
quantized numbers by the plain formula (chunked prefill, prefix caching, forced preemption); the weight
and KV bytes the engine reports equal the planner's; bad combinations are clear errors."""

from __future__ import annotations

import pytest
import torch
from engine_oracle import GREEDY, PRESSURE, OracleLinear, prompts

from nanoserve import LLM
from nanoserve.config import EngineArgs, QuantizationConfig
from nanoserve.errors import InvalidRequestError, ModelLoadError
from nanoserve.model.quantization.apply import decoder_linears
from nanoserve.model.quantization.methods import get_method
from nanoserve.model.quantization.quant_linear import QuantLinear
from nanoserve.planner.memory import kv_cache_per_token, weight_memory


def oracle_linear(weight: torch.Tensor, bias: torch.Tensor | None,
                  config: QuantizationConfig) -> OracleLinear:
    """The plain formula over the numbers `config`'s method makes of `weight` (w8a8: activations too)."""
    qw = get_method(config.method).quantize(weight, config)
    if not qw.act_quant:
        return OracleLinear(qw.dequantize(weight.dtype), bias)
    return OracleLinear(qw.dequantize(weight.dtype), bias, qw.qweight, qw.scales[:, 0])


def dequantized_llm(path: str, config: QuantizationConfig, **engine_args) -> LLM:
    """An unquantized engine whose decoder linears are replaced by the oracle (by default no memory
    pressure)."""
    engine_args = {"num_gpu_blocks_override": 256, **engine_args}
    llm = LLM(path, dtype="float32", cpu_linear="torch", **engine_args)
    for layer in llm.llm_engine.runner.model.model.layers:
        for parent, attr, lin in decoder_linears(layer):
            setattr(parent, attr, oracle_linear(lin.weight.detach(), lin.bias, config))
    return llm


CASES = [
    ("llama", QuantizationConfig("int8")),
    ("qwen2", QuantizationConfig("int8", lm_head=True)),  # tied: the embedding keeps its float weight
    ("llama", QuantizationConfig("int4", group_size=32)),
    ("qwen2", QuantizationConfig("int4", group_size=48, zero_point=True)),  # K % 48 != 0, q/k/v bias, tied
    ("qwen2", QuantizationConfig("w8a8")),
]


@pytest.mark.parametrize("variant,config", CASES,
                         ids=["int8", "int8-lm-head", "int4-g32", "int4-g48-zp", "w8a8"])
def test_quantized_greedy_equals_the_dequantized_reference_under_pressure(variant, config, tiny_model):
    path = str(tiny_model(variant))
    # 16 blocks x 16 tokens for ~560 prompt tokens: preemption; 32-token steps: chunked prefill.
    llm = LLM(path, dtype="float32", quantization=config.method, quantization_group_size=config.group_size,
              quantization_zero_point=config.zero_point, quantization_lm_head=config.lm_head,
              num_gpu_blocks_override=16, block_size=16, max_num_batched_tokens=32,
              enable_prefix_caching=True)
    model = llm.llm_engine.runner.model
    linears = [m for m in model.modules() if isinstance(m, QuantLinear) and m is not model.lm_head]
    assert len(linears) == 4 * 2  # qkv, o, gate_up, down of both layers
    assert isinstance(model.lm_head, QuantLinear) == config.lm_head  # float unless asked otherwise
    assert all(q.group_size == (config.group_size if config.method == "int4" else q.in_features)
               for q in linears)
    ps = prompts()
    outs = llm.generate([{"prompt_token_ids": p} for p in ps], GREEDY, use_tqdm=False)
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    llm.llm_engine.check_all_blocks_free()

    # w8a8 rounds every activation to int8, which turns float noise into code flips: whole-prompt vs
    # chunked attention (another summation order, ~1e-7) moved this test's logprobs by ~1e-2 and let a
    # 0.002-apart pair of tokens trade places. Its oracle takes the same steps: the linears are what differ.
    ref = dequantized_llm(path, config, **(PRESSURE if config.method == "w8a8" else {}))
    if config.lm_head:  # the oracle's head: the same formula over the (tied) head weight
        ref_model = ref.llm_engine.runner.model
        ref_model.lm_head = oracle_linear(ref_model.lm_head.weight.detach(), None, config)
    ref_outs = ref.generate([{"prompt_token_ids": p} for p in ps], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in ref_outs]
    # ...and the quantization did change the model (the oracle is not just the float model)
    plain = LLM(path, dtype="float32", num_gpu_blocks_override=256)
    plain_outs = plain.generate([{"prompt_token_ids": p} for p in ps], GREEDY, use_tqdm=False)
    if config.method == "int4":
        assert [o.outputs[0].token_ids for o in outs] != [o.outputs[0].token_ids for o in plain_outs]


@pytest.mark.parametrize("method,group_size,zero_point", [
    ("int4", 32, False), ("int4", 64, True), ("int8", None, False), ("w8a8", None, False),
    (None, None, False)])
def test_engine_weight_and_kv_bytes_equal_the_planners(method, group_size, zero_point, tiny_model):
    path = str(tiny_model("llama"))
    kwargs = {"quantization_group_size": group_size} if group_size else {}
    llm = LLM(path, dtype="bfloat16", cpu_linear="torch", quantization=method,
              quantization_zero_point=zero_point, num_gpu_blocks_override=8, **kwargs)
    engine = llm.llm_engine
    if method == "int4":  # every K (64, 128) is a multiple of the group: the planner's formula is exact
        expected = weight_memory(path, "int4", group_size=group_size, scale_dtype="fp32",
                                 zero_point=zero_point, quantize_embeddings=False).value
    elif method in ("int8", "w8a8"):  # per output channel: one fp32 scale per row, K differs per linear
        mc = engine.model_config
        h, i, q, kv = mc.hidden_size, int(mc.hf_config["intermediate_size"]), mc.num_heads * mc.head_dim, \
            mc.num_kv_heads * mc.head_dim
        shapes = [(q + 2 * kv, h), (h, q), (2 * i, h), (h, i)]  # (N, K) of qkv, o, gate_up, down
        linear = sum(weight_memory(n * k, "int8", group_size=k, scale_dtype="fp32").value for n, k in shapes)
        everything = weight_memory(path, "bf16").value
        float_linears = sum(2 * n * k for n, k in shapes)
        expected = everything + mc.num_layers * (linear - float_linears)
    else:
        expected = weight_memory(path, "bf16").value
    assert engine.weight_bytes == expected
    assert engine.kv_bytes_per_token == kv_cache_per_token(path, kv_dtype="bf16").value
    qlinears = [m for m in engine.runner.model.modules() if isinstance(m, QuantLinear)]
    assert sum(m.weight_bytes() for m in qlinears) == sum(m.quantized_weight().nbytes() for m in qlinears)


def test_quantized_weights_are_smaller(tiny_model):
    path = str(tiny_model("llama"))
    sizes = {m: LLM(path, dtype="bfloat16", cpu_linear="torch", quantization=m,
                    num_gpu_blocks_override=8).llm_engine.weight_bytes for m in (None, "int8", "int4")}
    assert sizes["int4"] < sizes["int8"] < sizes[None]


def test_quantizing_frees_each_float_weight(tiny_model):
    import gc
    import weakref

    from nanoserve.model.quantization.apply import quantize_model

    llm = LLM(str(tiny_model("llama")), dtype="float32", cpu_linear="torch", num_gpu_blocks_override=8)
    model = llm.llm_engine.runner.model
    floats = [weakref.ref(lin.weight) for layer in model.model.layers for _, _, lin in decoder_linears(layer)]
    quantize_model(model, QuantizationConfig("int8"))
    gc.collect()
    assert floats and all(ref() is None for ref in floats)
    assert model.lm_head.weight.dtype == torch.float32  # the head stays in the model dtype


def test_bad_combinations_are_clear_errors(tiny_model):
    with pytest.raises(InvalidRequestError, match="quantization must be one of"):
        EngineArgs(model="x", quantization="int3")
    with pytest.raises(InvalidRequestError, match="int4 only"):
        EngineArgs(model="x", quantization="int8", quantization_zero_point=True)
    with pytest.raises(InvalidRequestError, match="int4 only"):
        EngineArgs(model="x", quantization="w8a8", quantization_group_size=64)
    with pytest.raises(InvalidRequestError, match="quantization_group_size must be a positive"):
        EngineArgs(model="x", quantization="int4", quantization_group_size=0)


def test_a_checkpoint_format_is_not_applied_at_load(tiny_model, monkeypatch):
    from nanoserve.model.quantization import methods

    monkeypatch.setitem(methods.QUANT_METHODS, "gptq", methods.QuantMethod("gptq", "checkpoint", None))
    from nanoserve.model.quantization.apply import quantize_model

    llm = LLM(str(tiny_model("llama")), dtype="float32", cpu_linear="torch", num_gpu_blocks_override=8)
    with pytest.raises(ModelLoadError, match="checkpoint format"):
        quantize_model(llm.llm_engine.runner.model, QuantizationConfig("gptq"))


def test_quantization_flags_reach_engine_args():
    import argparse

    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    ns = parser.parse_args(["--model", "m", "--quantization", "int4", "--quantization-group-size", "64",
                            "--quantization-zero-point"])
    args = EngineArgs.from_cli_args(ns)
    knobs = (args.quantization, args.quantization_group_size, args.quantization_zero_point)
    assert knobs == ("int4", 64, True)
    assert EngineArgs.from_cli_args(parser.parse_args(["--model", "m"])).quantization is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--quantization", "int3"])
