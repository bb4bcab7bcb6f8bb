"""FastLinear: every CPU path agrees with F.linear within bf16 rounding, and always falls back."""

import pytest
import torch
import torch.nn.functional as F

from nanoserve.model import cpu_linear
from nanoserve.model.cpu_linear import FastLinear, pack_weight, pack_weight_f32, prepare_linear, unpack_weight


def _case(m, n, k, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 0.05).bfloat16()
    b = (torch.randn(n, generator=g)).bfloat16() if bias else None
    x = torch.randn(m, k, generator=g).bfloat16()
    return x, w, b


def _close_to_reference(y, x, w, b):
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())  # fp32 truth
    # one bf16 rounding of the output: relative 2^-8, plus fp32 accumulation-order noise
    tol = ref.abs() * 2**-7 + 1e-3 * ref.abs().max()
    return bool(((y.float() - ref).abs() <= tol).all())


@pytest.mark.parametrize("backend", ["torch", "mkldnn", "avx512", "hybrid", "auto"])
@pytest.mark.parametrize(
    "m,n,k,bias",
    [(1, 1152, 896, True), (8, 896, 4864, False), (5, 37, 70, True), (70, 64, 96, False), (3, 9, 33, True)],
)
def test_matches_f_linear(backend, m, n, k, bias):
    x, w, b = _case(m, n, k, bias)
    f = prepare_linear(w, b, backend)
    y = f(x)
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    assert _close_to_reference(y, x, w, b), (backend, f.backend)
    plain = F.linear(x, w, b)
    assert (y.float() - plain.float()).abs().max() <= 2**-6 * plain.float().abs().max() + 1e-2


def test_hybrid_routes_skinny_inputs_to_the_kernel_and_wider_ones_to_onednn():
    if cpu_linear.load_avx512_kernel() is None or not cpu_linear.mkldnn_available():
        pytest.skip("needs both the avx512 kernel and oneDNN")
    x, w, b = _case(cpu_linear.HYBRID_AVX512_MAX_ROWS + 8, 200, 96, True)
    hybrid, kernel, onednn = (prepare_linear(w, b, backend) for backend in ("hybrid", "avx512", "mkldnn"))
    assert (hybrid.backend, kernel.backend, onednn.backend) == ("hybrid", "avx512", "mkldnn")
    for m in range(1, cpu_linear.HYBRID_AVX512_MAX_ROWS + 1):
        assert torch.equal(hybrid(x[:m]), kernel(x[:m]))
    wide = x[: cpu_linear.HYBRID_AVX512_MAX_ROWS + 1]
    assert torch.equal(hybrid(wide), onednn(wide))
    assert torch.equal(hybrid(x), onednn(x))


def test_leading_dims_and_large_batches():
    x, w, b = _case(2 * 3 * 40, 48, 64, True)
    f = prepare_linear(w, b)
    y = f(x.view(2, 3 * 40, 64))
    assert y.shape == (2, 120, 48)
    assert _close_to_reference(y.view(-1, 48), x, w, b)


def test_falls_back_for_float16_and_unknown_backend():
    w = torch.randn(16, 8).half()
    f = prepare_linear(w, None, "avx512")
    assert f.backend == "torch"
    x = torch.randn(3, 8).half()
    assert torch.equal(f(x), F.linear(x, w))
    with pytest.raises(ValueError, match="backend"):
        prepare_linear(w, None, "cuda-magic")
    # an fp32 weight on the torch or oneDNN backends keeps F.linear
    w32 = torch.randn(16, 8)
    assert prepare_linear(w32, None, "torch").backend == "torch"
    assert prepare_linear(w32, None, "mkldnn").backend == "torch"


def test_disabled_native_kernel_falls_back(monkeypatch):
    monkeypatch.setattr(cpu_linear, "_ext", None)
    monkeypatch.setattr(cpu_linear, "_ext_error", None)
    monkeypatch.setenv("NANOSERVE_DISABLE_NATIVE_LINEAR", "1")
    x, w, b = _case(2, 32, 64, True)
    f = prepare_linear(w, b, "avx512")
    assert f.backend in ("mkldnn", "torch")
    assert "disabled" in cpu_linear.avx512_unavailable_reason()
    assert _close_to_reference(f(x), x, w, b)


