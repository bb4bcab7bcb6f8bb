"""TritonKernels equal the reference kernels (TorchKernels) at awkward shapes, in Triton's CPU interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 without a GPU; on a GPU they run there, compiled: see
scripts/gpu_check.sh), and a tiny model generates the same greedy
tokens with them as with the reference kernels."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from nanoserve import LLM, SamplingParams  # noqa: E402
from nanoserve.engine import model_runner  # noqa: E402
from nanoserve.model.attention.kv_cache import allocate_kv_caches, write_kv  # noqa: E402
from nanoserve.model.kernels import TorchKernels, select_kernels  # noqa: E402
from nanoserve.model.layers import RotaryEmbedding  # noqa: E402
from nanoserve.model.triton_kernels import TritonKernels  # noqa: E402
from nanoserve.model.triton_support import triton_unusable_reason  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if triton_unusable_reason(DEVICE) is not None:  # neither CUDA nor the interpreter
    pytest.skip("Triton kernels cannot run here", allow_module_level=True)

REF, TRI = TorchKernels(), TritonKernels()
DTYPES = [torch.float32, torch.bfloat16]


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32: summation order only; bf16: one rounding of the dtype at most (torch's default tolerances)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hidden", [(1, 576), (7, 896), (3, 64)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm_matches_the_reference(dtype, tokens, hidden, with_residual):
    g = torch.Generator().manual_seed(tokens * hidden)
    x = torch.randn(tokens, hidden, generator=g).to(DEVICE, dtype)  # [T, hidden]
    residual = torch.randn(tokens, hidden, generator=g).to(DEVICE, dtype) if with_residual else None
    weight = (1 + 0.3 * torch.randn(hidden, generator=g)).to(DEVICE, dtype)
    x_ref, x_tri = x.clone(), x.clone()
    expected = REF.add_rms_norm(x_ref, residual, weight, 1e-6)
    got = TRI.add_rms_norm(x_tri, residual, weight, 1e-6)
    _close(got, expected)
    assert torch.equal(x_tri, x_ref)  # the residual stream, updated in place, rounded as the reference
    if with_residual:
        assert not torch.equal(x_tri, x)


def test_add_rms_norm_of_per_head_views_takes_the_reference_path():
    """Qwen3's q/k norms pass non-contiguous [T, H, D] views of the qkv rows."""
    qkv = torch.randn(5, 8 * 32, device=DEVICE)
    view = qkv[:, : 4 * 32].view(5, 4, 32)
    weight = torch.randn(32, device=DEVICE)
    _close(TRI.add_rms_norm(view, None, weight, 1e-6), REF.add_rms_norm(view, None, weight, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,inter", [(1, 896), (5, 1536), (3, 100)])
def test_silu_mul_matches_the_reference(dtype, tokens, inter):
    g = torch.Generator().manual_seed(inter)
    gate_up = (2 * torch.randn(tokens, 2 * inter, generator=g)).to(DEVICE, dtype)  # [T, 2I]
    _close(TRI.silu_mul(gate_up), REF.silu_mul(gate_up))
    # Rows with a stride wider than their length:
    wider = torch.randn(tokens, 2 * inter + 6, generator=g).to(DEVICE, dtype)[:, 3 : 3 + 2 * inter]
    _close(TRI.silu_mul(wider), REF.silu_mul(wider))


def _rope_case(heads, kv_heads, head_dim, block_size, tokens, dtype, seed=0):
    """qkv rows, the rotary tables at scattered positions, and distinct slots over several blocks."""
    g = torch.Generator().manual_seed(seed)
    num_blocks = 6
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=g).to(DEVICE, dtype)
    rotary = RotaryEmbedding(head_dim, 4096, {"rope_theta": 10000.0})
    positions = torch.randint(0, 4096, (tokens,), generator=g)
    cos, sin_signed = (t.to(DEVICE) for t in rotary.gather(positions, dtype))  # [T, 1, D] each
    # Distinct slots, mid-block ones included (offset 0 is never forced): a prefix hit resumes mid-block.
    slots = torch.randperm(num_blocks * block_size, generator=g)[:tokens].to(DEVICE)
    return qkv, cos, sin_signed, slots, num_blocks


def _caches(kv_heads, num_blocks, block_size, head_dim, dtype, kv_cache_dtype="auto"):
    (pair,) = allocate_kv_caches(1, kv_heads, num_blocks, block_size, head_dim, dtype, kv_cache_dtype, DEVICE)
    return pair


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize(
    "heads,kv_heads,head_dim,tokens",
    [(8, 1, 64, 5), (6, 2, 64, 19), (4, 4, 128, 3), (14, 2, 64, 7), (16, 2, 128, 1)],
)
def test_rope_cache_matches_the_reference_and_writes_the_caches(
    dtype, block_size, heads, kv_heads, head_dim, tokens
):
    qkv, cos, sin, slots, num_blocks = _rope_case(heads, kv_heads, head_dim, block_size, tokens, dtype)
    k_ref, v_ref = _caches(kv_heads, num_blocks, block_size, head_dim, dtype)
    q_exp, k, v = REF.rope_cache(qkv, cos, sin, slots, k_ref, v_ref, heads, kv_heads)
    write_kv(k_ref, k, slots)  # what the attention backend does with the reference's k and v
    write_kv(v_ref, v, slots)
    k_tri, v_tri = _caches(kv_heads, num_blocks, block_size, head_dim, dtype)
    q, k_none, v_none = TRI.rope_cache(qkv, cos, sin, slots, k_tri, v_tri, heads, kv_heads)
    assert k_none is None and v_none is None  # already in the caches
    _close(q, q_exp)
    _close(k_tri, k_ref)  # every slot: the written ones and the untouched zeros
    assert torch.equal(v_tri, v_ref)  # v is copied, not computed
    assert k_tri.abs().sum() > 0


def test_rope_cache_skips_negative_slots():
    """A padded row (slot -1) writes nothing: a fixed-size batch may carry padding."""
    qkv, cos, sin, _, num_blocks = _rope_case(4, 2, 64, 16, 3, torch.float32)
    k_cache, v_cache = _caches(2, num_blocks, 16, 64, torch.float32)
    q, _, _ = TRI.rope_cache(qkv, cos, sin, torch.tensor([5, -1, 17], device=DEVICE), k_cache, v_cache, 4, 2)
    assert torch.count_nonzero(k_cache.abs().sum(-1)) == 2 * 2  # two slots in each of 2 kv heads
    assert torch.count_nonzero(v_cache.abs().sum(-1)) == 2 * 2
    _close(q, REF.rope_cache(qkv, cos, sin, None, k_cache, v_cache, 4, 2)[0])


def test_rope_cache_into_a_quantized_cache_takes_the_reference_path():
    qkv, cos, sin, slots, num_blocks = _rope_case(6, 2, 64, 16, 5, torch.float32)
    k_cache, v_cache = _caches(2, num_blocks, 16, 64, torch.float32, "int8")
    q, k, v = TRI.rope_cache(qkv, cos, sin, slots, k_cache, v_cache, 6, 2)
    q_exp, k_exp, v_exp = REF.rope_cache(qkv, cos, sin, slots, k_cache, v_cache, 6, 2)
    assert torch.equal(q, q_exp) and torch.equal(k, k_exp) and torch.equal(v, v_exp)  # backend writes them


def test_select_kernels_takes_triton_on_cuda_unless_disabled(monkeypatch):
    monkeypatch.delenv("NANOSERVE_DISABLE_TRITON_KERNELS", raising=False)
    assert type(select_kernels(torch.device("cuda"))) is TritonKernels  # choosing touches no GPU
    monkeypatch.setenv("NANOSERVE_DISABLE_TRITON_KERNELS", "1")
    assert type(select_kernels(torch.device("cuda"))) is TorchKernels
    monkeypatch.delenv("NANOSERVE_DISABLE_TRITON_KERNELS")
    monkeypatch.setenv("NANOSERVE_DISABLE_NATIVE_KERNELS", "1")
    assert type(select_kernels(torch.device("cpu"))) is TorchKernels  # CPU: never Triton


def test_tiny_model_greedy_tokens_equal_the_reference_kernels(tiny_model, monkeypatch):
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    prompts = [{"prompt_token_ids": [5, 9, 33, 7, 100, 3, 41]}, {"prompt_token_ids": list(range(10, 31))}]
    path = str(tiny_model("llama"))
    args = dict(dtype="float32", num_gpu_blocks_override=16, block_size=16, device=DEVICE.type)

    def generate(kernels):
        monkeypatch.setattr(model_runner, "select_kernels", lambda device: kernels)
        llm = LLM(path, **args)
        assert llm.llm_engine.runner.kernels is kernels
        return [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]

    expected = generate(TorchKernels())
    for op in ("add_rms_norm", "silu_mul", "rope_cache"):  # the Triton run must never fall back
        monkeypatch.setattr(TorchKernels, op, _refuse(op))
    assert generate(TritonKernels()) == expected


def _refuse(op):
    def call(*args, **kwargs):
        raise AssertionError(f"TritonKernels fell back to the reference {op}")

    return call
