"""Pre-quantized checkpoints through the whole engine: tiny random Llama and Qwen2 models quantized into
each format's exact on-disk layout (GPTQ desc_act false and true, AWQ GEMM, compressed-tensors W4A16
pack-quantized and W8A8 int-quantized), loaded by LLM with no flag; greedy tokens equal an fp32 engine
whose linears compute with the same dequantized weights, under chunked prefill, prefix caching and
forced preemption; the weights held are fewer bytes than the float model's; bad combinations are clear
errors."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from awq_format import awq_config, awq_pack, awq_quantize
from engine_oracle import GREEDY, PRESSURE, oracle_llm, prompts
from gptq_format import gptq_config, gptq_dequantize, gptq_pack, gptq_quantize
from quant_checkpoints import LayerQuantizer, StoredLinear, write_quantized_model

from nanoserve import LLM
from nanoserve.errors import ModelLoadError
from nanoserve.model import loader
from nanoserve.model.quantization.quant_linear import QuantLinear

GROUP = 32  # the tiny models' K is 64 or 128: several groups per row, so act-order really permutes


def act_order_seed(prefix: str) -> int:
    """q/k/v (and gate/up) see one input, so GPTQ's act-order gives them one column order."""
    shared = prefix.replace("k_proj", "q_proj").replace("v_proj", "q_proj").replace("up_proj", "gate_proj")
    return zlib.crc32(shared.encode())


