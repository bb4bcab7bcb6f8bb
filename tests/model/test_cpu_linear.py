"""FastLinear: every CPU path agrees with F.linear within bf16 rounding, and always falls back."""

import pytest
import torch
import torch.nn.functional as F

from nanoserve.model import cpu_linear
from nanoserve.model.cpu_linear import FastLinear, prepare_linear


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


@pytest.mark.parametrize("backend", ["torch", "mkldnn", "avx512", "auto"])
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


def test_leading_dims_and_large_batches():
    x, w, b = _case(2 * 3 * 40, 48, 64, True)
    f = FastLinear(w, b)
    y = f(x.view(2, 3 * 40, 64))
    assert y.shape == (2, 120, 48)
    assert _close_to_reference(y.view(-1, 48), x, w, b)


def test_falls_back_for_fp32_and_unknown_backend():
    w = torch.randn(16, 8)
    f = FastLinear(w, None, "avx512")
    assert f.backend == "torch"
    x = torch.randn(3, 8)
    assert torch.equal(f(x), F.linear(x, w))
    with pytest.raises(ValueError, match="backend"):
        FastLinear(w, None, "cuda-magic")


def test_disabled_native_kernel_falls_back(monkeypatch):
    monkeypatch.setattr(cpu_linear, "_ext", None)
    monkeypatch.setattr(cpu_linear, "_ext_error", None)
    monkeypatch.setenv("NANOSERVE_DISABLE_NATIVE_LINEAR", "1")
    x, w, b = _case(2, 32, 64, True)
    f = FastLinear(w, b, "avx512")
    assert f.backend in ("mkldnn", "torch")
    assert "disabled" in cpu_linear.avx512_unavailable_reason()
    assert _close_to_reference(f(x), x, w, b)


def test_native_kernel_is_used_where_the_cpu_has_it():
    if not cpu_linear.cpu_has_avx512_bf16():
        pytest.skip("no avx512_bf16 on this CPU")
    x, w, b = _case(4, 64, 64, False)
    f = FastLinear(w, b, "avx512")
    assert f.backend == "avx512", cpu_linear.avx512_unavailable_reason()
    assert f.weight.data_ptr() == w.data_ptr()  # no copy of the weight


def test_merged_linear_splits_like_separate_projections():
    from nanoserve.model.cpu_linear import prepare_merged_linear

    x, wq, bq = _case(3, 64, 48, True, seed=1)
    _, wk, _ = _case(3, 16, 48, False, seed=2)
    _, wv, bv = _case(3, 16, 48, True, seed=3)
    fused, sizes = prepare_merged_linear([wq, wk, wv], [bq, None, bv])
    assert sizes == [64, 16, 16]
    q, k, v = fused(x).split(sizes, dim=-1)
    for y, w, b in ((q, wq, bq), (k, wk, None), (v, wv, bv)):
        assert _close_to_reference(y.contiguous(), x, w, b)
