"""Faster CPU linear layers for bf16 weights: the decode step's skinny matmuls.

At decode time a linear layer multiplies a few rows of activations by a large weight matrix, so its
speed is the speed at which the weight streams from memory. Plain `F.linear` in bf16 reaches only
~15–18 GB/s on this machine kind (REFERENCES.md, "CPU speed facts"); two better paths exist:

- ``"mkldnn"``: oneDNN with the weight reordered once into its blocked layout
  (`torch.ops.mkldnn._reorder_linear_weight`), then `_linear_pointwise` per call. Needs a second copy of
  the weight in the packed layout, so the plain weight is dropped when only this path is used.
- ``"avx512"``: a small native kernel (AVX-512 ``vdpbf16ps``, fp32 accumulation) over a weight packed
  once at load into blocks of 64 output rows with K interleaved in pairs (`pack_weight`): one 512-bit
  load holds 16 outputs × 2 k values, so a broadcast activation pair accumulates 16 outputs per
  instruction with no horizontal sums, and a tile of up to 6 activation rows × 64 outputs lives in 24
  registers. Built once with `torch.utils.cpp_extension.load_inline`, threaded with ATen's own pool
  over the 64-row blocks (each weight byte is read once per call). It serves every batch size: with
  row tiles over an L2-resident block it also beats `F.linear` and oneDNN at prefill sizes (measured
  back to back, 1 thread on a busy 2-core Zen 4, 300 rows: Qwen2.5-0.5B linears of 4 layers + lm_head
  126 vs 111 GFLOP/s for `F.linear`; per shape avx512 140–221, mkldnn 134–210, F.linear 118–196), so
  no plain copy is kept for a large-batch fallback. The
  packed copy replaces the plain weight (same bytes plus padding of N to 64 and K to even); a tied
  lm_head still has the plain embedding beside it, as on the mkldnn path.

`prepare_linear(weight, bias)` picks the best available path ("auto") and always falls back to
`F.linear`, which is correct everywhere (any dtype, any device). Results agree with `F.linear`
within bf16 rounding: every path accumulates in fp32 and rounds once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nanoserve.config import CPU_LINEAR_BACKENDS as BACKENDS
from nanoserve.model.native_build import OPENMP_CFLAGS, OPENMP_LDFLAGS, THREADS_PROBE_CPP

log = logging.getLogger(__name__)

# "hybrid": the avx512 kernel up to this many activation rows, oneDNN above (twice the weight memory).
# `nanoserve bench linear`, quiet 2-core Zen 4, 2 threads, OMP_WAIT_POLICY=ACTIVE, all linears of a
# Qwen2.5-0.5B decode step, avx512 vs oneDNN ms: batch 1 32.3 vs 49.3; 4 33.4 vs 40.2; 8 37.9 vs 57.2;
# 16 57.9 vs 58.9; 32 102.0 vs 103.3; 64 190.6 vs 182.4. So "auto" is the kernel alone (one copy).
HYBRID_AVX512_MAX_ROWS = 32
PACK_BLOCK_N = 64  # output rows per packed block; must equal BLOCK_N in _CPP

_CPP = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstring>

using bf16 = at::BFloat16;

// Packed weight wp: [N_pad/64][K2][64][2] bf16, K2 = ceil(K/2): element (n, k) sits at
// ((n / 64) * K2 + k / 2) * 128 + (n % 64) * 2 + k % 2, zero-padded in n and k. One k pair of one
// 64-output block is 256 contiguous bytes = 4 zmm, each holding 16 outputs x 2 k values, the operand
// layout of vdpbf16ps against a broadcast activation pair.
constexpr int64_t BLOCK_N = 64;

static inline int32_t pair_at(const bf16* row, int64_t kp, int64_t K) {
  if (2 * kp + 1 < K) {
    int32_t v;
    std::memcpy(&v, row + 2 * kp, 4);
    return v;
  }
  uint16_t lo;  // odd K: the last pair is (x[K-1], 0)
  std::memcpy(&lo, row + 2 * kp, 2);
  return (int32_t)lo;
}

// y[m0:m0+MR, n0:n0+64] = x[m0:m0+MR, :] @ block^T (+ bias); 4*MR*U fp32 accumulators in registers.
// pf: another block of the same size to pull into L2 meanwhile (one k pair, 256 bytes, per k pair).
template <int MR>
static inline void tile(const bf16* x, int64_t ldx, int64_t K, const bf16* wb, const float* bias,
                        bf16* y, int64_t ldy, int64_t n0, int64_t N, const bf16* pf = nullptr) {
  constexpr int U = MR <= 2 ? 2 : 1;  // few rows: two accumulator sets hide the vdpbf16ps latency
  const int64_t K2 = (K + 1) / 2, Kfull = K / 2;  // pairs, pairs without the odd tail
  __m512 acc[U][MR][4];
  for (int u = 0; u < U; ++u)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < 4; ++j) acc[u][i][j] = _mm512_setzero_ps();
  const int32_t* xr[MR];
  for (int i = 0; i < MR; ++i) xr[i] = reinterpret_cast<const int32_t*>(x + i * ldx);
  int64_t kp = 0;
  for (; kp + U <= Kfull; kp += U) {
    if (pf)
      for (int u = 0; u < U; ++u)
        for (int l = 0; l < 4; ++l) _mm_prefetch((const char*)(pf + (kp + u) * 128 + 32 * l), _MM_HINT_T1);
    for (int u = 0; u < U; ++u) {
      const bf16* w = wb + (kp + u) * 128;
      __m512bh w0 = (__m512bh)_mm512_loadu_si512(w);
      __m512bh w1 = (__m512bh)_mm512_loadu_si512(w + 32);
      __m512bh w2 = (__m512bh)_mm512_loadu_si512(w + 64);
      __m512bh w3 = (__m512bh)_mm512_loadu_si512(w + 96);
      for (int i = 0; i < MR; ++i) {
        __m512bh xb = (__m512bh)_mm512_set1_epi32(xr[i][kp + u]);
        acc[u][i][0] = _mm512_dpbf16_ps(acc[u][i][0], xb, w0);
        acc[u][i][1] = _mm512_dpbf16_ps(acc[u][i][1], xb, w1);
        acc[u][i][2] = _mm512_dpbf16_ps(acc[u][i][2], xb, w2);
        acc[u][i][3] = _mm512_dpbf16_ps(acc[u][i][3], xb, w3);
      }
    }
  }
  for (; kp < K2; ++kp) {  // leftover pairs (U = 2 with an odd count) and the odd-K tail pair
    const bf16* w = wb + kp * 128;
    __m512bh wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w + 32 * j);
    for (int i = 0; i < MR; ++i) {
      __m512bh xb = (__m512bh)_mm512_set1_epi32(pair_at(x + i * ldx, kp, K));
      for (int j = 0; j < 4; ++j) acc[0][i][j] = _mm512_dpbf16_ps(acc[0][i][j], xb, wv[j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + 16 * j;
      if (n >= N) break;
      __m512 s = acc[0][i][j];
      if (U == 2) s = _mm512_add_ps(s, acc[U - 1][i][j]);
      if (bias) s = _mm512_add_ps(s, _mm512_loadu_ps(bias + n));  // bias is zero-padded to N_pad
      __m256i out = (__m256i)_mm512_cvtneps_pbh(s);
      bf16* dst = y + i * ldy + n;
      if (n + 16 <= N) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), out);
      else _mm256_mask_storeu_epi16(dst, (__mmask16)((1u << (N - n)) - 1), out);
    }
}

static constexpr int MR_MAX = 6;  // 6 rows x 4 zmm = 24 accumulators + 4 weight + 1 broadcast <= 32

static void block_rows(const bf16* x, int64_t M, int64_t K, const bf16* wb, const float* bias, bf16* y,
                       int64_t N, int64_t n0, const bf16* next) {
  // Row tiles run one after another over the same block: the first streams it from memory, the
  // rest find it in L2 (a block is 64 x K x 2 bytes: 112 KiB at K = 896, 608 KiB at K = 4864). The
  // largest tile goes first so the memory stream overlaps the most arithmetic. With two or more
  // full tiles the second also prefetches the thread's next block into L2, so the next first tile
  // computes instead of waiting on memory: all linears of a Qwen2.5-0.5B step, 2 threads, 5 runs
  // alternating: 32 rows 96.9 vs 102.1 ms, 64 rows 176.8 vs 182.9. (Below 12 rows the step is
  // memory-bound and the hardware prefetcher already keeps up.)
  int64_t m = 0;
  for (; m + MR_MAX <= M; m += MR_MAX) {
    const bf16* pf = (m == MR_MAX && M >= 2 * MR_MAX) ? next : nullptr;
    tile<MR_MAX>(x + m * K, K, K, wb, bias, y + m * N, N, n0, N, pf);
  }
  switch (M - m) {
    case 5: tile<5>(x + m * K, K, K, wb, bias, y + m * N, N, n0, N); break;
    case 4: tile<4>(x + m * K, K, K, wb, bias, y + m * N, N, n0, N); break;
    case 3: tile<3>(x + m * K, K, K, wb, bias, y + m * N, N, n0, N); break;
    case 2: tile<2>(x + m * K, K, K, wb, bias, y + m * N, N, n0, N); break;
    case 1: tile<1>(x + m * K, K, K, wb, bias, y + m * N, N, n0, N); break;
    default: break;
  }
}

// y[M, N] = x[M, K] @ W^T (+ bias) with W packed as above; x bf16 contiguous, bias fp32 [N_pad].
torch::Tensor gemm_bf16_packed(torch::Tensor x, torch::Tensor wp, int64_t N,
                               c10::optional<torch::Tensor> bias) {
  const int64_t M = x.size(0), K = x.size(1), K2 = (K + 1) / 2, nblocks = wp.size(0);
  TORCH_CHECK(wp.size(1) == K2 && wp.size(2) == BLOCK_N && nblocks * BLOCK_N >= N, "packed shape");
  auto y = torch::empty({M, N}, x.options());
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* wpp = wp.data_ptr<bf16>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  bf16* yp = y.data_ptr<bf16>();
  // Split the 64-output blocks between threads: each weight byte is read from memory exactly once.
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const bf16* next = b + 1 < b1 ? wpp + (b + 1) * K2 * 2 * BLOCK_N : nullptr;
      block_rows(xp, M, K, wpp + b * K2 * 2 * BLOCK_N, bp, yp, N, b * BLOCK_N, next);
    }
  });
  return y;
}
""" + THREADS_PROBE_CPP