def _native_linear(w, b):
    if not cpu_linear.cpu_has_avx512_bf16():
        pytest.skip("no avx512_bf16 on this CPU")
    f = prepare_linear(w, b, "avx512")
    assert f.backend == "avx512", cpu_linear.avx512_unavailable_reason()
    return f


def test_native_kernel_is_used_where_the_cpu_has_it():
    x, w, b = _case(4, 64, 64, False)
    f = _native_linear(w, b)
    assert f.weight is None  # only the packed copy is kept
    assert f._packed.shape == (1, 32, 64, 2)


# Every row-tile remainder (tiles of 6 rows: M = 1, 3, 4, 5, 17, 64, 65, 300) against N and K that are
# not multiples of the 64-output block or of 16/32, odd K (the zero-padded last pair) and tiny K.
@pytest.mark.parametrize("m", [1, 3, 4, 5, 17, 64, 65, 300])
@pytest.mark.parametrize("n,k", [(37, 70), (200, 129), (1152, 896), (64, 1), (130, 33)])
@pytest.mark.parametrize("bias", [True, False])
def test_native_kernel_matches_f_linear_for_every_row_tile(m, n, k, bias):
    x, w, b = _case(m, n, k, bias, seed=m * 1000 + n + k)
    f = _native_linear(w, b)
    y = f(x)
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    assert _close_to_reference(y, x, w, b)