def gptq(desc_act: bool, sym: bool, fmt: str, zero_bias: bool = False, lm_head: bool = False):
    def quantize(prefix: str, w: torch.Tensor):
        codes, scales, zeros, g_idx = gptq_quantize(w, 4, GROUP, sym, desc_act, act_order_seed(prefix))
        qweight, qzeros = gptq_pack(codes, zeros, 4, v1=fmt == "gptq")
        saved = {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": g_idx}
        if zero_bias:  # some GPTQ writers store a zero bias for layers that have none
            saved["bias"] = torch.zeros(w.shape[0], dtype=torch.float16)
        return saved, StoredLinear(gptq_dequantize(codes, scales, zeros, g_idx))

    config = gptq_config(4, GROUP, desc_act, sym, checkpoint_format=fmt, lm_head=lm_head)
    return quantize, config, ("lm_head",) if lm_head else ()


def awq():
    def quantize(prefix: str, w: torch.Tensor):
        codes, scales, zeros = awq_quantize(w, GROUP)
        qweight, qzeros = awq_pack(codes, zeros)
        g = torch.arange(w.shape[1]) // GROUP
        weight = (scales.float()[g] * (codes.float() - zeros[g])).t()  # AWQ's W = s * (q - z), [N, K]
        return {"qweight": qweight, "qzeros": qzeros, "scales": scales}, StoredLinear(weight)

    return quantize, awq_config(group_size=GROUP), ()


def ct_w4a16():
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from ct_format import compress, ct_quantization_config, scheme

    s = scheme("W4A16", group_size=GROUP, symmetric=False)

    def quantize(prefix: str, w: torch.Tensor):
        # an fp32 model keeps fp32 scales; the library's own dequantization is the oracle
        saved, library_weight = compress(w, s, PackedQuantizationCompressor, scale_dtype=torch.float32)
        return saved, StoredLinear(library_weight.float())

    return quantize, ct_quantization_config([s], "pack-quantized"), ()


def ct_w8a8():
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.naive_quantized.base import IntQuantizationCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from ct_format import compress, ct_quantization_config

    s = preset_name_to_scheme("W8A8", ["Linear"])

    def quantize(prefix: str, w: torch.Tensor):
        saved, library_weight = compress(w, s, IntQuantizationCompressor, scale_dtype=torch.float32)
        scales = saved["weight_scale"].float().reshape(-1)  # [N]
        return saved, StoredLinear(library_weight.float(), saved["weight"], scales)

    return quantize, ct_quantization_config([s], "int-quantized"), ()


# id -> (tiny model variant, format builder, the method the engine reports, act-order expected)
CASES: dict[str, tuple[str, Callable[[], tuple[LayerQuantizer, dict, tuple]], str, bool]] = {
    "gptq-sym": ("llama", lambda: gptq(False, True, "gptq", zero_bias=True), "gptq", False),
    "gptq-desc_act-asym-qwen2": ("qwen2", lambda: gptq(True, False, "gptq_v2"), "gptq", True),
    "gptq-desc_act-lm_head": ("llama", lambda: gptq(True, True, "gptq", lm_head=True), "gptq", True),
    "awq-qwen2": ("qwen2", awq, "awq", False),
    "ct-w4a16-qwen2": ("qwen2", ct_w4a16, "compressed-tensors", False),
    "ct-w8a8": ("llama", ct_w8a8, "compressed-tensors", False),
}


def quantized_checkpoint(case: str, tiny_model, out: Path) -> tuple[Path, Path, dict[str, StoredLinear]]:
    variant, build, _, _ = CASES[case]
    src = tiny_model(variant)
    quantize, config, also = build()
    return src, out, write_quantized_model(src, out, quantize, config, also)


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_greedy_equals_the_dequantized_reference_under_pressure(case, tiny_model, tmp_path):
    src, path, stored = quantized_checkpoint(case, tiny_model, tmp_path / "quantized")
    _, _, method, act_order = CASES[case]
    # No quantization flag: config.json's quantization_config says it. An fp32 model runs the reference
    # path (the native kernels compute in bf16; test_native_reference_engine.py compares the two).
    llm = LLM(str(path), **PRESSURE)
    engine = llm.llm_engine
    assert engine.model_config.quantization.method == method
    model = engine.runner.model
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 4 * 2  # qkv, o, gate_up, down of both layers
    assert all((q.input_perm is not None) == act_order for q in linears)
    assert all(q.act_quant == (case == "ct-w8a8") for q in linears)
    assert not isinstance(model.lm_head, QuantLinear)  # a quantized head is served dequantized
    ps = prompts()
    outs = llm.generate([{"prompt_token_ids": p} for p in ps], GREEDY, use_tqdm=False)
    stats = engine.get_stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    engine.check_all_blocks_free()

    ref = oracle_llm(str(src), stored)
    ref_outs = ref.generate([{"prompt_token_ids": p} for p in ps], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in ref_outs]
    plain = LLM(str(src), dtype="float32", num_gpu_blocks_override=64)
    assert engine.weight_bytes < plain.llm_engine.weight_bytes


def test_quantized_linears_are_never_materialized_in_float(tiny_model, tmp_path, monkeypatch):
    """Peak memory: the decoder linears of a quantized checkpoint get no float storage at any point."""
    _, path, _ = quantized_checkpoint("gptq-sym", tiny_model, tmp_path / "q")
    materialized: list[str] = []
    original = loader._materialize

    def spy(model, device, dtype):
        materialized.extend(n for n, p in model.named_parameters() if p.is_meta)
        original(model, device, dtype)

    monkeypatch.setattr(loader, "_materialize", spy)
    LLM(str(path), cpu_linear="torch", num_gpu_blocks_override=8)
    assert "model.embed_tokens.weight" in materialized and "lm_head.weight" in materialized
    assert not [n for n in materialized if n.endswith("proj.weight")]


def test_quantization_flag_on_a_quantized_checkpoint(tiny_model, tmp_path):
    src, path, _ = quantized_checkpoint("gptq-sym", tiny_model, tmp_path / "q")
    llm = LLM(str(path), quantization="gptq", cpu_linear="torch", num_gpu_blocks_override=8)
    assert llm.llm_engine.model_config.quantization.method == "gptq"
    with pytest.raises(ModelLoadError, match="already quantized \\(gptq.*quantization='int8' cannot"):
        LLM(str(path), quantization="int8", num_gpu_blocks_override=8)
    with pytest.raises(ModelLoadError, match="already quantized \\(gptq"):
        LLM(str(path), quantization="awq", num_gpu_blocks_override=8)
    with pytest.raises(ModelLoadError, match="no quantization_config"):
        LLM(str(src), quantization="gptq", num_gpu_blocks_override=8)


def test_a_partly_quantized_stacked_projection_is_refused(tiny_model, tmp_path):
    quantize, config, _ = gptq(False, True, "gptq")

    def all_but_k(prefix: str, w: torch.Tensor):
        if prefix.endswith("k_proj"):
            return {"weight": w}, StoredLinear(w)  # left in float
        return quantize(prefix, w)

    path = tmp_path / "q"
    write_quantized_model(tiny_model("llama"), path, all_but_k, config)
    with pytest.raises(ModelLoadError, match="quantizes .*q_proj.* but not .*k_proj.*quantized alike"):
        LLM(str(path), num_gpu_blocks_override=8)


def test_a_bad_quantization_config_is_named_before_loading(tiny_model, tmp_path):
    _, path, _ = quantized_checkpoint("gptq-sym", tiny_model, tmp_path / "q")
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"]["bits"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="GPTQ with bits=3"):
        LLM(str(path), num_gpu_blocks_override=8)