_ext = None
_ext_error: str | None = None
_ext_lock = threading.Lock()


def cpu_has_avx512_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_bf16" in f.read()
    except OSError:
        return False


def load_avx512_kernel():
    """Build (first call: ~20–30 s, cached on disk after) and return the native kernel, or None.

    Returns None, with the reason in `avx512_unavailable_reason()`, when the CPU lacks AVX-512 bf16,
    no compiler is found, the build fails, or NANOSERVE_DISABLE_NATIVE_LINEAR=1.
    """
    global _ext, _ext_error
    with _ext_lock:
        if _ext is not None or _ext_error is not None:
            return _ext
        if os.environ.get("NANOSERVE_DISABLE_NATIVE_LINEAR") == "1":
            _ext_error = "disabled by NANOSERVE_DISABLE_NATIVE_LINEAR=1"
        elif not cpu_has_avx512_bf16():
            _ext_error = "CPU has no avx512_bf16"
        else:
            try:
                from torch.utils.cpp_extension import load_inline

                _ext = load_inline(
                    name="nanoserve_cpu_linear_v4",
                    cpp_sources=_CPP,
                    functions=["gemm_bf16_packed", "parallel_threads_used"],
                    extra_cflags=["-O3", "-march=native", "-mavx512f", "-mavx512bf16", "-mavx512bw"]
                    + OPENMP_CFLAGS,
                    extra_ldflags=OPENMP_LDFLAGS,
                    verbose=False,
                )
            except Exception as e:  # no compiler, old gcc, sandbox without headers...
                _ext_error = f"native kernel build failed: {type(e).__name__}: {str(e)[:300]}"
        if _ext_error:
            log.info("cpu_linear: avx512 path unavailable (%s)", _ext_error)
        return _ext


