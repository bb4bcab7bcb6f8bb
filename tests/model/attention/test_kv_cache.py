"""Quantized KV caches (kv_cache_dtype int8 / fp8_e4m3): the write rounds within half a step, the native
write stores what the reference write does, and every backend's attention over the codes equals
attention over the dequantized values (decode and prefill, a cached prefix, several blocks, GQA)."""

from __future__ import annotations

import math

import pytest
import torch

from nanoserve.model import native_kernels
from nanoserve.model.attention import CpuNativeAttentionBackend, StepLayout, TorchAttentionBackend
from nanoserve.model.attention.kv_cache import (
    QUANTIZED_KV_DTYPES,
    QuantizedKV,
    allocate_kv_caches,
    dequantize_rows,
    fake_quantize,
    gather_kv,
    write_kv,
)
from nanoserve.model.kernels import NativeCpuKernels, TorchKernels

QUANT = list(QUANTIZED_KV_DTYPES)
# (context_len, query_len): decodes over several blocks, a whole prompt, chunks after a cached prefix.
STEP = [(9, 1), (37, 37), (1, 1), (40, 5), (23, 1), (70, 16), (64, 1)]


def _ext():
    ext = native_kernels.load_native_kernels()
    if ext is None:
        pytest.skip(f"native kernels unavailable: {native_kernels.unavailable_reason()}")
    return ext


def _pool(kvh, num_blocks, bs, d, dtype, kv_dtype):
    (k, v), = allocate_kv_caches(1, kvh, num_blocks, bs, d, dtype, kv_dtype, torch.device("cpu"))
    return k, v


