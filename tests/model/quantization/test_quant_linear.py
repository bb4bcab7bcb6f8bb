"""QuantLinear's reference paths against independent computations; int4 packing; the kernel hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nanoserve.model.quantization import quant_linear as ql
from nanoserve.model.quantization.activations import int8_matmul, quantize_per_token
from nanoserve.model.quantization.int4_packing import pack_int4, unpack_int4
from nanoserve.model.quantization.methods import quantize_int4, quantize_int8, quantize_w8a8
from nanoserve.model.quantization.quant_linear import QuantLinear


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("k", [1, 2, 7, 64, 129])
def test_int4_pack_unpack_round_trip(k):
    codes = torch.randint(0, 16, (5, k), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (5, -(-k // 2)) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed, k), codes)


@pytest.mark.parametrize("method", ["int8", "int4", "int4_zp"])
@pytest.mark.parametrize("n,k", [(7, 33), (64, 256), (31, 300)])
def test_weight_only_reference_equals_f_linear_of_the_dequantized_weight(method, n, k):
    w, bias, x = rand(n, k), rand(n, seed=1), rand(3, 5, k, seed=2)
    qw = quantize_int8(w) if method == "int8" else quantize_int4(w, 32, method == "int4_zp")
    layer = QuantLinear.from_quantized(qw, bias)
    assert layer.scheme == ("w8a16" if method == "int8" else "w4a16")
    assert torch.equal(layer.dequantize(), qw.dequantize())  # bit for bit, codes stored packed
    y = layer(x)
    assert y.shape == (3, 5, n)
    torch.testing.assert_close(y, F.linear(x, qw.dequantize(), bias), rtol=1e-6, atol=1e-5)
    # bf16 activations: dequantized in fp32, cast once, as a bf16 checkpoint of these weights would be
    y16 = QuantLinear.from_quantized(qw, bias.bfloat16())(x.bfloat16())  # a bf16 model's bias is bf16
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16, F.linear(x.bfloat16(), qw.dequantize(torch.bfloat16), bias.bfloat16()))


def test_quant_linear_holds_only_the_quantized_bytes():
    n, k = 48, 256
    for qw in (quantize_int8(rand(n, k)), quantize_int4(rand(n, k), 64, True), quantize_int4(rand(n, k), 64)):
        layer = QuantLinear.from_quantized(qw)
        assert layer.weight_bytes() == qw.nbytes()
        assert not any(b.is_floating_point() and b.numel() >= n * k for b in layer.buffers())
        torch.testing.assert_close(layer.quantized_weight().dequantize(), qw.dequantize(), rtol=0, atol=0)


def test_per_token_activation_quantization_within_half_a_step():
    x = rand(6, 50) * torch.tensor([0.01, 1, 10, 100, 0.5, 3])[:, None]
    x[4] = 0
    codes, scales = quantize_per_token(x)
    assert codes.dtype == torch.int8 and scales.shape == (6, 1)
    assert bool(((codes.float() * scales - x).abs() <= scales / 2 + 1e-6).all())
    assert bool((codes[4] == 0).all())


@pytest.mark.parametrize("k", [16, 1100, 2500])  # beyond 1024 columns an fp32 sum of codes is not exact
def test_int8_matmul_exact(k, monkeypatch):
    a = torch.randint(-127, 128, (5, k), dtype=torch.int8)
    b = torch.randint(-127, 128, (9, k), dtype=torch.int8)
    expected = a.long() @ b.long().t()
    assert torch.equal(int8_matmul(a, b).long(), expected)
    monkeypatch.delattr(torch, "_int_mm")  # the fallback of devices without it
    assert torch.equal(int8_matmul(a, b).long(), expected)


@pytest.mark.parametrize("n,k", [(7, 33), (64, 256), (17, 1500)])
def test_w8a8_reference_equals_an_independent_numpy_computation(n, k):
    w, bias, x = rand(n, k), rand(n, seed=1), rand(2, 4, k, seed=2)
    layer = QuantLinear.from_quantized(quantize_w8a8(w), bias)
    assert layer.scheme == "w8a8"
    y = layer(x)
    # numpy in float64: per-token symmetric int8 activations, per-channel int8 weights
    xn, wn = x.reshape(-1, k).double().numpy(), w.double().numpy()
    sx = np.abs(xn).max(axis=1, keepdims=True) / 127
    sw = np.abs(wn).max(axis=1, keepdims=True) / 127
    xq = np.clip(np.round(xn / sx), -127, 127)
    wq = np.clip(np.round(wn / sw), -127, 127)
    ref = (xq @ wq.T) * sx * sw.T + bias.double().numpy()
    np.testing.assert_allclose(y.reshape(-1, n).double().numpy(), ref, rtol=1e-5, atol=1e-4)
    # and it is close to the float layer: the quantization error is small, not a different function
    rel = (y - F.linear(x, w, bias)).norm() / F.linear(x, w, bias).norm()
    assert float(rel) < 0.03


def test_from_linear_keeps_output_sizes_and_bias():
    from nanoserve.model.cpu_linear import FastLinear

    lin = FastLinear(40, [16, 8, 8], bias=True)
    with torch.no_grad():
        lin.weight.copy_(rand(32, 40))
        lin.bias.copy_(rand(32, seed=3))
    q = QuantLinear.from_linear(lin, lambda w: quantize_int4(w, 16))
    assert q.output_sizes == [16, 8, 8] and torch.equal(q.bias, lin.bias)
    with pytest.raises(ValueError, match="output_sizes"):
        QuantLinear.from_quantized(quantize_int8(rand(8, 4)), output_sizes=[3, 3])


class FakeKernels:
    """A stand-in for nanoserve/model/quant_kernels.py: packs to the dequantized weight."""

    calls: list[str] = []

    @staticmethod
    def load_quant_kernels():
        return True

    def __getattr__(self, name):
        if name.startswith("pack_"):
            return lambda qw: (qw.dequantize(),)
        if name.startswith("linear_"):
            def linear(x, packed, bias):
                FakeKernels.calls.append(name)
                return F.linear(x, packed[0].to(x.dtype), bias)
            return linear
        raise AttributeError(name)


def test_prepare_plugs_in_a_native_kernel_and_torch_keeps_the_reference(monkeypatch):
    monkeypatch.setattr(ql, "native_quant_kernels", lambda: FakeKernels())
    x = rand(3, 64)
    ref = QuantLinear.from_quantized(quantize_int4(rand(16, 64), 32))
    ref.prepare("torch")
    assert ref.backend == "torch" and ref.qweight is not None
    native = QuantLinear.from_quantized(quantize_int4(rand(16, 64), 32))
    native.prepare("auto")
    assert native.backend == "native" and native.qweight is None  # the packed layout replaces the codes
    assert native.weight_bytes() == 16 * 64 * 4  # what the (fake) packed tuple holds
    torch.testing.assert_close(native(x), ref(x))
    assert FakeKernels.calls == ["linear_w4a16"]


def test_prepare_without_kernels_stays_on_the_reference(monkeypatch):
    monkeypatch.setattr(ql, "native_quant_kernels", lambda: None)
    layer = QuantLinear.from_quantized(quantize_int8(rand(8, 16)))
    layer.prepare("auto")
    assert layer.backend == "torch" and layer.qweight is not None


@pytest.mark.parametrize("method", ["int4", "int8", "w8a8"])
def test_input_perm_gathers_the_input_on_both_paths(method):
    """GPTQ act-order: the weight's columns are stored in `perm` order of the input's; the reference and
    (where it loads) the native kernel both compute x @ W.T with W in the input's own order."""
    n, k = 48, 96
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(1))
    quantize = {"int4": lambda w: quantize_int4(w, 32), "int8": quantize_int8, "w8a8": quantize_w8a8}[method]
    qw = quantize(rand(n, k))  # the weight in stored (permuted) column order
    weight = torch.empty(n, k)
    weight[:, perm] = qw.dequantize()  # [N, K] in the input's order
    x, bias = rand(5, k, seed=2), rand(n, seed=3)
    layer = QuantLinear.from_quantized(qw, bias, input_perm=perm)
    assert layer.input_perm.dtype == torch.int64 and layer.weight_bytes() > qw.nbytes() + 4 * n
    expected = F.linear(x, weight, bias)
    tol = 0.05 if method == "w8a8" else 1e-4  # w8a8 also quantizes x per token
    torch.testing.assert_close(layer(x), expected, rtol=tol, atol=tol * float(expected.abs().max()))
    with pytest.raises(ValueError, match="input_perm must be \\[96\\]"):
        QuantLinear.from_quantized(qw, input_perm=perm[:10])
    native = QuantLinear.from_quantized(qw, bias.bfloat16(), input_perm=perm)
    native.prepare("auto", torch.bfloat16)
    if native.backend != "native":
        pytest.skip("native quantized kernels unavailable here")
    reference = QuantLinear.from_quantized(qw, bias.bfloat16(), input_perm=perm)
    xb = x.bfloat16()
    torch.testing.assert_close(native(xb).float(), reference(xb).float(), rtol=0.02, atol=0.05)
