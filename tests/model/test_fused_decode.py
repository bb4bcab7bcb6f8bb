"""The fused native decode step (model/fused_decode.py) against the per-op path it replaces.

Both paths call the same native kernels (kernel_table.h), so hidden states, logits and the K/V
written to the cache must be bit-identical, not merely close; greedy generations must be equal
token for token. The fallback conditions keep every other model on the per-op path.
"""

from __future__ import annotations

import pytest
import torch

from nanoserve import LLM, SamplingParams
from nanoserve.model import fused_decode
from nanoserve.model.attention import StepLayout
from nanoserve.model.attention.torch_backend import DECODE_ROWS_MAX_QUERY_LEN
from nanoserve.model.fused_decode import FusedDecoder, make_fused_decoder

pytestmark = pytest.mark.skipif(fused_decode.load_fused_decode() is None, reason="fused decode not built")


def _runner(path, **kw):
    llm = LLM(model=str(path), dtype=kw.pop("dtype", "bfloat16"), enable_prefix_caching=False, **kw)
    return llm, llm.llm_engine.runner


def _need_fused(runner) -> FusedDecoder:
    fused = runner.model.model.fused_decode
    if fused is None:  # e.g. a CPU without avx512_bf16: nothing to compare
        why = fused_decode.fused_decode_unavailable_reason(runner.model, runner.kernels)
        pytest.skip(f"no fused path: {why}")
    return fused


