"""The engine's fast paths agree with the plain ones: fused q/k/v and gate/up weights equal the
separate projections, cpu_linear's bf16 paths keep greedy tokens, and the native decode-attention
kernel equals the PyTorch decode path (and the engine still matches without it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from nanoserve import LLM, SamplingParams
from nanoserve.config import EngineArgs
from nanoserve.errors import InvalidRequestError
from nanoserve.model import cpu_linear, native_kernels
from nanoserve.model.attention import CpuNativeAttentionBackend, StepLayout, TorchAttentionBackend
from nanoserve.model.cpu_linear import FastLinear
from nanoserve.model.kernels import NativeCpuKernels

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
PROMPTS = [[5, 9, 33, 7, 100, 3], list(range(10, 67)), [42], list(range(10, 40)) + [7, 7]]


def _generate(path, **kw) -> list[list[int]]:
    llm = LLM(str(path), num_gpu_blocks_override=64, block_size=4, max_num_batched_tokens=24, **kw)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    llm.llm_engine.check_all_blocks_free()
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("variant", ["qwen2", "llama"])  # with and without q/k/v bias
def test_fused_projections_equal_the_checkpoint_projections(variant, tiny_model):
    path = tiny_model(variant)
    llm = LLM(str(path), num_gpu_blocks_override=16, cpu_linear="torch")
    layer = llm.llm_engine.runner.model.model.layers[1]
    w = load_file(str(path / "model.safetensors"))
    x = torch.randn(5, w["model.layers.1.self_attn.q_proj.weight"].shape[1])
    p = "model.layers.1."
    expected = torch.cat(
        [
            F.linear(x, w[f"{p}self_attn.{n}_proj.weight"], w.get(f"{p}self_attn.{n}_proj.bias"))
            for n in "qkv"
        ],
        dim=-1,
    )
    assert layer.self_attn.qkv_proj.backend == "torch"
    assert not hasattr(layer.self_attn, "q_proj"), "the separate projections are dropped after fusing"
    torch.testing.assert_close(layer.self_attn.qkv_proj(x), expected, rtol=1e-6, atol=1e-6)
    gate_up = layer.mlp.gate_up_proj(x)
    expected = torch.cat([F.linear(x, w[f"{p}mlp.{n}_proj.weight"]) for n in ("gate", "up")], dim=-1)
    torch.testing.assert_close(gate_up, expected, rtol=1e-6, atol=1e-6)
    assert layer.mlp.gate_up_proj.output_sizes == [w[f"{p}mlp.gate_proj.weight"].shape[0]] * 2


def test_stacked_linear_shards_are_row_slices_of_one_weight():
    linear = FastLinear(4, [6, 2, 2], bias=True)
    weights, biases = [torch.randn(n, 4) for n in (6, 2, 2)], [torch.randn(n) for n in (6, 2, 2)]
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        linear.shard("weight", i).copy_(w)
        linear.shard("bias", i).copy_(b)
    assert linear.shard("weight", 1).data_ptr() == linear.weight[6:8].data_ptr(), "a view, not a copy"
    linear.prepare("torch")
    x = torch.randn(3, 4)
    expected = torch.cat([F.linear(x, w, b) for w, b in zip(weights, biases, strict=True)], dim=-1)
    torch.testing.assert_close(linear(x), expected)


@pytest.mark.parametrize("variant", ["qwen2", "llama_mqa"])
def test_bf16_fast_linear_keeps_the_plain_paths_greedy_tokens(variant, tiny_model):
    path = tiny_model(variant)
    plain = _generate(path, dtype="bfloat16", cpu_linear="torch")
    fast_llm = LLM(str(path), dtype="bfloat16", num_gpu_blocks_override=8, cpu_linear="auto")
    backends = {m.backend for m in fast_llm.llm_engine.runner.model.modules() if isinstance(m, FastLinear)}
    del fast_llm
    if cpu_linear.mkldnn_available() or cpu_linear.load_avx512_kernel() is not None:
        assert backends <= {"avx512", "mkldnn", "hybrid"}, f"bf16 linears took no fast path: {backends}"
    fast = _generate(path, dtype="bfloat16", cpu_linear="auto")
    assert fast == plain, f"cpu_linear paths {backends} changed greedy tokens"
    assert all(len(t) == GREEDY.max_tokens for t in fast)


def test_cpu_linear_flag_is_validated(tiny_model):
    with pytest.raises(InvalidRequestError, match="cpu_linear"):
        EngineArgs(model=str(tiny_model("llama")), cpu_linear="cuda")


def _random_decode_case(dtype, b, kvh, g, d, block_size=16, num_blocks=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(kvh, num_blocks, block_size, d, generator=gen).to(dtype)
    v_cache = torch.randn(kvh, num_blocks, block_size, d, generator=gen).to(dtype)
    ctx = torch.randint(1, 8 * block_size, (b,), generator=gen)
    ctx[0] = 1  # a one-token context
    nb = int(-(-ctx.max() // block_size))
    tables = torch.stack([torch.randperm(num_blocks, generator=gen)[:nb] for _ in range(b)])  # [B, nb]
    q = torch.randn(b, kvh * g, d, generator=gen).to(dtype)
    # a decode-only step: one query per sequence (slots unused: _decode reads the caches only)
    layout = StepLayout(list(range(b + 1)), ctx.tolist(), tables.tolist(), [0] * b, block_size)
    return q, k_cache, v_cache, layout


def _decode_both_ways(ext, q, k_cache, v_cache, layout, dtype):
    """The PyTorch decode and the native one over the same step: (reference, native) in fp32."""
    kvh, d = k_cache.shape[0], k_cache.shape[-1]
    dims = (q.shape[1], kvh, d, d**-0.5)
    ref_backend = TorchAttentionBackend(*dims, dtype=dtype)
    native_backend = CpuNativeAttentionBackend(*dims, dtype=dtype, native_ext=ext)
    ref = ref_backend._decode(q, k_cache, v_cache, ref_backend.build_metadata(layout))
    out = native_backend._decode(q, k_cache, v_cache, native_backend.build_metadata(layout))
    return ref.float(), out.float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "b,kvh,g,d", [(1, 2, 7, 64), (9, 2, 7, 64), (5, 1, 4, 32), (3, 4, 1, 128), (4, 2, 2, 16)]
)
def test_native_decode_attention_equals_the_pytorch_path(dtype, b, kvh, g, d):
    ext = native_kernels.load_native_kernels()
    if ext is None:
        pytest.skip(f"native kernel unavailable: {native_kernels.unavailable_reason()}")
    q, k_cache, v_cache, layout = _random_decode_case(dtype, b, kvh, g, d)
    ref, out = _decode_both_ways(ext, q, k_cache, v_cache, layout, dtype)
    assert out.shape == (b, kvh * g, d)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    # a single-token context attends to exactly its one value row
    v0 = v_cache[:, layout.block_tables[0][0], 0].float().repeat_interleave(g, dim=0)  # [H, D]
    torch.testing.assert_close(out[0], v0, rtol=tol, atol=tol)


@pytest.mark.parametrize("variant", ["qwen2", "qwen3"])
def test_engine_without_the_native_kernel_gives_the_same_tokens(variant, tiny_model, monkeypatch):
    path = tiny_model(variant)
    native = _generate(path)
    monkeypatch.setattr(native_kernels, "_ext", None)
    monkeypatch.setattr(native_kernels, "_ext_error", "disabled for this test")
    llm = LLM(str(path), num_gpu_blocks_override=8)
    assert llm.llm_engine.runner.attention_backend.name == "torch"
    del llm
    assert _generate(path) == native


def _native_or_skip():
    ext = native_kernels.load_native_kernels()
    if ext is None:
        pytest.skip(f"native kernels unavailable: {native_kernels.unavailable_reason()}")
    return ext


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_norm_silu_and_rope_equal_the_pytorch_ops(dtype):
    from nanoserve.model.kernels import apply_rotary
    from nanoserve.model.layers import RMSNorm, RotaryEmbedding

    ext = _native_or_skip()
    gen = torch.Generator().manual_seed(1)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2**-7, "atol": 2**-7}
    # residual add + RMSNorm: the residual stream is updated in place, the norm returned
    x, r = (torch.randn(5, 96, generator=gen).to(dtype) for _ in range(2))
    norm = RMSNorm(96, 1e-6).to(dtype)
    norm.weight.data = torch.randn(96, generator=gen).to(dtype)
    x_ref = x.clone()
    ref = norm.weight * torch.nn.functional.rms_norm((x_ref + r).float(), (96,), None, 1e-6).to(dtype)
    out = ext.add_rms_norm(x, r, norm.weight, 1e-6)
    assert torch.equal(x, x_ref + r)
    torch.testing.assert_close(out, ref, **tol)
    # silu(gate) * up
    gu = torch.randn(3, 2 * 40, generator=gen).to(dtype)
    g, u = gu.chunk(2, dim=-1)
    torch.testing.assert_close(ext.silu_mul(gu), F.silu(g) * u, **tol)
    # rotary on q and k + K/V written to their cache slots
    h, kvh, d, t = 4, 2, 16, 3
    rotary = RotaryEmbedding(d, 64, {"rope_theta": 10000.0})
    positions = torch.tensor([0, 17, 40])
    cos, sin = rotary.gather(positions, dtype)
    qkv = torch.randn(t, (h + 2 * kvh) * d, generator=gen).to(dtype)
    k_cache = torch.zeros(kvh, 4, 8, d, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([3, 9, 30])
    q = ext.rope_cache(qkv, cos, sin, slots, k_cache, v_cache, h, kvh)
    qk = apply_rotary(qkv[:, : (h + kvh) * d].view(t, h + kvh, d), cos, sin)
    torch.testing.assert_close(q, qk[:, :h], **tol)
    torch.testing.assert_close(k_cache.view(kvh, -1, d)[:, slots].transpose(0, 1), qk[:, h:], **tol)
    v = qkv[:, (h + kvh) * d :].view(t, kvh, d)
    assert torch.equal(v_cache.view(kvh, -1, d)[:, slots].transpose(0, 1), v)
    assert v_cache.view(kvh, -1, d).abs().sum(-1).count_nonzero() == kvh * t, "only the slots are written"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_argmax_is_torchs_first_maximum(dtype):
    ext = _native_or_skip()
    x = torch.randn(7, 1000, generator=torch.Generator().manual_seed(2)).to(dtype)
    x[1, 10] = x[1, 900] = 50.0  # a tie: the first index wins
    x[2, -1] = 60.0  # the last column
    x[3] = -3.0  # a constant row
    assert torch.equal(ext.argmax_rows(x), x.argmax(dim=-1))
    assert ext.argmax_rows(x)[1] == 10 and ext.argmax_rows(x)[3] == 0


def test_sampler_greedy_fast_path_equals_the_full_path_on_bf16_logits():
    from nanoserve.engine.sampler import Sampler, SamplingMetadata

    logits = torch.randn(6, 500, generator=torch.Generator().manual_seed(3)).bfloat16()

    def meta(params):
        n = logits.shape[0]
        return SamplingMetadata([params] * n, [[1, 2]] * n, [[3]] * n, [None] * n, eos_token_ids=[0])

    sampler = Sampler(NativeCpuKernels(_native_or_skip()))
    fast = sampler(logits, meta(SamplingParams(temperature=0.0)))
    full = sampler(logits, meta(SamplingParams(temperature=0.0, logprobs=1)))  # takes the full path
    assert fast.token_ids == full.token_ids == logits.float().argmax(dim=-1).tolist()
    assert fast.logprobs == [None] * 6 and all(lp is not None for lp in full.logprobs)


@pytest.mark.parametrize("query_rows", [128, 4])  # one row group / causal groups of 4 queries (last partial)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_q,ctx", [(37, 37), (5, 40), (1, 9)])
def test_prefill_matmul_attention_equals_sdpa(query_rows, dtype, n_q, ctx, monkeypatch):
    from nanoserve.model.attention import torch_backend

    monkeypatch.setattr(torch_backend, "PREFILL_QUERY_ROWS", query_rows)
    monkeypatch.setattr(torch_backend, "PREFILL_MIN_QUERY_ROWS", 1)
    gen = torch.Generator().manual_seed(4)
    kvh, g, d, bs = 2, 3, 16, 8
    k_cache = torch.randn(kvh, 10, bs, d, generator=gen).to(dtype)
    v_cache = torch.randn(kvh, 10, bs, d, generator=gen).to(dtype)
    table = torch.tensor([7, 2, 9, 0, 4, 1])
    q = torch.randn(n_q, kvh * g, d, generator=gen).to(dtype)
    backend = TorchAttentionBackend(kvh * g, kvh, d, d**-0.5)
    matmul = backend._prefill(q, k_cache, v_cache, table, ctx, bs)
    monkeypatch.setattr(torch_backend, "PREFILL_MATMUL_MAX_SCORES", 0)
    sdpa = backend._prefill(q, k_cache, v_cache, table, ctx, bs)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(matmul.float(), sdpa.float(), rtol=tol, atol=tol)
    # the last query sees the whole context: recompute it by hand in fp32
    k = k_cache[:, table].flatten(1, 2)[:, :ctx].float().repeat_interleave(g, dim=0)  # [H, ctx, D]
    v = v_cache[:, table].flatten(1, 2)[:, :ctx].float().repeat_interleave(g, dim=0)
    p = torch.softmax((k @ q[-1].float().unsqueeze(-1)).squeeze(-1) * d**-0.5, dim=-1)  # [H, ctx]
    torch.testing.assert_close(matmul[-1].float(), (p.unsqueeze(-1) * v).sum(1), rtol=tol, atol=tol)


# The AVX-512 bf16 path (head_dim 64/128, 1-8 query heads per kv head) against the PyTorch path, with
# block sizes that do and do not line up with its 16-key chunks; 9 heads per kv head takes the scalar path.
@pytest.mark.parametrize("g", [1, 3, 5, 7, 8, 9])
@pytest.mark.parametrize("d,block_size", [(64, 16), (64, 4), (128, 8)])
def test_native_bf16_decode_attention_for_every_group_size(g, d, block_size):
    ext = native_kernels.load_native_kernels()
    if ext is None:
        pytest.skip(f"native kernel unavailable: {native_kernels.unavailable_reason()}")
    q, k_cache, v_cache, layout = _random_decode_case(
        torch.bfloat16, 6, 2, g, d, block_size=block_size, num_blocks=256, seed=g
    )
    ref, out = _decode_both_ways(ext, q, k_cache, v_cache, layout, torch.bfloat16)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
