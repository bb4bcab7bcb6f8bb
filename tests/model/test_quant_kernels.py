"""The AVX-512 quantized-linear kernels agree with their PyTorch references on every odd shape."""

import pytest
import torch

from nanoserve.model import quant_kernels as qk
from nanoserve.model.quantization.quantized_weight import QuantizedWeight

ROWS = (1, 2, 3, 5, 6, 7, 12, 17, 33)  # every tile remainder below 6, one and several full tiles
# (N, K, group_size): N off the 64-block and off the 16-lane tile, K odd / not a multiple of the group
SHAPES_A16 = [(37, 70, 32), (100, 129, 32), (64, 256, 128), (130, 301, 64), (17, 33, 1000), (200, 96, 96)]
SHAPES_W8A8 = [(37, 70), (100, 129), (64, 256), (130, 301), (17, 33), (9, 3)]


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if qk.load_quant_kernels() is None:
        pytest.skip(f"quantized kernels unavailable: {qk.quant_kernels_unavailable_reason()}")


def _weight(n, k, bits, group_size, zeros, act_quant=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = -(-k // group_size)
    if bits == 8:
        q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int32).to(torch.int8)  # [N, K]
    else:
        q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32).to(torch.uint8)  # [N, K]
    scales = torch.rand(n, groups, generator=g) * 0.02 + 1e-3  # [N, G]
    z = None
    if zeros:
        lo, hi = (-20, 20) if bits == 8 else (0, 16)
        z = torch.randint(lo, hi, (n, groups), generator=g).float()  # [N, G]
    return QuantizedWeight(q, scales, z, bits, group_size, act_quant)


def _x(m, k, seed=1):
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).bfloat16()  # [M, K]


def _bias(n, on, seed=2):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)).bfloat16() if on else None


def _assert_within_bf16_rounding(y, x, qw, bias):
    """y (bf16) is the fp32 truth rounded once to bf16, up to fp32 accumulation-order noise."""
    ref = qk.reference_weight_only(x.float(), qw, bias)  # fp32 truth
    w = qw.dequantize()
    # fp32 noise: bounded by ~2**-20 of sum |x| * (|w| + |scale * (zero + 128)|) (the int4 codes carry +128)
    mag = x.float().abs() @ (w.abs() + 136 * qw.scales.float().amax(1, keepdim=True)).T  # [M, N]
    tol = 2.0**-8 * ref.abs() + 2.0**-20 * mag  # bf16 keeps 8 bits: half a step is 2**-8
    err = (y.float() - ref).abs()
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert bool((err <= tol).all()), f"max excess {(err - tol).max().item():.3g}"


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("n,k,group_size", SHAPES_A16)
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("scratch_min_rows", [7, 10**9])  # codes converted once per block / per tile
def test_weight_only_matches_reference(bits, n, k, group_size, zeros, scratch_min_rows, monkeypatch):
    monkeypatch.setattr(qk, "SCRATCH_MIN_ROWS", scratch_min_rows)
    qw = _weight(n, k, bits, group_size, zeros)
    packed = (qk.pack_w8a16 if bits == 8 else qk.pack_w4a16)(qw)
    linear = qk.linear_w8a16 if bits == 8 else qk.linear_w4a16
    for m in ROWS:
        for has_bias in (False, True):
            x, b = _x(m, k, seed=m), _bias(n, has_bias)
            _assert_within_bf16_rounding(linear(x, packed, b), x, qw, b)


def test_weight_only_per_channel_at_model_shape():
    for bits in (8, 4):
        qw = _weight(896, 4864, bits, 4864 if bits == 8 else 128, zeros=bits == 4)
        packed = qk.PACKERS["w8a16" if bits == 8 else "w4a16"](qw)
        for m in (1, 8, 33):
            x = _x(m, 4864)
            _assert_within_bf16_rounding(qk.quant_linear(x, packed), x, qw, None)


@pytest.mark.parametrize("n,k", SHAPES_W8A8)
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("hybrid_min_rows", [1, 10**9])  # VNNI + bf16 tiles on every M / VNNI-only tiles
def test_w8a8_matches_reference_exactly(n, k, zeros, hybrid_min_rows, monkeypatch):
    monkeypatch.setattr(qk, "W8A8_HYBRID_MIN_ROWS", hybrid_min_rows)
    qw = _weight(n, k, 8, k, zeros, act_quant=True)
    packed = qk.pack_w8a8(qw)
    for m in ROWS:
        for has_bias in (False, True):
            x, b = _x(m, k, seed=m), _bias(n, has_bias)
            y, ref = qk.linear_w8a8(x, packed, b), qk.reference_linear(x, qw, b)
            assert y.dtype == torch.bfloat16 and y.shape == (m, n)
            if not zeros:  # same fp32 operations in the same order: bit-identical
                assert torch.equal(y, ref), (m, has_bias)
            else:  # the kernel fuses zero * sum(q) into one fma: at most one bf16 step apart
                assert bool(((y.float() - ref.float()).abs() <= 2.0**-8 * ref.float().abs() + 1e-6).all())


