"""A quantized .gguf served as it is stored: decoder linears read into QuantLinears (quantization "gguf",
no flag), matching the dequantizing path; mixed types inside one stacked projection; SmolLM2's Q4_1."""

from __future__ import annotations

import time

import gguf
import numpy as np
import pytest
import torch

from nanoserve import LLM, SamplingParams
from nanoserve.config import EngineArgs
from nanoserve.errors import ModelLoadError
from nanoserve.model import gguf_loader
from nanoserve.model.cpu_linear import FastLinear, unpack_weight
from nanoserve.model.loader import load_model, load_model_config
from nanoserve.model.quantization.apply import decoder_linears
from nanoserve.model.quantization.gguf_quant import BLOCK_SIZES
from nanoserve.model.quantization.quant_linear import QuantLinear
from nanoserve.model.weight_bytes import model_weight_bytes
from nanoserve.models_cache import gguf_path, named_model

HIDDEN, INTER, HEADS, KV_HEADS, VOCAB = 256, 512, 4, 2, 64
# per layer: the GGUF type of q, k, v, o, gate, up, down. Layer 0 mixes bits and group sizes inside
# qkv (Q4_0 32, Q8_0 32, Q6_K 16) and gate/up; layer 1 has affine K-quants and an F16 gate beside a
# quantized up: that stack cannot be one QuantLinear and loads dequantized.
LAYER_TYPES = [
    ("Q4_0", "Q8_0", "Q6_K", "Q5_0", "Q3_K", "Q8_0", "Q4_0"),
    ("Q4_K", "Q5_K", "Q2_K", "Q4_1", "F16", "Q5_1", "Q6_K"),
]
GGUF_NAMES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# byte offsets of the fp16 scale fields of the K-quant blocks (ggml-common.h)
K_FP16_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _tensor(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """(data, add_tensor kwargs) of a [N, K] weight stored as `kind`."""
    values = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    if kind == "F16":
        return values.astype(np.float16), {}
    qtype = gguf.GGMLQuantizationType[kind]
    if kind not in K_FP16_FIELDS:
        return gguf.quants.quantize(values, qtype), {"raw_dtype": qtype}
    items, nbytes = BLOCK_SIZES[kind]  # the gguf package cannot quantize K-quants: random valid blocks
    blocks = rng.integers(0, 256, (shape[0] * shape[1] // items, nbytes), dtype=np.uint8)
    for at in K_FP16_FIELDS[kind]:
        scales = rng.uniform(1e-4, 3e-4, len(blocks)).astype(np.float16)
        blocks[:, at:at + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(shape[0], -1), {"raw_dtype": qtype}


def write_mixed_gguf(path) -> None:
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(len(LAYER_TYPES))
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_token_types([1] * VOCAB)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_merges([])
    w.add_eos_token_id(2)
    w.add_tensor("token_embd.weight", rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    w.add_tensor("output.weight", (0.1 * rng.standard_normal((VOCAB, HIDDEN))).astype(np.float16))
    head_dim = HIDDEN // HEADS
    kv = KV_HEADS * head_dim
    shapes = [(HIDDEN, HIDDEN), (kv, HIDDEN), (kv, HIDDEN), (HIDDEN, HIDDEN),
              (INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)]
    for i, kinds in enumerate(LAYER_TYPES):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
        for name, kind, shape in zip(GGUF_NAMES, kinds, shapes, strict=True):
            data, kwargs = _tensor(kind, shape, rng)
            w.add_tensor(f"blk.{i}.{name}.weight", data, **kwargs)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def mixed_gguf(tmp_path):
    path = tmp_path / "mixed.gguf"
    write_mixed_gguf(path)
    return path


@pytest.fixture
def dequantized(monkeypatch):
    """Within the test, a .gguf loads the old way: every tensor dequantized into the float model."""

    def use() -> None:
        monkeypatch.setattr(gguf_loader, "quantized_linear_names", lambda path, cfg: [])

    return use


def _load(path, **kwargs):
    mc = load_model_config(EngineArgs(model=str(path), **kwargs))
    return mc, load_model(mc, torch.device("cpu"), kwargs.get("cpu_linear", "auto"))


def _plain_weight(lin: FastLinear) -> torch.Tensor:
    """[N, K]: the weight as loaded (a prepared fp32 FastLinear keeps only its packed copy)."""
    if lin.weight is not None:
        return lin.weight.detach()
    return unpack_weight(lin._packed, lin.out_features, lin.in_features)


def test_mixed_types_load_quantized_and_match_the_dequantized_path(mixed_gguf, dequantized):
    mc, model = _load(mixed_gguf, dtype="float32")
    assert mc.quantization is not None and mc.quantization.method == "gguf"
    layers = [dict((attr, lin) for _, attr, lin in decoder_linears(layer)) for layer in model.model.layers]
    assert all(isinstance(lin, QuantLinear) for lin in layers[0].values())
    qkv = layers[0]["qkv_proj"]  # Q4_0 + Q8_0 + Q6_K: one 8-bit, group-16 linear
    assert (qkv.bits, qkv.group_size, qkv.output_sizes) == (8, 16, [256, 128, 128])
    assert isinstance(layers[1]["gate_up_proj"], FastLinear)  # F16 gate: dequantized as a whole
    assert all(isinstance(lin, QuantLinear) for a, lin in layers[1].items() if a != "gate_up_proj")

    dequantized()
    mc_float, floats = _load(mixed_gguf, dtype="float32")
    assert mc_float.quantization is None
    float_layers = [dict((a, lin) for _, a, lin in decoder_linears(layer)) for layer in floats.model.layers]
    x = torch.randn(5, INTER)
    for i, (got, want) in enumerate(zip(layers, float_layers, strict=True)):
        for attr, lin in got.items():
            expected = _plain_weight(want[attr])
            weight = lin.dequantize() if isinstance(lin, QuantLinear) else _plain_weight(lin)
            affine = any(k in ("Q4_K", "Q5_K", "Q2_K", "Q4_1", "Q5_1") for k in LAYER_TYPES[i])
            if not affine:  # symmetric types: bit for bit, q/k un-permutation included
                assert torch.equal(weight, expected), (i, attr)
            else:  # the zero point -offset/scale rounded to fp32 (gguf_quant._affine): last bits only
                torch.testing.assert_close(weight, expected, rtol=0, atol=1e-6)
            xs = x[:, :lin.in_features]
            torch.testing.assert_close(lin(xs), xs @ expected.t(), rtol=1e-5, atol=1e-5)
    assert model_weight_bytes(model) < model_weight_bytes(floats)


def test_mixed_gguf_greedy_equals_the_dequantized_path(mixed_gguf, dequantized):
    """Through the engine in fp32: the same tokens as the dequantizing loader (chunked prefill too)."""
    prompts = [{"prompt_token_ids": ids} for ids in ([5, 9, 13], list(range(3, 40)), [7] * 20)]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    answers = []
    for variant in ("quantized", "dequantized"):
        if variant == "dequantized":
            dequantized()
        llm = LLM(str(mixed_gguf), dtype="float32", max_num_batched_tokens=16, num_gpu_blocks_override=64)
        assert (llm.llm_engine.model_config.quantization is None) == (variant == "dequantized")
        answers.append([o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)])
        del llm
    assert answers[0] == answers[1] and all(len(a) == 8 for a in answers[0])


def test_quantization_flags_on_a_gguf(mixed_gguf, tmp_path):
    named = load_model_config(EngineArgs(model=str(mixed_gguf), quantization="gguf"))
    assert named.quantization.method == "gguf"
    with pytest.raises(ModelLoadError, match="already quantized .*int8"):
        load_model_config(EngineArgs(model=str(mixed_gguf), quantization="int8"))
    # tensor parallelism: the sharded layers are float, so the file is dequantized (no error)
    assert load_model_config(EngineArgs(model=str(mixed_gguf), tensor_parallel_size=2)).quantization is None


CHAT = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three colors."}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
]


@pytest.fixture(scope="module")
def smollm2_gguf(smollm2):
    return gguf_path(named_model("smollm2"))


def test_smollm2_gguf_loads_quantized_and_smaller(smollm2_gguf, dequantized):
    """All 210 decoder linears (30 layers x q/k/v/o/gate/up/down) become 120 stacked QuantLinears of
    4-bit group-32 codes with zero points; the weights held are well below the dequantized model's."""
    start = time.perf_counter()
    mc, model = _load(smollm2_gguf, dtype="bfloat16")
    quantized_s = time.perf_counter() - start
    linears = [lin for layer in model.model.layers for _, _, lin in decoder_linears(layer)]
    assert mc.quantization.method == "gguf" and len(linears) == 120
    assert all(isinstance(lin, QuantLinear) for lin in linears)
    assert sum(len(lin.output_sizes) for lin in linears) == 210
    assert all((lin.bits, lin.group_size, lin.zero_point) == (4, 32, True) for lin in linears)
    quantized_bytes = model_weight_bytes(model)
    del model
    dequantized()
    start = time.perf_counter()
    _, floats = _load(smollm2_gguf, dtype="bfloat16")
    float_s = time.perf_counter() - start
    float_bytes = model_weight_bytes(floats)
    print(f"SmolLM2 Q4_1 bf16: quantized {quantized_bytes / 2**20:.1f} MiB in {quantized_s:.1f} s, "
          f"dequantized {float_bytes / 2**20:.1f} MiB in {float_s:.1f} s")
    assert quantized_bytes < 0.7 * float_bytes


def test_smollm2_gguf_fp32_greedy_equals_the_dequantized_path(smollm2_gguf, dequantized):
    """fp32, reference path: the QuantLinears dequantize what gguf_tensors produces (to the last ulp
    of Q4_1's zero points), so greedy chat answers are the same tokens."""
    params = SamplingParams(temperature=0, max_tokens=16)
    answers = []
    for variant in ("quantized", "dequantized"):
        if variant == "dequantized":
            dequantized()
        llm = LLM(str(smollm2_gguf), dtype="float32", max_num_batched_tokens=32)
        assert (llm.llm_engine.model_config.quantization is None) == (variant == "dequantized")
        answers.append([o.outputs[0].token_ids for o in llm.chat(CHAT, params, use_tqdm=False)])
        del llm
    assert answers[0] == answers[1] and all(len(a) > 0 for a in answers[0])


def test_smollm2_gguf_bf16_native_answers(smollm2_gguf):
    """bf16 on the native kernels, batch 1: the capital of France is Paris. (With no system prompt the
    first token is a near-tie even in fp32, "The" -1.88 vs "L" -1.97 nats, which bf16 rounding can
    flip into a French digression; with it the margin is ~1.8 nats.)"""
    llm = LLM(str(smollm2_gguf), dtype="bfloat16")
    model = llm.llm_engine.runner.model
    backends = {lin.backend for layer in model.model.layers for _, _, lin in decoder_linears(layer)}
    from nanoserve.model.quant_kernels import load_quant_kernels

    assert backends == ({"native"} if load_quant_kernels() else {"torch"})
    question = [{"role": "system", "content": "You answer in one short sentence."},
                {"role": "user", "content": "What is the capital of France?"}]
    out = llm.chat([question], SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)[0]
    assert "Paris" in out.outputs[0].text