def _dequantized(cache, dtype):
    """A quantized cache as the plain cache of its dequantized values."""
    return dequantize_rows(cache.codes, cache.scales, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_write_round_trip_is_within_half_a_step(dtype):
    gen = torch.Generator().manual_seed(0)
    kvh, d, bs = 3, 32, 4
    k, _ = _pool(kvh, 6, bs, d, dtype, "int8")
    x = (torch.randn(10, kvh, d, generator=gen) * torch.logspace(-3, 2, 10)[:, None, None]).to(dtype)
    x[4, 1] = 0  # an all-zero row stays zero
    slots = torch.tensor([0, 3, 4, 7, 9, 10, 13, 17, 22, 23])
    write_kv(k, x, slots)
    assert k.codes.dtype == torch.int8 and k.scales.dtype == torch.float32
    codes = k.codes.view(kvh, -1, d)[:, slots].transpose(0, 1)  # [T, KVH, D]
    scales = k.scales.view(kvh, -1)[:, slots].transpose(0, 1)  # [T, KVH]
    assert codes.abs().max() == 127 and codes.abs().amax(-1)[x.abs().amax(-1) > 0].min() == 127
    back = codes.float() * scales[..., None]
    err = (back - x.float()).abs()
    assert (err <= scales[..., None] / 2 * (1 + 1e-5)).all(), "error above half a quantization step"
    assert torch.equal(back[4, 1], torch.zeros(d))
    # only the written slots changed
    assert k.scales.view(kvh, -1).count_nonzero() == kvh * len(slots)


def test_fp8_write_round_trip_is_within_e4m3_precision():
    gen = torch.Generator().manual_seed(1)
    k, _ = _pool(2, 4, 4, 16, torch.float32, "fp8_e4m3")
    x = torch.randn(5, 2, 16, generator=gen) * 7
    write_kv(k, x, torch.arange(5))
    assert k.codes.dtype == torch.float8_e4m3fn
    back = gather_kv(k, torch.arange(4), torch.float32).flatten(1, 2)[:, :5].transpose(0, 1)
    amax = x.abs().amax(-1, keepdim=True)
    # 3 mantissa bits: relative error <= 2^-4 above the subnormals, absolute below them
    assert ((back - x).abs() <= torch.maximum(x.abs() / 16, amax / 448 * 2**-9 * 1.01)).all()
    assert torch.allclose(back.abs().amax(-1, keepdim=True), amax)


@pytest.mark.parametrize("kv_dtype", QUANT)
def test_native_quantizing_rope_write_stores_what_the_reference_write_does(kv_dtype):
    """ext.rope_cache_quant == the native rope_cache's k/v (in the model dtype) stored by kv_cache.write_kv,
    code for code; its q is rope_cache's."""
    ext = _ext()
    gen = torch.Generator().manual_seed(2)
    t, h, kvh, d, bs, nb = 7, 4, 2, 64, 4, 6
    for dtype in (torch.float32, torch.bfloat16):
        qkv = torch.randn(t, (h + 2 * kvh) * d, generator=gen).to(dtype)
        qkv[3, (h + kvh) * d :] = 0  # token 3's v rows: all zero
        ang = torch.randn(t, 1, d, generator=gen)
        cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
        slots = torch.tensor([0, 5, 6, 11, 17, 20, 23])
        plain_k, plain_v = _pool(kvh, nb, bs, d, dtype, "auto")
        q_plain = ext.rope_cache(qkv, cos, sin, slots, plain_k, plain_v, h, kvh)
        ref_k, ref_v = _pool(kvh, nb, bs, d, dtype, kv_dtype)
        write_kv(ref_k, plain_k.view(kvh, -1, d)[:, slots].transpose(0, 1), slots)
        write_kv(ref_v, plain_v.view(kvh, -1, d)[:, slots].transpose(0, 1), slots)
        nat_k, nat_v = _pool(kvh, nb, bs, d, dtype, kv_dtype)
        q_nat, k_none, v_none = NativeCpuKernels(ext).rope_cache(qkv, cos, sin, slots, nat_k, nat_v, h, kvh)
        assert k_none is None and v_none is None
        assert torch.equal(q_nat, q_plain)
        for ref, nat in ((ref_k, nat_k), (ref_v, nat_v)):
            torch.testing.assert_close(nat.scales, ref.scales, atol=0, rtol=0)
            assert torch.equal(nat.codes.view(torch.uint8), ref.codes.view(torch.uint8)), dtype
        # and the rotation is the reference one (within a rounding of the model dtype)
        q_ref, k_ref, _ = TorchKernels().rope_cache(qkv, cos, sin, slots, ref_k, ref_v, h, kvh)
        tol = {"atol": 2e-2, "rtol": 1e-2} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 1e-5}
        torch.testing.assert_close(q_nat, q_ref, **tol)
        deq = gather_kv(nat_k, torch.arange(nb), torch.float32).flatten(1, 2)[:, slots].transpose(0, 1)
        step = nat_k.scales.view(kvh, -1)[:, slots].t()[..., None]  # [T, KVH, 1]
        bound = step / 2 if kv_dtype == "int8" else k_ref.float().abs() / 16 + step
        assert ((deq - k_ref.float()).abs() <= bound + 2e-2).all()