def avx512_unavailable_reason() -> str | None:
    return _ext_error


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] bf16 -> [ceil(N/64), ceil(K/2), 64, 2], zero-padded: the avx512 kernel's weight layout."""
    n, k = weight.shape
    n_pad, k_pad = -(-n // PACK_BLOCK_N) * PACK_BLOCK_N, k + k % 2
    if (n_pad, k_pad) != (n, k):
        weight = F.pad(weight, (0, k_pad - k, 0, n_pad - n))  # [n_pad, k_pad]
    blocks = weight.reshape(n_pad // PACK_BLOCK_N, PACK_BLOCK_N, k_pad // 2, 2)
    return blocks.permute(0, 2, 1, 3).contiguous()


def unpack_weight(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """Inverse of `pack_weight`: the plain [N, K] weight (a copy) for the rare F.linear fallback."""
    nb, k2, block, _ = packed.shape
    return packed.permute(0, 2, 1, 3).reshape(nb * block, 2 * k2)[:out_features, :in_features].contiguous()


def mkldnn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class FastLinear:
    """`y = x @ weight.T + bias` through the chosen CPU path; callable on any leading shape.

    backend: "torch" (F.linear), "mkldnn" (prepacked oneDNN), "avx512" (native kernel on a packed
    weight, any number of rows), "hybrid" (both packed copies: avx512 for up to
    HYBRID_AVX512_MAX_ROWS rows, oneDNN for more, where it is a few percent faster; twice the weight
    memory), or "auto" (avx512, else mkldnn, else torch). A backend that
    cannot serve this weight (not bf16, not on CPU, not built) falls back to "torch"; `self.backend`
    says which path was taken.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} (got {backend!r})")
        self.out_features, self.in_features = weight.shape
        self.weight = weight  # kept for the torch path; None on the mkldnn and avx512 paths (packed copy)
        self.bias = bias
        self._packed: torch.Tensor | None = None  # the avx512 kernel's layout of the weight
        self._mkldnn: torch.Tensor | None = None  # oneDNN's layout of the weight
        self._bias_f32: torch.Tensor | None = None
        eligible = weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and weight.dim() == 2
        self._ext = load_avx512_kernel() if eligible and backend in ("auto", "avx512", "hybrid") else None
        # oneDNN serves hybrid's wider inputs, and stands in when the kernel did not build.
        no_kernel = backend in ("auto", "avx512") and self._ext is None
        wants_onednn = backend in ("hybrid", "mkldnn") or no_kernel
        if eligible and wants_onednn and mkldnn_available():
            try:
                self._mkldnn = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
            except RuntimeError as e:
                log.info("cpu_linear: mkldnn reorder failed (%s)", e)
        if self._ext is not None:
            self._packed = pack_weight(weight.detach())  # [ceil(N/64), ceil(K/2), 64, 2]
            if bias is not None:
                n_pad = self._packed.shape[0] * PACK_BLOCK_N
                self._bias_f32 = F.pad(bias.detach().float(), (0, n_pad - self.out_features))  # [n_pad]
        if self._packed is not None or self._mkldnn is not None:
            self.weight = None
        self.backend = {(True, True): "hybrid", (True, False): "avx512", (False, True): "mkldnn",
                        (False, False): "torch"}[self._packed is not None, self._mkldnn is not None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._mkldnn is not None and (
            self._packed is None or x.numel() > HYBRID_AVX512_MAX_ROWS * self.in_features
        ):
            return torch.ops.mkldnn._linear_pointwise(x, self._mkldnn, self.bias, "none", [], "")
        if self._packed is not None:
            lead = x.shape[:-1]
            x2 = x.reshape(-1, self.in_features)
            if x2.dtype == torch.bfloat16 and not x2.requires_grad:
                y = self._ext.gemm_bf16_packed(
                    x2.contiguous(), self._packed, self.out_features, self._bias_f32
                )
                return y.reshape(*lead, self.out_features)  # y: [M, N]
            # other dtypes or autograd: rebuild the plain weight for this call (never on the serving path)
            return F.linear(x, unpack_weight(self._packed, self.out_features, self.in_features), self.bias)
        return F.linear(x, self.weight, self.bias)

    def __repr__(self) -> str:
        return f"FastLinear({self.in_features}→{self.out_features}, backend={self.backend})"


def prepare_linear(
    weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return a callable computing `F.linear(x, weight, bias)` by the fastest available path."""
    return FastLinear(weight, bias, backend)


def prepare_merged_linear(
    weights: list[torch.Tensor], biases: list[torch.Tensor | None] | None = None, backend: str = "auto"
) -> tuple[FastLinear, list[int]]:
    """One FastLinear for several projections of the same input (q/k/v, gate/up) and their widths.

    One call streams all their rows in one parallel pass instead of several small ones; split the
    output with `y.split(sizes, dim=-1)`. Missing biases are zeros when any projection has one.
    """
    sizes = [w.shape[0] for w in weights]
    weight = torch.cat([w.detach() for w in weights], dim=0)  # [sum(sizes), in_features]
    bias = None
    if biases is not None and any(b is not None for b in biases):
        parts = [
            b.detach() if b is not None else weight.new_zeros(n) for b, n in zip(biases, sizes, strict=True)
        ]
        bias = torch.cat(parts)
    return FastLinear(weight, bias, backend), sizes
