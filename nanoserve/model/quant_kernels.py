"""Native AVX-512 kernels for quantized linears, their packed weight layouts, and the PyTorch references.

Three methods over the shared `QuantizedWeight` format (W[n, k] = (q[n, k] - zero[n, g]) * scale[n, g]):

- ``w8a16`` / ``w4a16``: int8 or int4 codes, bf16 activations. Batch-1 decode is memory-bound, so the
  point is to stream 1 or ½ byte per weight instead of 2. The codes are turned into bf16 *codes* in
  registers (int8: sign-extend and convert; int4: ``0x4300 | nibble`` is the bf16 of 128 + nibble, no
  conversion at all) and multiplied by the activations with ``vdpbf16ps`` exactly, accumulating in fp32
  per group; at each group's end ``out += scale * acc - scale * zero' * sum(x over the group)`` (zero'
  includes the +128 of the int4 trick). From SCRATCH_MIN_ROWS rows on, a block's codes are converted
  once into an L2-resident bf16 scratch that every row tile reads (prefill pays it once per block).
- ``w8a8``: int8 weights per output channel and activations quantized per token inside the call
  (``q = round_half_even(x / s)``, ``s = max|x| / 127``), multiplied with VNNI ``vpdpbusd`` (unsigned x
  signed bytes): the activations go in as q + 128, and ``128 * sum_k w[n, k]`` (precomputed) comes off.
  The epilogue is ``(acc - wsum - zero * sum(q)) * (s_token * scale_n) + bias`` in fp32.
  On Zen 4 only (`w8a8_hybrid_pays`), from W8A8_HYBRID_ROWS rows on, each block's last 16 outputs go
  through ``vdpbf16ps`` on the codes as bf16 (exact: integer products, fp32 partial sums flushed to int32
  below 2**24) while VNNI does the first 48: there the two run on different pipes, and VNNI alone only
  matches bf16's MACs per cycle. The integer dot products, hence the outputs, are the same either way.

Every kernel threads with ATen's pool over blocks of 64 output rows (each weight byte is read once
per call) and runs row tiles of up to 6 activation rows over an L2-resident block, like the bf16 kernel
(csrc/cpu_linear.cpp). Packed layouts (N padded to 64, zeros in the padding):

- w8a16: codes int8 [N/64, ceil(K/2), 64, 2] (the bf16 kernel's order); w4a16: uint8 [N/64, ceil(K/2), 64]
  where byte i of half h (32 bytes) of a k pair holds output 32h + i//2 (low nibble) and 32h + 16 + i//2
  (high nibble), k = 2 * pair + i % 2; scales and offsets (scale * zero') fp32 [N/64, G, 64].
- w8a8: codes int8 [N/64, ceil(K/4), 64, 4]; wsum int32, scales and zeros fp32 [N_pad].

Constraints (callers fall back to the reference, which is always correct): a16 grouped weights need an
even group_size (every real format uses multiples of 32; one group per channel may be any size); w8a8
needs one scale per output channel (group_size >= K) and K <= 65_000 (int32 accumulators). Inputs are bf16;
another float dtype is cast to bf16 for the kernel and the output cast back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

from nanoserve.model.cpu_linear import cpu_has_avx512_bf16, cpu_has_flag, cpu_vendor_family
from nanoserve.model.native_build import LazyExtension
from nanoserve.model.quantization.quantized_weight import QuantizedWeight

log = logging.getLogger(__name__)

PACK_BLOCK_N = 64  # output rows per packed block; BLOCK_N in csrc/quant_linear.cpp
# a16: from this many rows on, a block's codes are converted once into a bf16 scratch that every row
# tile reads; below, each tile converts in registers, which measured faster up to ~64 rows here (the
# register path overlaps the weight stream with the arithmetic; the scratch pass does not).
SCRATCH_MIN_ROWS = 64
W8A8_HYBRID_ROWS = 8  # w8a8 on Zen 4: from this many rows on, VNNI and vdpbf16ps share each block (csrc)
W8A8_NO_HYBRID = 1 << 62  # a row count no call reaches: VNNI-only tiles throughout
W8A8_MAX_K = 65_000  # (q + 128) * w summed over K stays below 2**31: 255 * 128 * K
METHODS = ("w8a16", "w4a16", "w8a8")

def w8a8_hybrid_pays(cpu: tuple[str, int] | None = None) -> bool:
    """Whether w8a8 should split each block between VNNI and vdpbf16ps (the hybrid tiles) on this CPU.

    Only on Zen 4 (AMD family 0x19), where a zmm ``vpdpbusd`` issues every other cycle: VNNI alone
    there only matches ``vdpbf16ps``'s MACs per cycle, and the two on different pipes beat either. Zen 5
    and Intel issue ``vpdpbusd`` as fast as ``vdpbf16ps`` with twice the MACs: on Zen 5 the VNNI-only
    tiles ran 1.9-2.0x the bf16 kernel and the hybrid 1.4x (benchmarks/RESULTS.md, session 11).
    ``NANOSERVE_W8A8_HYBRID=1`` or ``0`` overrides. The outputs are the same either way."""
    env = os.environ.get("NANOSERVE_W8A8_HYBRID")
    if env in ("0", "1"):
        return env == "1"
    vendor_family = cpu if cpu is not None else cpu_vendor_family()
    return vendor_family == ("AuthenticAMD", 0x19)


W8A8_HYBRID_MIN_ROWS = W8A8_HYBRID_ROWS if w8a8_hybrid_pays() else W8A8_NO_HYBRID


def _why_not() -> str | None:
    if os.environ.get("NANOSERVE_DISABLE_NATIVE_LINEAR") == "1":
        return "disabled by NANOSERVE_DISABLE_NATIVE_LINEAR=1"
    if not (cpu_has_avx512_bf16() and cpu_has_avx512_vnni()):
        return "CPU has no avx512_bf16 or no avx512_vnni"
    return None


def cpu_has_avx512_vnni() -> bool:
    return cpu_has_flag("avx512_vnni")


_EXTENSION = LazyExtension(
    "nanoserve_quant_linear", ["quant_linear.cpp"],
    ["-march=native", "-mavx512f", "-mavx512bf16", "-mavx512bw", "-mavx512vnni"],
    check=_why_not, label="quantized linear kernels",
)


def load_quant_kernels() -> ModuleType | None:
    """Build (first call only, cached on disk after) and return the native kernels, or None.

    None, with the reason in `quant_kernels_unavailable_reason()`, when the CPU lacks AVX-512 bf16 or
    VNNI, the build fails, or NANOSERVE_DISABLE_NATIVE_LINEAR=1."""
    return _EXTENSION.load()


def quant_kernels_unavailable_reason() -> str | None:
    return _EXTENSION.reason


@dataclass
class PackedWeight:
    """A `QuantizedWeight` in one kernel's layout (see the module docstring); made by the pack_* functions."""

    method: str  # "w8a16" | "w4a16" | "w8a8"
    qweight: torch.Tensor  # the codes, packed
    scales: torch.Tensor  # a16: [N_pad/64, G, 64] fp32; w8a8: [N_pad] fp32
    offsets: torch.Tensor | None  # a16: scale * zero' [N_pad/64, G, 64]; w8a8: zero points [N_pad] or None
    wsum: torch.Tensor | None  # w8a8: [N_pad] int32, 128 * sum_k q[n, k]
    n: int
    k: int
    group_size: int
    bits: int

    @property
    def nbytes(self) -> int:
        """Bytes of every packed tensor (codes, scales, offsets, sums), padding included."""
        tensors = (self.qweight, self.scales, self.offsets, self.wsum)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _pad_rows(t: torch.Tensor, n_pad: int) -> torch.Tensor:
    return F.pad(t, (0, 0, 0, n_pad - t.shape[0])) if n_pad != t.shape[0] else t