def _decode_layout(runner, ctx_lens: list[int]) -> StepLayout:
    """One decode per sequence; sequence i owns its own blocks, in a scrambled order."""
    bs, num_blocks = runner.block_size, runner.cache_config.num_blocks
    gen = torch.Generator().manual_seed(1)
    order = torch.randperm(num_blocks, generator=gen).tolist()
    tables, slots, used = [], [], 0
    for ctx in ctx_lens:
        n = -(-ctx // bs)
        table = order[used : used + n]
        used += n
        tables.append(table)
        slots.append(table[(ctx - 1) // bs] * bs + (ctx - 1) % bs)
    return StepLayout(list(range(len(ctx_lens) + 1)), ctx_lens, tables, slots, bs)


def _step_both_ways(runner, ctx_lens: list[int], seed: int = 0, layout=None, positions=None):
    """(hidden, logits, kv cache) of one decode step op by op, then fused, from the same random cache."""
    model, fused = runner.model, _need_fused(runner)
    gen = torch.Generator().manual_seed(seed)
    vocab = runner.model_config.vocab_size
    positions = torch.tensor([c - 1 for c in ctx_lens]) if positions is None else positions
    ids = torch.randint(0, vocab, (len(positions),), generator=gen)
    layout = _decode_layout(runner, ctx_lens) if layout is None else layout
    caches = [c for kv in runner.kv_caches for c in kv]  # every layer's k and v (model dtype: fused only)
    for c in caches:
        c.copy_(torch.randn(c.shape, generator=gen))  # the earlier tokens' K/V
    start = [c.clone() for c in caches]
    results = []
    with torch.inference_mode():
        for path in (None, fused):
            for c, s in zip(caches, start, strict=True):
                c.copy_(s)
            model.model.fused_decode = path
            meta = runner.attention_backend.build_metadata(layout)
            assert fused.applies(meta)
            hidden = model(ids, positions, meta)
            results.append((hidden, model.compute_logits(hidden), torch.stack([c.clone() for c in caches])))
    model.model.fused_decode = fused
    return results


# GQA groups 2 and 4 (MQA), tied and untied embeddings, llama3 rope, Qwen2's q/k/v biases; odd sizes:
# head_dim 24 (the generic attention loop), intermediate 100 and vocab 128 (partial 64-row blocks),
# hidden 72 with 6 heads over 2 kv heads (G = 3).
CASES = [
    ("llama", {}),
    ("llama_mqa", {}),
    ("llama_tied", {}),
    ("llama3_rope", {}),
    ("mistral", {}),
    ("qwen2", {}),
    ("qwen2", {"tie_word_embeddings": False, "intermediate_size": 100}),
    ("llama", {"hidden_size": 144, "num_attention_heads": 6, "num_key_value_heads": 2,
               "intermediate_size": 100}),
    ("llama", {"hidden_size": 72, "num_attention_heads": 3, "num_key_value_heads": 1, "mlp_bias": True,
               "attention_bias": True, "num_hidden_layers": 3}),
]


@pytest.mark.parametrize("variant, options", CASES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_fused_step_equals_the_per_op_step_bit_for_bit(variant, options, dtype, tiny_model):
    _, runner = _runner(tiny_model(variant, **options), dtype=dtype)
    for ctx_lens in ([1], [37], [5, 130, 17, 64]):
        (h0, l0, kv0), (h1, l1, kv1) = _step_both_ways(runner, ctx_lens)
        assert torch.equal(h0, h1), (ctx_lens, (h0.float() - h1.float()).abs().max())
        assert torch.equal(l0, l1)
        assert torch.equal(kv0, kv1)  # the new tokens' K/V went to the same slots with the same values


@pytest.mark.parametrize("variant, dtype", [("llama", "bfloat16"), ("qwen2", "bfloat16"),
                                            ("llama_tied", "bfloat16"), ("llama", "float32")])
def test_greedy_generation_is_the_same_with_and_without_the_fused_path(variant, dtype, tiny_model,
                                                                      monkeypatch):
    prompts = ["hello world", "abc", "sort 5 3 9 1 =", "x" * 40]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    llm, runner = _runner(tiny_model(variant), dtype=dtype)
    _need_fused(runner)
    fused = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    monkeypatch.setenv("NANOSERVE_DISABLE_FUSED_DECODE", "1")
    llm_ref, runner_ref = _runner(tiny_model(variant), dtype=dtype)
    assert runner_ref.model.model.fused_decode is None
    assert [o.outputs[0].token_ids for o in llm_ref.generate(prompts, params, use_tqdm=False)] == fused


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_decode_lists_equals_the_step_metadata_path(dtype, tiny_model):
    """The draft model's feedback forwards (FusedDecoder.decode_lists, no step metadata) give the bits
    the metadata path gives, and write the same K/V."""
    _, runner = _runner(tiny_model("llama"), dtype=dtype)
    fused = _need_fused(runner)
    ctx_lens = [5, 37, 130, 1]
    layout = _decode_layout(runner, ctx_lens)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, runner.model_config.vocab_size, (len(ctx_lens),), generator=gen)
    positions = torch.tensor([c - 1 for c in ctx_lens])
    caches = [c for kv in runner.kv_caches for c in kv]
    for c in caches:
        c.copy_(torch.randn(c.shape, generator=gen))
    before = [c.clone() for c in caches]
    h0 = fused(ids, positions, runner.attention_backend.build_metadata(layout))
    kv0 = [c.clone() for c in caches]
    for c, b in zip(caches, before, strict=True):
        c.copy_(b)
    h1 = fused.decode_lists(ids.tolist(), positions.tolist(), layout.block_tables, runner.block_size)
    assert torch.equal(h0, h1)
    assert all(torch.equal(a, b) for a, b in zip(kv0, caches, strict=True))


def test_mixed_and_prefill_steps_take_the_per_op_path(tiny_model, monkeypatch):
    from nanoserve.model.attention import torch_backend

    monkeypatch.setattr(torch_backend, "DECODE_ROWS_MAX_CONTEXT", 0)  # the chunks below are short
    _, runner = _runner(tiny_model("llama"))
    fused = _need_fused(runner)
    bs = runner.block_size
    n = DECODE_ROWS_MAX_QUERY_LEN + 2  # a chunk longer than the backend turns into decode rows
    chunk_slots = [bs + i for i in range(n)]
    mixed = StepLayout([0, 1, 1 + n], [9, n], [[0], [1, 2]], [8, *chunk_slots], bs)
    assert not fused.applies(runner.attention_backend.build_metadata(mixed))
    prefill = StepLayout([0, n], [n], [[1, 2]], chunk_slots, bs)
    assert not fused.applies(runner.attention_backend.build_metadata(prefill))
    decodes = StepLayout([0, 1, 2], [9, 5], [[0], [1]], [8, bs + 4], bs)
    assert fused.applies(runner.attention_backend.build_metadata(decodes))
    # A short chunk over a cached context (a speculative verify) is decode rows, one per token: fused too.
    verify = StepLayout([0, 1, 4], [9, 7], [[0], [1]], [8, bs + 4, bs + 5, bs + 6], bs)
    assert fused.applies(runner.attention_backend.build_metadata(verify))
    (h0, l0, kv0), (h1, l1, kv1) = _step_both_ways(runner, [], layout=verify,
                                                   positions=torch.tensor([8, 4, 5, 6]))
    assert torch.equal(h0, h1) and torch.equal(l0, l1) and torch.equal(kv0, kv1)


@pytest.mark.parametrize(
    "variant, engine_args, why",
    [
        ("qwen3", {}, "q/k norms"),
        # the reference path of the quantized linears: no native kernel to call
        ("llama", {"quantization": "int8", "cpu_linear": "torch"}, "nor a native QuantLinear"),
        ("llama", {"cpu_linear": "torch"}, "neither a packed FastLinear"),
        ("llama", {"dtype": "float32", "cpu_linear": "torch"}, "neither a packed FastLinear"),
        # quantized linears compute in bf16: a float32 model keeps their reference path
        ("llama", {"dtype": "float32", "quantization": "int8"}, "nor a native QuantLinear"),
        ("llama", {"attention_backend": "torch"}, "attention backend"),
        ("llama", {"kv_cache_dtype": "int8"}, "KV cache not of the model's dtype"),
        ("llama", {"kv_cache_dtype": "fp8_e4m3"}, "KV cache not of the model's dtype"),
    ],
)
def test_models_the_fused_path_cannot_serve_keep_the_per_op_path(variant, engine_args, why, tiny_model):
    llm, runner = _runner(tiny_model(variant), **engine_args)
    assert runner.model.model.fused_decode is None
    assert why in fused_decode.fused_decode_unavailable_reason(runner.model, runner.kernels)
    out = llm.generate(["hello"], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def test_the_environment_switch_and_a_quantized_kv_cache_turn_it_off(tiny_model, monkeypatch):
    _, runner = _runner(tiny_model("llama"))
    _need_fused(runner)
    attn = runner.model.model.layers[0].self_attn
    attn.k_cache = attn.k_cache.to(torch.int8)  # what a quantized KV cache would bind
    assert "KV cache" in fused_decode.fused_decode_unavailable_reason(runner.model, runner.kernels)
    assert make_fused_decoder(runner.model, runner.kernels) is None
    monkeypatch.setenv("NANOSERVE_DISABLE_FUSED_DECODE", "1")
    assert "NANOSERVE_DISABLE_FUSED_DECODE" in fused_decode.fused_decode_unavailable_reason(
        runner.model, runner.kernels
    )


# Quantized decoder linears on their native kernels (quant_kernels): int8 per channel, int4 per group
# symmetric and with zero points (K % 48 != 0: a short last group), w8a8 (VNNI), a quantized lm_head.
QUANT_CASES = [
    ("llama", {"quantization": "int8"}),
    ("qwen2", {"quantization": "int8", "quantization_lm_head": True}),
    ("llama", {"quantization": "int4", "quantization_group_size": 32}),
    ("llama", {"quantization": "int4", "quantization_group_size": 32, "quantization_zero_point": True}),
    ("qwen2", {"quantization": "int4", "quantization_group_size": 48, "quantization_zero_point": True}),
    ("llama", {"quantization": "w8a8"}),
    ("qwen2", {"quantization": "w8a8"}),
]
QUANT_IDS = ["int8", "int8-lm-head", "int4-g32", "int4-g32-zp", "int4-g48-zp-bias", "w8a8", "w8a8-bias"]


def _quantized_runner(path, options):
    """An engine over `path` quantized by `options`, every decoder linear on its native kernel."""
    from nanoserve.model.quantization.quant_linear import QuantLinear

    llm, runner = _runner(path, **options)
    layers = runner.model.model.layers
    linears = [m for layer in layers for m in layer.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 4 * len(layers)
    if any(q.backend != "native" for q in linears):  # e.g. a CPU without VNNI: nothing to compare
        pytest.skip("quantized linears on the reference path")
    assert fused_decode.fused_decode_unavailable_reason(runner.model, runner.kernels) is None
    return llm, runner


@pytest.mark.parametrize("variant, options", QUANT_CASES, ids=QUANT_IDS)
def test_quantized_fused_step_equals_the_per_op_step_bit_for_bit(variant, options, tiny_model):
    _, runner = _quantized_runner(tiny_model(variant), options)
    # 9 decodes: on Zen 4, w8a8 switches to its hybrid tiles from W8A8_HYBRID_ROWS (8) rows on
    for ctx_lens in ([1], [37], [5, 130, 17, 64], [3, 9, 20, 1, 7, 33, 2, 15, 16]):
        (h0, l0, kv0), (h1, l1, kv1) = _step_both_ways(runner, ctx_lens)
        assert torch.equal(h0, h1), (ctx_lens, (h0.float() - h1.float()).abs().max())
        assert torch.equal(l0, l1)
        assert torch.equal(kv0, kv1)


@pytest.mark.parametrize("tiles", ["hybrid", "vnni"])
def test_w8a8_fused_step_equals_the_per_op_step_with_either_tile_kind(tiles, tiny_model, monkeypatch):
    # The default tiles depend on the CPU (quant_kernels.w8a8_hybrid_pays): both kinds, whatever this is.
    from nanoserve.model import quant_kernels as qk

    rows = qk.W8A8_HYBRID_ROWS if tiles == "hybrid" else qk.W8A8_NO_HYBRID
    monkeypatch.setattr(qk, "W8A8_HYBRID_MIN_ROWS", rows)  # read when the fused step is built
    _, runner = _quantized_runner(tiny_model("qwen2"), {"quantization": "w8a8"})
    for ctx_lens in ([37], [3, 9, 20, 1, 7, 33, 2, 15, 16]):  # 9 rows: past the hybrid threshold
        (h0, l0, kv0), (h1, l1, kv1) = _step_both_ways(runner, ctx_lens)
        assert torch.equal(h0, h1), (ctx_lens, (h0.float() - h1.float()).abs().max())
        assert torch.equal(l0, l1)
        assert torch.equal(kv0, kv1)


@pytest.mark.parametrize("variant, options", QUANT_CASES[::2], ids=QUANT_IDS[::2])
def test_quantized_greedy_generation_is_the_same_with_and_without_the_fused_path(
    variant, options, tiny_model, monkeypatch
):
    prompts = ["hello world", "abc", "sort 5 3 9 1 =", "x" * 40]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    llm, runner = _quantized_runner(tiny_model(variant), options)
    _need_fused(runner)
    fused = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    one = llm.generate(prompts[:1], params, use_tqdm=False)[0].outputs[0].token_ids  # batch 1
    monkeypatch.setenv("NANOSERVE_DISABLE_FUSED_DECODE", "1")
    llm_ref, runner_ref = _runner(tiny_model(variant), **options)
    assert runner_ref.model.model.fused_decode is None
    per_op = [o.outputs[0].token_ids for o in llm_ref.generate(prompts, params, use_tqdm=False)]
    assert per_op == fused
    assert one == per_op[0]


def test_a_quantized_linear_with_an_input_permutation_keeps_the_per_op_path(tiny_model):
    options = {"quantization": "int4", "quantization_group_size": 32}
    _, runner = _quantized_runner(tiny_model("llama"), options)
    down = runner.model.model.layers[1].mlp.down_proj
    down.input_perm = torch.arange(down.in_features)  # GPTQ act-order: a gather before the product
    assert "act-order" in fused_decode.fused_decode_unavailable_reason(runner.model, runner.kernels)
    assert make_fused_decoder(runner.model, runner.kernels) is None


def test_a_model_mixing_bf16_and_quantized_linears_takes_the_fused_path(tiny_model):
    """As a GGUF whose stacked projection mixes types loads it: that projection a bf16 FastLinear."""
    from nanoserve.model.cpu_linear import FastLinear
    from nanoserve.model.quantization.quant_linear import QuantLinear

    _, runner = _runner(tiny_model("llama"))
    _need_fused(runner)
    mlp = runner.model.model.layers[0].mlp
    quantized = QuantLinear.from_linear(_float_copy(mlp.down_proj), _int4_g32)
    quantized.prepare("auto", torch.bfloat16)
    if quantized.backend != "native":
        pytest.skip("quantized linears on the reference path")
    mlp.down_proj = quantized
    assert type(runner.model.model.layers[0].self_attn.qkv_proj) is FastLinear
    assert fused_decode.fused_decode_unavailable_reason(runner.model, runner.kernels) is None
    runner.model.model.fused_decode = make_fused_decoder(runner.model, runner.kernels)
    (h0, l0, kv0), (h1, l1, kv1) = _step_both_ways(runner, [5, 130, 17])
    assert torch.equal(h0, h1) and torch.equal(l0, l1) and torch.equal(kv0, kv1)


def _float_copy(linear):
    """A plain (unprepared) FastLinear with `linear`'s weight and bias, for QuantLinear.from_linear."""
    from nanoserve.model.cpu_linear import FastLinear, unpack_weight

    copy = FastLinear(linear.in_features, linear.output_sizes, bias=linear.bias is not None)
    w = unpack_weight(linear._packed, linear.out_features, linear.in_features)  # [N, K] bf16
    copy.weight.data = w.clone()
    if linear.bias is not None:
        copy.bias.data = linear.bias.detach().clone()
    return copy


def _int4_g32(w):
    from nanoserve.model.quantization.methods import quantize_int4

    return quantize_int4(w, 32, zero_point=True)


def _demo_prompts(n_per_task: int) -> list[str]:
    from nanoserve.demo_tasks import TASKS, held_out_problems

    return [p.prompt for task in TASKS for p in held_out_problems(task, n_per_task)]


@pytest.mark.parametrize("dtype", ["bfloat16", "auto"])  # auto: the checkpoint's float32
def test_demo_model_greedy_output_is_identical_on_100_problems(dtype, monkeypatch):
    from nanoserve.demo import default_model

    prompts = _demo_prompts(20)  # 20 of each of the 5 tasks
    params = SamplingParams(temperature=0, max_tokens=24)
    llm, runner = _runner(default_model(), dtype=dtype)
    _need_fused(runner)
    fused = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    monkeypatch.setenv("NANOSERVE_DISABLE_FUSED_DECODE", "1")
    llm_ref, _ = _runner(default_model(), dtype=dtype)
    per_op = [o.outputs[0].token_ids for o in llm_ref.generate(prompts, params, use_tqdm=False)]
    assert per_op == fused
    # batch 1 as well: every step then is a single decode
    for prompt in prompts[::25]:
        one = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
        assert one == per_op[prompts.index(prompt)]


def test_smollm2_chat_answers_are_identical(smollm2, monkeypatch):
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Write a haiku about the sea."}],
        [{"role": "user", "content": "List three prime numbers."}],
    ]
    params = SamplingParams(temperature=0, max_tokens=32)
    llm, runner = _runner(smollm2)
    _need_fused(runner)
    fused = [o.outputs[0].token_ids for o in llm.chat(conversations, params, use_tqdm=False)]
    one = llm.chat(conversations[:1], params, use_tqdm=False)[0].outputs[0].token_ids  # batch 1
    monkeypatch.setenv("NANOSERVE_DISABLE_FUSED_DECODE", "1")
    llm_ref, _ = _runner(smollm2)
    per_op = [o.outputs[0].token_ids for o in llm_ref.chat(conversations, params, use_tqdm=False)]
    assert per_op == fused
    assert one == per_op[0]
    assert "Paris" in llm.get_tokenizer().decode(fused[0])


def test_smollm2_q4_1_gguf_takes_the_fused_path_with_identical_answers(smollm2, monkeypatch):
    """The GGUF as --model: its decoder linears are int4 group-32 QuantLinears with float zero points."""
    from nanoserve.models_cache import gguf_path, named_model

    gguf = str(gguf_path(named_model("smollm2")))
    conversations = [[{"role": "user", "content": "What is the capital of France?"}],
                     [{"role": "user", "content": "List three prime numbers."}]]
    params = SamplingParams(temperature=0, max_tokens=24)
    llm, runner = _runner(gguf)
    _need_fused(runner)
    assert runner.model.model.layers[0].mlp.down_proj.zero_point
    fused = [o.outputs[0].token_ids for o in llm.chat(conversations, params, use_tqdm=False)]
    monkeypatch.setenv("NANOSERVE_DISABLE_FUSED_DECODE", "1")
    llm_ref, _ = _runner(gguf)
    assert [o.outputs[0].token_ids for o in llm_ref.chat(conversations, params, use_tqdm=False)] == fused


def test_the_mlp_in_row_chunks_gives_the_same_bits(tiny_model, monkeypatch):
    """A step longer than layers.MLP_CHUNK_BYTES allows goes through the MLP in row chunks (the
    allocator's mmap threshold), per op and fused: the same bits as in one piece."""
    from nanoserve.model import layers

    path = tiny_model("llama")
    ctx_lens = [5, 130, 17, 64, 1, 9, 33]
    _, runner = _runner(path)
    whole = _step_both_ways(runner, ctx_lens)
    two_i = 2 * runner.model.model.layers[0].mlp.intermediate
    monkeypatch.setattr(layers, "MLP_CHUNK_BYTES", 3 * two_i * 2)  # 3 bf16 rows of [2I]
    monkeypatch.setattr(fused_decode, "MLP_CHUNK_BYTES", layers.MLP_CHUNK_BYTES)
    rows = []
    forward = layers.GatedMLP._forward
    monkeypatch.setattr(layers.GatedMLP, "_forward",
                        lambda self, x: rows.append(x.shape[0]) or forward(self, x))
    _, runner = _runner(path)
    assert _need_fused(runner).native.mlp_chunk_bytes == 3 * two_i * 2
    rows.clear()  # the start-up warm-up's forwards
    chunked = _step_both_ways(runner, ctx_lens)
    assert rows and max(rows) == 3 and sum(rows) % len(ctx_lens) == 0  # the per-op path went in chunks
    for hidden, logits, kv in chunked:
        assert torch.equal(hidden, whole[0][0]) and torch.equal(logits, whole[0][1])
        assert torch.equal(kv, whole[0][2])
