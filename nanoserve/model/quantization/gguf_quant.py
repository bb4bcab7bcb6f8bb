"""GGUF (llama.cpp) quantized blocks read straight into QuantizedWeight, without a float detour.

A GGUF weight [N, K] is stored row by row, each row cut into blocks of consecutive input columns; a
block holds fp16 scale(s) and packed integer codes. Every type we read is, per group of columns,

    symmetric:  w = d * (q - c)          → QuantizedWeight codes q (or q - c), zeros None
    affine:     w = d * q + offset       → zeros = -offset / d  (offset = m, or -dmin * m for K-quants)

so the mapping is exact up to where the zero point is rounded to fp32 (affine types only, see
`_affine`). Block layouts (llama.cpp ggml-common.h; gguf/quants.py dequantizes them the same way):

    type   items bytes  layout                                              ours
    Q8_0   32    34     d, 32 x int8                                        bits 8, group 32
    Q4_0   32    18     d, 16 B nibbles (q-8)                               bits 4, group 32
    Q4_1   32    20     d, m, 16 B nibbles                                  bits 4, group 32, zeros
    Q5_0   32    22     d, qh (32 high bits), 16 B nibbles (q-16)           bits 8 (codes -16..15)
    Q5_1   32    24     d, m, qh, 16 B nibbles                              bits 8 (codes 0..31), zeros
    Q2_K   256   84     16 B scales|mins (4+4 bit), 64 B 2-bit q, d, dmin   bits 4, group 16, zeros
    Q3_K   256   110    32 B high bits, 64 B 2-bit q, 12 B 6-bit scales, d  bits 4, group 16 (codes 4..11)
    Q4_K   256   144    d, dmin, 12 B 6-bit scales+mins, 128 B nibbles      bits 4, group 32, zeros
    Q5_K   256   176    d, dmin, 12 B scales+mins, 32 B high bits, 128 B    bits 8, group 32, zeros
    Q6_K   256   210    128 B low nibbles, 64 B 2-bit high, 16 x int8 sc, d bits 8, group 16 (q-32)

Everything is vectorized over all blocks of the tensor at once (numpy), never a loop per block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from nanoserve.errors import ModelLoadError
from nanoserve.model.quantization.quantized_weight import QuantizedWeight

# type name → (input columns per block, bytes per block)
BLOCK_SIZES: dict[str, tuple[int, int]] = {
    "Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}


def _fp16(blocks: np.ndarray, start: int) -> np.ndarray:
    """[B] float32: the fp16 at byte `start` of every block."""
    return np.ascontiguousarray(blocks[:, start:start + 2]).view(np.float16)[:, 0].astype(np.float32)


def _nibbles32(qs: np.ndarray) -> np.ndarray:
    """[B, 16] bytes → [B, 32] codes: low nibbles are columns 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _bits_le(packed: np.ndarray) -> np.ndarray:
    """[B, nbytes] → [B, nbytes * 8] 0/1: bit i of the little-endian integer at position i."""
    return np.unpackbits(packed, axis=1, bitorder="little")


def _runs_of_bits(packed: np.ndarray) -> np.ndarray:
    """Q3_K/Q5_K's 32 bytes of single bits → [B, 256]: column j of run i (32 columns each) is bit i
    of byte j."""
    bits = np.unpackbits(packed[:, :, None], axis=2, bitorder="little")  # [B, 32 bytes, 8 runs]
    return bits.transpose(0, 2, 1).reshape(-1, 256)