# fp32 weights take the kernel's fp32 tiles: every row-tile remainder, partial blocks, K of 1.
@pytest.mark.parametrize("m", [1, 2, 3, 5, 7, 17, 65])
@pytest.mark.parametrize("n,k", [(37, 70), (200, 129), (64, 1), (130, 33)])
@pytest.mark.parametrize("bias", [True, False])
def test_native_fp32_kernel_matches_f_linear_for_every_row_tile(m, n, k, bias):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    w, x = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    f = _native_linear(w, b)
    assert f._packed.dtype == torch.float32 and f._packed.shape == (-(-n // 64), k, 64)
    y = f(x)
    assert y.shape == (m, n) and y.dtype == torch.float32
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    # fp32 accumulation over k terms: error grows like sqrt(k) * eps * |x||w|
    bound = 1e-6 * (k**0.5) * (x.abs().max() * w.abs().max() * k + 1)
    assert (y.double() - ref).abs().max() <= bound


def _cancelling_case(m, n, k, seed=0):
    """x [m, k], w [n, k] whose products cancel: exact outputs are 0, so the fp32 result is all rounding
    error of the summation, and any change of summation order shows in the bf16 outputs."""
    g = torch.Generator().manual_seed(seed)
    half = k // 2
    x = torch.randn(m, half, generator=g).bfloat16()
    w = (torch.randn(n, half, generator=g) * 0.05).bfloat16()
    tail = torch.zeros(m, k - 2 * half, dtype=torch.bfloat16)  # odd k: x[:, -1] meets a zero weight
    return torch.cat([x, x, tail + 1], dim=1), torch.cat([w, -w, tail[:1].expand(n, -1)], dim=1)


# Batch invariance (a speculative verify's rows must get a decode step's bits, tests/model/
# test_batch_invariance.py): every row tile (1..6 rows and their sums up to 14), the 1- and 2-row path that
# takes three 64-output blocks at once (4, 6 and 5 blocks: 1, 0 and 2 left over; partial last blocks),
# odd K, bias, and blocks split between two threads.
@pytest.mark.parametrize("n,k,bias", [(200, 96, False), (5 * 64 + 7, 577, False), (5 * 64 - 4, 576, True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_kernel_gives_a_row_the_same_bits_whatever_rows_share_the_call(n, k, bias, threads):
    x, w = _cancelling_case(14, n, k, seed=n + k)
    b = torch.randn(n, generator=torch.Generator().manual_seed(1)).bfloat16() * 1e-3 if bias else None
    f = _native_linear(w, b)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        alone = torch.cat([f(x[i : i + 1]) for i in range(len(x))])  # [14, n]
        assert alone.abs().max() > 0  # rounding error is there to see
        for m in range(2, len(x) + 1):
            y = f(x[:m])
            differ = (y != alone[:m]).any(dim=-1).nonzero().flatten().tolist()
            assert not differ, f"{m}-row call: rows {differ} differ from one-row calls"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n,k", [(200, 96), (5 * 64 + 7, 577)])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_fp32_kernel_gives_a_row_the_same_bits_whatever_rows_share_the_call(n, k, threads):
    x, w = _cancelling_case(14, n, k, seed=n + k)
    f = _native_linear(w.float(), None)
    x = x.float() + torch.randn(x.shape, generator=torch.Generator().manual_seed(2)) * 1e-3
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        alone = torch.cat([f(x[i : i + 1]) for i in range(len(x))])  # [14, n]
        for m in range(2, len(x) + 1):
            differ = (f(x[:m]) != alone[:m]).any(dim=-1).nonzero().flatten().tolist()
            assert not differ, f"{m}-row call: rows {differ} differ from one-row calls"
    finally:
        torch.set_num_threads(before)


def test_native_kernel_reads_strided_and_batched_inputs():
    x, w, b = _case(2 * 7, 90, 45, True)
    f = _native_linear(w, b)
    wide = torch.cat([x, x], dim=1)[:, :45]  # non-contiguous rows
    assert _close_to_reference(f(wide), x, w, b)
    assert _close_to_reference(f(x.view(2, 7, 45)).view(14, 90), x, w, b)


def test_native_path_falls_back_for_autograd_on_the_unpacked_weight():
    x, w, b = _case(3, 70, 33, True)
    f = _native_linear(w, b)
    xg = x.clone().requires_grad_()
    y = f(xg)
    assert torch.equal(y, F.linear(x, w, b))
    y.float().sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape


@pytest.mark.parametrize("n,k", [(64, 2), (37, 70), (130, 33), (1, 1)])
def test_pack_weight_layout_and_round_trip(n, k):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)).bfloat16()
    p = pack_weight(w)
    assert p.shape == (-(-n // 64), (k + 1) // 2, 64, 2)
    # element (r, c) sits in block r // 64, pair c // 2, lane r % 64, slot c % 2
    r, c = n - 1, k - 1
    assert p[r // 64, c // 2, r % 64, c % 2] == w[r, c]
    padded = unpack_weight(p, p.shape[0] * 64, p.shape[1] * 2)  # [n_pad, k_pad]
    assert torch.equal(padded[:n, :k], w)
    assert not padded[n:].any() and not padded[:, k:].any()  # the padding is zero
    assert torch.equal(unpack_weight(p, n, k), w)


@pytest.mark.parametrize("n,k", [(64, 2), (37, 70), (1, 1)])
def test_pack_weight_f32_layout_and_round_trip(n, k):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k))
    p = pack_weight_f32(w)
    assert p.shape == (-(-n // 64), k, 64)
    r, c = n - 1, k - 1
    assert p[r // 64, c, r % 64] == w[r, c]  # block r // 64, column c, lane r % 64
    padded = unpack_weight(p, p.shape[0] * 64, k)
    assert not padded[n:].any() and torch.equal(unpack_weight(p, n, k), w)


def test_stacked_linear_splits_like_separate_projections():
    x, wq, bq = _case(3, 64, 48, True, seed=1)
    _, wk, bk = _case(3, 16, 48, True, seed=2)
    _, wv, bv = _case(3, 16, 48, True, seed=3)
    fused = FastLinear(48, [64, 16, 16], bias=True).bfloat16()
    for i, (w, b) in enumerate(((wq, bq), (wk, bk), (wv, bv))):  # what the loader does per checkpoint tensor
        fused.shard("weight", i).copy_(w)
        fused.shard("bias", i).copy_(b)
    fused.prepare("auto")
    q, k, v = fused(x).split(fused.output_sizes, dim=-1)
    for y, w, b in ((q, wq, bq), (k, wk, bk), (v, wv, bv)):
        assert _close_to_reference(y.contiguous(), x, w, b)
    with pytest.raises(RuntimeError, match="prepared already"):
        fused.prepare("auto")


def test_auto_keeps_one_packed_copy():
    x, w, b = _case(3, 64, 64, True)
    f = prepare_linear(w, b, "auto")
    if cpu_linear.load_avx512_kernel() is None:
        pytest.skip(f"no avx512 kernel: {cpu_linear.avx512_unavailable_reason()}")
    assert f.backend == "avx512" and f._mkldnn is None and f.weight is None