def _step(seqs, bs, kvh, g, d, dtype, kv_dtype, seed=0):
    """A mixed step over a pool of quantized random K/V, its own new k/v not yet written."""
    gen = torch.Generator().manual_seed(seed)
    need = [math.ceil(ctx / bs) for ctx, _ in seqs]
    num_blocks = sum(need) + 1
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables, starts, slots = [], [0], []
    for (ctx, n_q), nb in zip(seqs, need, strict=True):
        tables.append([perm.pop() for _ in range(nb)])
        starts.append(starts[-1] + n_q)
        slots += [tables[-1][p // bs] * bs + p % bs for p in range(ctx - n_q, ctx)]
    layout = StepLayout(starts, [ctx for ctx, _ in seqs], tables, slots, bs)
    k_cache, v_cache = _pool(kvh, num_blocks, bs, d, dtype, kv_dtype)
    all_slots = torch.arange(num_blocks * bs)
    write_kv(k_cache, (torch.randn(len(all_slots), kvh, d, generator=gen) * 3).to(dtype), all_slots)
    write_kv(v_cache, torch.randn(len(all_slots), kvh, d, generator=gen).to(dtype), all_slots)
    t = starts[-1]
    q = torch.randn(t, kvh * g, d, generator=gen).to(dtype)  # [T, H, D]
    k = torch.randn(t, kvh, d, generator=gen).to(dtype)  # [T, KVH, D]
    v = torch.randn(t, kvh, d, generator=gen).to(dtype)
    return layout, q, k, v, k_cache, v_cache


def _backends(kvh, g, d, dtype):
    dims = (kvh * g, kvh, d, d**-0.5)
    out = [TorchAttentionBackend(*dims, dtype=dtype)]
    ext = native_kernels.load_native_kernels()
    if ext is not None:
        out.append(CpuNativeAttentionBackend(*dims, dtype=dtype, native_ext=ext))
    return out


@pytest.mark.parametrize("kv_dtype", QUANT)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bs,kvh,g,d", [(4, 2, 3, 16), (16, 1, 8, 64), (8, 2, 4, 128), (16, 4, 1, 32)])
def test_attention_over_a_quantized_cache_equals_attention_over_its_dequantized_values(
    kv_dtype, dtype, bs, kvh, g, d
):
    """Each backend over the codes vs the same backend over a plain cache holding the dequantized
    values (with the step's own k/v fake-quantized): the torch backend exactly (it dequantizes the
    gathered blocks to the same values), the native decode within float32 summation order."""
    layout, q, k, v, kq, vq = _step(STEP, bs, kvh, g, d, dtype, kv_dtype)
    for backend in _backends(kvh, g, d, dtype):
        kc = QuantizedKV(kq.codes.clone(), kq.scales.clone())
        vc = QuantizedKV(vq.codes.clone(), vq.scales.clone())
        out = backend.forward(q, k, v, kc, vc, backend.build_metadata(layout))
        kp, vp = _dequantized(kq, dtype), _dequantized(vq, dtype)
        ref = backend.forward(q, fake_quantize(k, kv_dtype), fake_quantize(v, kv_dtype), kp, vp,
                              backend.build_metadata(layout))
        # the step's k/v went into the quantized caches as codes: the dequantized pools now agree
        assert torch.equal(_dequantized(kc, dtype), kp) and torch.equal(_dequantized(vc, dtype), vp)
        if backend.name == "torch":
            assert torch.equal(out, ref), backend.name
        else:
            tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 1e-5}
            torch.testing.assert_close(out, ref, **tol, msg=backend.name)


@pytest.mark.parametrize("kv_dtype", QUANT)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_quantized_decode_matches_the_dequantized_reference_in_float32(kv_dtype, dtype):
    """Decode only, head_dim 64 and 128 (the AVX-512 int8 kernel for bf16), G up to 8, many blocks:
    the native kernel against fp32 attention over the dequantized values."""
    ext = _ext()
    for bs, kvh, g, d in ((16, 2, 7, 64), (16, 1, 8, 128), (4, 3, 2, 128)):
        seqs = [(1, 1), (17, 1), (100, 1), (255, 1)]
        layout, q, _, _, kc, vc = _step(seqs, bs, kvh, g, d, dtype, kv_dtype, seed=3)
        nat = CpuNativeAttentionBackend(kvh * g, kvh, d, d**-0.5, dtype=dtype, native_ext=ext)
        ref = TorchAttentionBackend(kvh * g, kvh, d, d**-0.5, dtype=torch.float32)
        out = nat.forward(q, None, None, kc, vc, nat.build_metadata(layout))
        kp, vp = _dequantized(kc, torch.float32), _dequantized(vc, torch.float32)
        want = ref.forward(q.float(), None, None, kp, vp, ref.build_metadata(layout))
        tol = {"atol": 1e-2, "rtol": 1e-2} if dtype == torch.bfloat16 else {"atol": 2e-5, "rtol": 2e-5}
        torch.testing.assert_close(out.float(), want, **tol)