def _k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes → ([B, 8], [B, 8]) 6-bit sub-block scales and mins. Sub-blocks 0..3 use the
    low 6 bits of bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7 take their low 4 bits from
    bytes 8..11 (scale: low nibble, min: high nibble) and their top 2 bits from bytes 0..3 / 4..7."""
    lo_sc, lo_m, extra = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([lo_sc & 0x3F, (extra & 0x0F) | ((lo_sc >> 6) << 4)], axis=1)
    mins = np.concatenate([lo_m & 0x3F, (extra >> 4) | ((lo_m >> 6) << 4)], axis=1)
    return scales, mins


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's 128 code bytes → [B, 256]: each 32-byte chunk holds two sub-blocks of 32,
    the first in the low nibbles, the next in the high ones."""
    chunks = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([chunks & 0x0F, chunks >> 4], axis=2).reshape(-1, 256)


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K's 64 bytes of 2-bit codes → [B, 256]: each 32-byte half holds four runs of 32
    columns, at bit shifts 0, 2, 4, 6."""
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    return ((qs.reshape(-1, 2, 1, 32) >> shifts) & 0x03).reshape(-1, 256)


def _affine(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray, group_size: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w = scale * code + offset per group → (codes, scales, zeros) with w = (code - zero) * scale.

    codes [B, items], scale/offset [B, items // group_size]. zero = -offset / scale is rounded to fp32,
    so (code - zero) * scale can differ from scale * code + offset in the last bits (about
    |offset| * 2**-24). A group with scale 0 is the constant `offset`: its codes become 1, its zero 0
    and its scale `offset`, which is exact."""
    flat = scale == 0  # [B, groups]
    with np.errstate(divide="ignore", invalid="ignore"):
        zeros = np.where(flat, np.float32(0), -offset / np.where(flat, np.float32(1), scale))
    scales = np.where(flat, offset, scale)
    if flat.any():
        codes = np.where(np.repeat(flat, group_size, axis=1), np.uint8(1), codes)
    return codes, scales.astype(np.float32), zeros.astype(np.float32)


# Each reader: blocks [B, bytes] uint8 → (codes [B, items], scales [B, g], zeros [B, g] | None,
# bits, group_size). Codes are uint8 (or int8 where they are signed).
Read = tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]


def _q8_0(b: np.ndarray) -> Read:
    return b[:, 2:34].view(np.int8), _fp16(b, 0)[:, None], None, 8, 32


def _q4_0(b: np.ndarray) -> Read:
    return _nibbles32(b[:, 2:18]), _fp16(b, 0)[:, None], None, 4, 32  # zero point 8: the default


def _q4_1(b: np.ndarray) -> Read:
    codes, scales, zeros = _affine(_nibbles32(b[:, 4:20]), _fp16(b, 0)[:, None], _fp16(b, 2)[:, None], 32)
    return codes, scales, zeros, 4, 32


def _five_bit(b: np.ndarray, qh_at: int) -> np.ndarray:
    """Q5_0/Q5_1: 4 low bits as nibbles, bit 4 of column j is bit j of the little-endian uint32 qh."""
    return _nibbles32(b[:, qh_at + 4:qh_at + 20]) | (_bits_le(b[:, qh_at:qh_at + 4]) << 4)


def _q5_0(b: np.ndarray) -> Read:
    # w = d * (q - 16): signed codes -16..15 with the int8 default zero 0 (no zeros tensor to apply)
    codes = _five_bit(b, 2).astype(np.int8) - np.int8(16)
    return codes, _fp16(b, 0)[:, None], None, 8, 32


def _q5_1(b: np.ndarray) -> Read:
    codes, scales, zeros = _affine(_five_bit(b, 4), _fp16(b, 0)[:, None], _fp16(b, 2)[:, None], 32)
    return codes.astype(np.int8), scales, zeros, 8, 32


def _q2_k(b: np.ndarray) -> Read:
    packed = b[:, 0:16]  # per sub-block of 16: scale in the low nibble, min in the high one
    d, dmin = _fp16(b, 80)[:, None], _fp16(b, 82)[:, None]
    scale = d * (packed & 0x0F).astype(np.float32)  # exact: 11-bit mantissa times 4 bits
    offset = -(dmin * (packed >> 4).astype(np.float32))
    codes, scales, zeros = _affine(_crumbs(b[:, 16:80]), scale, offset, 16)
    return codes, scales, zeros, 4, 16


def _q3_k(b: np.ndarray) -> Read:
    # q = low 2 bits - 4 where the high-mask bit is 0, else the low 2 bits: -4..3
    high = _runs_of_bits(b[:, 0:32])
    q = _crumbs(b[:, 32:96]).astype(np.int8) - (np.int8(4) * (1 - high).astype(np.int8))
    packed = b[:, 96:108]
    low4 = np.concatenate([packed[:, 0:8] & 0x0F, packed[:, 0:8] >> 4], axis=1)  # [B, 16]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)
    top2 = ((packed[:, 8:12].reshape(-1, 1, 4) >> shifts) & 0x03).reshape(-1, 16)  # [B, 16]
    sub = ((low4 | (top2 << 4)).astype(np.int8) - np.int8(32)).astype(np.float32)
    scales = _fp16(b, 108)[:, None] * sub  # exact: 11 bits times 6 bits
    return (q + np.int8(8)).astype(np.uint8), scales, None, 4, 16  # codes 4..11 around the default 8