def test_w8a8_hybrid_threshold_and_long_k_stay_exact(monkeypatch):
    # Rows at the hybrid threshold, and K = 2100 at the extreme codes (x -> +127, w = -128 or 127): the
    # bf16 part's fp32 partial sums would pass 2**24 (2100 * 127 * 128) without the int32 flushes.
    n, k = 70, 2100  # outputs 48..63 (bf16 part) of block 0, and a tail block
    qw = _weight(n, k, 8, k, False, act_quant=True)
    qw.qweight[:40] = -128
    qw.qweight[40:] = 127
    packed = qk.pack_w8a8(qw)
    t = qk.W8A8_HYBRID_ROWS
    monkeypatch.setattr(qk, "W8A8_HYBRID_MIN_ROWS", t)  # the hybrid tiles whatever this CPU's default
    for m in (t - 1, t, t + 1, 2 * t + 5):
        x = torch.ones(m, k, dtype=torch.bfloat16)  # [M, K]
        x[1:] = _x(m - 1, k, seed=m)
        y, ref = qk.linear_w8a8(x, packed), qk.reference_linear(x, qw)
        assert torch.equal(y, ref), m
    assert abs(ref[0, 50].item()) > 2**24 * qw.scales[50, 0].item() * (1 / 127)  # the sum did pass 2**24


@pytest.mark.parametrize("cpu, env, want", [
    (("AuthenticAMD", 0x19), None, True),   # Zen 4: vpdpbusd at half rate, both pipes pay
    (("AuthenticAMD", 0x1A), None, False),  # Zen 5: VNNI alone ~2x the bf16 kernel
    (("GenuineIntel", 6), None, False),
    (None, None, False),                    # /proc/cpuinfo unreadable
    (("AuthenticAMD", 0x1A), "1", True),
    (("AuthenticAMD", 0x19), "0", False),
])
def test_w8a8_hybrid_tiles_only_where_they_pay(cpu, env, want, monkeypatch):
    if env is None:
        monkeypatch.delenv("NANOSERVE_W8A8_HYBRID", raising=False)
    else:
        monkeypatch.setenv("NANOSERVE_W8A8_HYBRID", env)
    monkeypatch.setattr(qk, "cpu_vendor_family", lambda: cpu)
    assert qk.w8a8_hybrid_pays() is want


def test_cpu_vendor_family_reads_the_first_cpu(tmp_path):
    from nanoserve.model import cpu_linear

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n\n"
                    "processor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n")
    assert cpu_linear.cpu_vendor_family(str(info)) == ("AuthenticAMD", 25)
    info.write_text("processor\t: 0\n")  # no vendor line: unknown, not an error
    assert cpu_linear.cpu_vendor_family(str(info)) is None
    assert cpu_linear.cpu_vendor_family(str(tmp_path / "missing")) is None


def test_w8a8_is_close_to_the_unquantized_product():
    # The reference itself must mean something: per-token int8 x costs ~1% of the output's scale.
    qw = _weight(96, 512, 8, 512, False, act_quant=True)
    x = _x(5, 512)
    y = qk.linear_w8a8(x, qk.pack_w8a8(qw)).float()
    exact = x.float() @ qw.dequantize().T
    assert (y - exact).abs().max() <= 0.02 * exact.abs().max()


def test_per_token_quantization_matches_reference():
    ext = qk.load_quant_kernels()
    x = _x(9, 301) * 3
    x[4] = 0  # an all-zero row: scale 1, codes 0
    x[2, 7] = 2.5 * (x[2].float().abs().max() / 127).bfloat16()  # exactly halfway: round half to even
    codes, scales, sums = ext.quantize_per_token(x, 304)
    q, s = qk.quantize_per_token_reference(x)
    assert torch.equal(scales, s)
    assert torch.equal(codes[:, :301].to(torch.int32) - 128, q.to(torch.int32))
    assert bool((codes[:, 301:] == 128).all())  # padding is the code 0
    assert torch.equal(sums, q.to(torch.int32).sum(1))
    assert s[4].item() == 1.0


def test_leading_dims_fp32_input_and_empty_batch():
    qw = _weight(40, 64, 8, 64, False)
    packed = qk.pack_w8a16(qw)
    x = _x(6, 64)
    y = qk.linear_w8a16(x.float().view(2, 3, 64), packed)
    assert y.shape == (2, 3, 40) and y.dtype == torch.float32
    assert torch.equal(y.view(6, 40), qk.linear_w8a16(x, packed).float())  # fp32 goes through bf16
    assert qk.linear_w8a16(x[:0], packed).shape == (0, 40)
    assert qk.linear_w8a8(x[:0], qk.pack_w8a8(qw)).shape == (0, 40)


def test_packers_check_their_input():
    with pytest.raises(ValueError):
        qk.pack_w4a16(_weight(8, 64, 8, 64, False))
    with pytest.raises(ValueError):
        qk.pack_w8a8(_weight(8, 64, 8, 32, False))  # grouped: w8a8 is per channel
    with pytest.raises(ValueError):
        qk.pack_w8a16(_weight(8, 64, 8, 31, False))  # grouped with an odd group size
    packed = qk.pack_w4a16(_weight(8, 64, 4, 32, True))
    with pytest.raises(ValueError):
        qk.linear_w8a16(_x(1, 64), packed)  # packed for another method


def test_packed_sizes():
    n, k = 896, 4864
    w8, w4 = _weight(n, k, 8, k, False), _weight(n, k, 4, 128, True)
    assert qk.pack_w8a16(w8).nbytes == n * k + 2 * 4 * n  # codes + scales and offsets
    assert qk.pack_w4a16(w4).nbytes == n * k // 2 + 2 * 4 * n * (k // 128)
    assert qk.pack_w8a8(w8).nbytes == n * k + 2 * 4 * n  # codes + scales and wsum (no zeros)
