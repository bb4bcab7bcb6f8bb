"""GGUF quantized blocks read into QuantizedWeight: every type against the gguf package's own
dequantization of the same bytes, the q/k row un-permutation, and malformed input."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from nanoserve.errors import ModelLoadError
from nanoserve.model.gguf_loader import unpermute_qk, unpermute_qk_quantized
from nanoserve.model.quantization.gguf_quant import BLOCK_SIZES, read_gguf_linear

# type → (bits, group size, has zero points): the mapping the issue asks for
MAPPING = {
    "Q8_0": (8, 32, False), "Q4_0": (4, 32, False), "Q4_1": (4, 32, True), "Q5_0": (8, 32, False),
    "Q5_1": (8, 32, True), "Q2_K": (4, 16, True), "Q3_K": (4, 16, False), "Q4_K": (4, 32, True),
    "Q5_K": (8, 32, True), "Q6_K": (8, 16, False),
}
QUANTIZABLE = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")  # gguf.quants.quantize writes these
# byte offsets of each block's fp16 fields (the scale d first), from ggml-common.h's block structs
FP16_FIELDS = {
    "Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}
SHAPES = [(7, 256), (5, 512), (3, 768)]  # N odd, K = 1, 2, 3 super-blocks


def random_blocks(kind: str, n: int, k: int, seed: int) -> np.ndarray:
    """Valid random block bytes [N, row bytes]: random codes and packed sub-scales, fp16 scales in a
    sane range; the first block has d = 0 (a constant block), the second dmin/m = 0 where it has one."""
    rng = np.random.default_rng(seed)
    items, nbytes = BLOCK_SIZES[kind]
    blocks = rng.integers(0, 256, (n * k // items, nbytes), dtype=np.uint8)
    for at in FP16_FIELDS[kind]:
        values = rng.uniform(-0.05, 0.05, len(blocks)).astype(np.float16)
        blocks[:, at:at + 2] = values.view(np.uint8).reshape(-1, 2)
    d_at = FP16_FIELDS[kind][0]
    blocks[0, d_at:d_at + 2] = 0
    if len(FP16_FIELDS[kind]) == 2:
        m_at = FP16_FIELDS[kind][1]
        blocks[1, m_at:m_at + 2] = 0
    return blocks.reshape(n, -1)


def quantized_blocks(kind: str, n: int, k: int, seed: int) -> np.ndarray:
    """gguf.quants.quantize of a random matrix with a constant block (d = 0 for the affine types)
    and an all-zero block."""
    values = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    values[0, :32] = 0.37
    values[-1, -32:] = 0.0
    return gguf.quants.quantize(values, gguf.GGMLQuantizationType[kind])


def check_against_gguf(kind: str, raw: np.ndarray, shape: tuple[int, int]) -> None:
    qtype = gguf.GGMLQuantizationType[kind]
    expected = torch.from_numpy(np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32))
    w = read_gguf_linear(qtype, raw, shape)
    bits, group, has_zeros = MAPPING[kind]
    assert (w.bits, w.group_size, w.zeros is not None) == (bits, group, has_zeros)
    assert w.qweight.dtype == (torch.int8 if bits == 8 else torch.uint8) and w.shape == shape
    if bits == 4:
        assert int(w.qweight.max()) <= 15
    got = w.dequantize()
    if not has_zeros:  # d * (q - c): the same two fp32 operations gguf does, bit for bit
        assert torch.equal(got, expected)
        return
    # affine: gguf rounds d*q + offset once; we round zero = -offset/d, then (q - zero), then * d.
    # Each rounding is at most half an ulp of |offset| or |w|, so a few ulps of those bound the gap.
    cols = torch.arange(shape[1]) // group
    offset = (w.zero_points() * w.scales).abs()[:, cols]  # [N, K] |offset| of each weight's group
    bound = 2.0**-23 * (offset + 2 * expected.abs())
    assert bool(((got - expected).abs() <= bound).all()), (got - expected).abs().max()
    assert (got == expected).float().mean() > 0.3  # most weights are bit-exact all the same


def test_block_sizes_are_ggmls():
    for kind, size in BLOCK_SIZES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]] == size, kind
    assert set(BLOCK_SIZES) == set(MAPPING)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", QUANTIZABLE)
def test_quantized_by_gguf_reads_as_gguf_dequantizes(kind, shape):
    check_against_gguf(kind, quantized_blocks(kind, *shape, seed=shape[1]), shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", list(MAPPING))
def test_random_blocks_read_as_gguf_dequantizes(kind, shape):
    """Random codes and sub-scales, which covers what a quantizer rarely writes (negative d, code
    extremes, zero sub-scales) and the K-quants gguf cannot quantize."""
    check_against_gguf(kind, random_blocks(kind, *shape, seed=shape[1] + len(kind)), shape)


@pytest.mark.parametrize("kind", ["Q4_1", "Q5_1", "Q2_K", "Q4_K", "Q5_K"])
def test_zero_scale_groups_are_exact(kind):
    """With d = 0 every group is the constant offset (m, or -dmin * m): no zero point can express it,
    so such groups take code 1, zero 0 and scale = offset, exactly."""
    n, k = 3, 512
    raw = random_blocks(kind, n, k, seed=5).reshape(-1, BLOCK_SIZES[kind][1])
    d_at = FP16_FIELDS[kind][0]
    raw[:, d_at:d_at + 2] = 0
    expected = torch.from_numpy(gguf.quants.dequantize(raw.reshape(n, -1), gguf.GGMLQuantizationType[kind]))
    assert expected.abs().max() > 0  # the offsets are not all zero
    w = read_gguf_linear(kind, raw, (n, k))
    assert torch.equal(w.dequantize(), expected)
    assert w.zeros is not None and torch.equal(w.zeros, torch.zeros_like(w.zeros))  # no nan from 0/0


def test_reads_the_tensor_type_enum_or_name_and_any_byte_shape():
    raw = random_blocks("Q4_K", 5, 512, seed=1)
    by_enum = read_gguf_linear(gguf.GGMLQuantizationType.Q4_K, raw, (5, 512))
    by_name = read_gguf_linear("Q4_K", raw.reshape(-1), (5, 512))
    assert torch.equal(by_enum.qweight, by_name.qweight) and torch.equal(by_enum.scales, by_name.scales)


@pytest.mark.parametrize("kind", ["Q4_1", "Q4_K", "Q6_K", "Q8_0"])
@pytest.mark.parametrize("heads,head_dim", [(3, 64), (2, 16)])
def test_unpermute_moves_codes_with_their_scales_and_zeros(kind, heads, head_dim):
    """Un-permuting the QuantizedWeight's rows equals un-permuting its dequantized matrix."""
    n, k = heads * head_dim, 512
    w = read_gguf_linear(kind, random_blocks(kind, n, k, seed=heads), (n, k))
    un = unpermute_qk_quantized(w, heads)
    assert torch.equal(un.dequantize(), unpermute_qk(w.dequantize(), heads))
    assert not torch.equal(un.scales, w.scales)  # the scales did move
    assert (un.bits, un.group_size) == (w.bits, w.group_size)


def test_malformed_input_is_a_load_error():
    raw = random_blocks("Q4_0", 2, 256, seed=0)
    with pytest.raises(ModelLoadError, match="needs 288 bytes"):
        read_gguf_linear("Q4_0", raw[:, :-18], (2, 256))
    with pytest.raises(ModelLoadError, match="multiple of 256"):
        read_gguf_linear("Q4_K", raw, (2, 288))
    with pytest.raises(ModelLoadError, match="IQ4_NL has no integer mapping"):
        read_gguf_linear(gguf.GGMLQuantizationType.IQ4_NL, raw, (2, 256))