def _q4_k(b: np.ndarray) -> Read:
    sc, m = _k_scales_mins(b[:, 4:16])
    scale = _fp16(b, 0)[:, None] * sc.astype(np.float32)  # exact: 11 bits times 6 bits
    offset = -(_fp16(b, 2)[:, None] * m.astype(np.float32))
    codes, scales, zeros = _affine(_k_nibbles(b[:, 16:144]), scale, offset, 32)
    return codes, scales, zeros, 4, 32


def _q5_k(b: np.ndarray) -> Read:
    sc, m = _k_scales_mins(b[:, 4:16])
    scale = _fp16(b, 0)[:, None] * sc.astype(np.float32)
    offset = -(_fp16(b, 2)[:, None] * m.astype(np.float32))
    high = _runs_of_bits(b[:, 16:48])  # bit 4 of each code
    codes, scales, zeros = _affine(_k_nibbles(b[:, 48:176]) | (high << 4), scale, offset, 32)
    return codes.astype(np.int8), scales, zeros, 8, 32


def _q6_k(b: np.ndarray) -> Read:
    # Each 128-column half: low nibbles from 64 bytes (runs 0,1: low nibble of bytes 0..31, 32..63;
    # runs 2,3: their high nibbles), top 2 bits of run r from 32 bytes at bit shift 2r.
    low = b[:, 0:128].reshape(-1, 2, 1, 64)
    low = np.concatenate([low & 0x0F, low >> 4], axis=2).reshape(-1, 2, 4, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    top = (b[:, 128:192].reshape(-1, 2, 1, 32) >> shifts) & 0x03  # [B, 2, 4, 32]
    codes = (low | (top << 4)).reshape(-1, 256).astype(np.int8) - np.int8(32)
    scales = _fp16(b, 208)[:, None] * b[:, 192:208].view(np.int8).astype(np.float32)  # [B, 16]
    return codes, scales, None, 8, 16


READERS: dict[str, Callable[[np.ndarray], Read]] = {
    "Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}


def read_gguf_linear(tensor_type: Any, raw: np.ndarray, shape: tuple[int, int]) -> QuantizedWeight:
    """A GGUF quantized tensor's block bytes → QuantizedWeight of `shape` = (N out, K in), HF order.

    tensor_type: a gguf.GGMLQuantizationType or its name ("Q4_K"); raw: the tensor's bytes (any shape,
    uint8, e.g. GGUFReader's `tensor.data`), rows of K columns one after another."""
    kind = getattr(tensor_type, "name", tensor_type)
    if kind not in READERS:
        raise ModelLoadError(f"GGUF type {kind} has no integer mapping; supported: {', '.join(READERS)}")
    n, k = (int(d) for d in shape)
    items, nbytes = BLOCK_SIZES[kind]
    if k % items:
        raise ModelLoadError(f"a {kind} row must be a multiple of {items} columns (got K = {k})")
    raw = np.asarray(raw).view(np.uint8).reshape(-1)
    if raw.size != n * k // items * nbytes:
        raise ModelLoadError(f"{kind} [{n}, {k}] needs {n * k // items * nbytes} bytes (got {raw.size})")
    codes, scales, zeros, bits, group = READERS[kind](raw.reshape(-1, nbytes))
    as_rows = lambda a: torch.from_numpy(np.ascontiguousarray(a).reshape(n, -1))  # noqa: E731
    return QuantizedWeight(
        qweight=as_rows(codes.astype(np.int8 if bits == 8 else np.uint8, copy=False)),  # [N, K]
        scales=as_rows(scales.astype(np.float32, copy=False)),  # [N, K / group]
        zeros=None if zeros is None else as_rows(zeros),  # [N, K / group]
        bits=bits,
        group_size=group,
    )


def permute_rows(weight: QuantizedWeight, rows: torch.Tensor) -> QuantizedWeight:
    """The weight whose row i is `weight`'s row rows[i]: codes, scales and zeros move together."""
    return QuantizedWeight(
        qweight=weight.qweight[rows].contiguous(),
        scales=weight.scales[rows].contiguous(),
        zeros=None if weight.zeros is None else weight.zeros[rows].contiguous(),
        bits=weight.bits,
        group_size=weight.group_size,
        act_quant=weight.act_quant,
    )