def _groups(qw: QuantizedWeight) -> int:
    return qw.scales.shape[1]


def _a16_scales(qw: QuantizedWeight, n_pad: int, zero_shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """scales and scale * (zero + zero_shift), [N_pad/64, G, 64] fp32 (zero in the padding)."""
    g = _groups(qw)
    if g > 1 and qw.group_size % 2:
        raise ValueError(f"the a16 kernels need an even group_size for grouped weights (got {qw.group_size})")
    scale = qw.scales.float()  # [N, G]
    offset = scale * (qw.zero_points() + zero_shift)  # [N, G]

    def blocked(t: torch.Tensor) -> torch.Tensor:
        t = _pad_rows(t, n_pad).reshape(n_pad // PACK_BLOCK_N, PACK_BLOCK_N, g)
        return t.transpose(1, 2).contiguous()  # [N_pad/64, G, 64]

    return blocked(scale), blocked(offset)


def _padded_codes(qw: QuantizedWeight, k_multiple: int) -> tuple[torch.Tensor, int]:
    """The codes zero-padded to [N_pad, K_pad] (N_pad a multiple of 64, K_pad of k_multiple), and N_pad."""
    n, k = qw.shape
    n_pad = -(-n // PACK_BLOCK_N) * PACK_BLOCK_N
    k_pad = -(-k // k_multiple) * k_multiple
    return F.pad(qw.qweight, (0, k_pad - k, 0, n_pad - n)), n_pad  # [n_pad, k_pad]


def pack_w8a16(qw: QuantizedWeight) -> PackedWeight:
    """int8 codes [N, K] -> the w8a16 kernel's layout (any group size, even when grouped)."""
    if qw.bits != 8:
        raise ValueError(f"pack_w8a16 needs bits=8 (got {qw.bits})")
    codes, n_pad = _padded_codes(qw, 2)
    nb, k2 = n_pad // PACK_BLOCK_N, codes.shape[1] // 2
    packed = codes.to(torch.int8).reshape(nb, PACK_BLOCK_N, k2, 2).permute(0, 2, 1, 3).contiguous()
    scales, offsets = _a16_scales(qw, n_pad, 0.0)
    n, k = qw.shape
    return PackedWeight("w8a16", packed, scales, offsets, None, n, k, qw.group_size, 8)


def pack_w4a16(qw: QuantizedWeight) -> PackedWeight:
    """int4 codes (0..15, one per byte) [N, K] -> two per byte in the w4a16 kernel's layout."""
    if qw.bits != 4:
        raise ValueError(f"pack_w4a16 needs bits=4 (got {qw.bits})")
    codes, n_pad = _padded_codes(qw, 2)
    nb, k2 = n_pad // PACK_BLOCK_N, codes.shape[1] // 2
    # [nb, k2, half h, nibble (low: zmm 2h, high: zmm 2h+1), 16 outputs, 2 k] -> bytes [nb, k2, h, 32]
    b = codes.to(torch.uint8).reshape(nb, 2, 2, 16, k2, 2).permute(0, 4, 1, 2, 3, 5)
    b = b.reshape(nb, k2, 2, 2, 32)
    packed = (b[:, :, :, 0] | (b[:, :, :, 1] << 4)).reshape(nb, k2, PACK_BLOCK_N).contiguous()
    scales, offsets = _a16_scales(qw, n_pad, 128.0)  # the kernel's codes are 128 + nibble
    n, k = qw.shape
    return PackedWeight("w4a16", packed, scales, offsets, None, n, k, qw.group_size, 4)


def pack_w8a8(qw: QuantizedWeight) -> PackedWeight:
    """int8 codes per output channel [N, K] -> the VNNI kernel's layout, with 128 * row sums."""
    if qw.bits != 8 or _groups(qw) != 1:
        raise ValueError("pack_w8a8 needs bits=8 and one scale per output channel (group_size >= K)")
    n, k = qw.shape
    if k > W8A8_MAX_K:
        raise ValueError(f"pack_w8a8: K={k} > {W8A8_MAX_K} would overflow the int32 accumulators")
    codes, n_pad = _padded_codes(qw, 4)
    nb, k4 = n_pad // PACK_BLOCK_N, codes.shape[1] // 4
    packed = codes.to(torch.int8).reshape(nb, PACK_BLOCK_N, k4, 4).permute(0, 2, 1, 3).contiguous()
    wsum = (128 * codes.to(torch.int32).sum(1)).to(torch.int32)  # [n_pad]
    scales = _pad_rows(qw.scales.float(), n_pad)[:, 0].contiguous()  # [n_pad]
    zeros = None
    if qw.zeros is not None and bool((qw.zeros != 0).any()):
        zeros = _pad_rows(qw.zeros.float(), n_pad)[:, 0].contiguous()  # [n_pad]
    return PackedWeight("w8a8", packed, scales, zeros, wsum, n, k, qw.group_size, 8)


PACKERS = {"w8a16": pack_w8a16, "w4a16": pack_w4a16, "w8a8": pack_w8a8}


def _run(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None, method: str) -> torch.Tensor:
    if packed.method != method:
        raise ValueError(f"weight packed for {packed.method}, called as {method}")
    ext = load_quant_kernels()
    if ext is None:
        raise RuntimeError(f"quantized kernels unavailable: {quant_kernels_unavailable_reason()}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, packed.k)
    xb = x2.to(torch.bfloat16).contiguous()  # [M, K]
    b = None if bias is None else bias.float()  # [N]
    if method == "w8a8":
        y = ext.linear_w8a8(
            xb, packed.qweight, packed.n, packed.wsum, packed.scales, packed.offsets, b, W8A8_HYBRID_MIN_ROWS
        )
    else:
        y = ext.linear_a16(
            xb, packed.qweight, packed.bits, packed.n, packed.group_size, packed.scales, packed.offsets, b,
            SCRATCH_MIN_ROWS,
        )
    return y.to(x.dtype).reshape(*lead, packed.n)  # y: [..., N]


def linear_w8a16(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] (bf16; other dtypes via bf16) @ W^T (+ bias) -> [..., N] in x.dtype."""
    return _run(x, packed, bias, "w8a16")


def linear_w4a16(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] (bf16; other dtypes via bf16) @ W^T (+ bias) -> [..., N] in x.dtype."""
    return _run(x, packed, bias, "w4a16")


def linear_w8a8(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """quantize_per_token(x [..., K]) @ W^T (+ bias) -> [..., N] in x.dtype, int8 dot products."""
    return _run(x, packed, bias, "w8a8")


def quant_linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel of `packed.method`."""
    return _run(x, packed, bias, packed.method)


# ---- PyTorch references: the tests' oracle, and the path on every other device --------------------


def quantize_per_token_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (int8 codes [M, K], fp32 scales [M]) exactly as the kernel: round half to even of
    x / s in fp32, s = max|x| / 127 (1 for an all-zero row)."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1)  # [M]
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))  # [M]
    q = torch.round(xf / scale[:, None]).clamp(-127, 127).to(torch.int8)  # [M, K]
    return q, scale


def reference_weight_only(
    x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """w8a16 / w4a16: x @ dequantize(qw)^T (+ bias) in fp32, rounded once to x.dtype."""
    b = None if bias is None else bias.float()
    return F.linear(x.float(), qw.dequantize(torch.float32).to(x.device), b).to(x.dtype)


def reference_w8a8(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """w8a8 with the kernel's arithmetic: per-token int8 x, exact integer dots, fp32 epilogue
    (d - zero * sum(q)) * (s_token * scale) + bias. x is taken as bf16, as the kernel takes it."""
    if _groups(qw) != 1:
        raise ValueError("w8a8 needs one scale per output channel")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # [M, K]
    xq, sx = quantize_per_token_reference(x2)
    dot = (xq.double() @ qw.qweight.double().T).float()  # [M, N]: exact in float64, then one fp32 rounding
    d = dot if qw.zeros is None else dot - qw.zeros.float()[:, 0] * xq.double().sum(1, keepdim=True).float()
    y = d * (sx[:, None] * qw.scales.float()[:, 0])
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*lead, qw.shape[0])


def reference_linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The reference of the method `qw` stands for: w8a8 when qw.act_quant, weight-only otherwise."""
    return reference_w8a8(x, qw, bias) if qw.act_quant else reference_weight_only(x, qw, bias)
