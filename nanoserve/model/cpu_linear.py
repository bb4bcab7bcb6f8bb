"""Faster CPU linear layers for bf16 weights: the decode step's skinny matmuls.

At decode time a linear layer multiplies a few rows of activations by a large weight matrix, so its
speed is the speed at which the weight streams from memory. Plain `F.linear` in bf16 reaches only
~15–18 GB/s on this machine kind (REFERENCES.md, "CPU speed facts"); two better paths exist:

- ``"mkldnn"``: oneDNN with the weight reordered once into its blocked layout
  (`torch.ops.mkldnn._reorder_linear_weight`), then `_linear_pointwise` per call. Needs a second copy of
  the weight in the packed layout, so the plain weight is dropped when only this path is used.
- ``"avx512"``: a small native kernel (AVX-512 ``vdpbf16ps``: 32 bf16 multiply-adds per instruction,
  fp32 accumulation) that tiles 4 weight rows × 4 activation rows in registers, built once with
  `torch.utils.cpp_extension.load_inline` and threaded with ATen's own pool. It reads the plain
  row-major weight, so no copy is made; used for up to `AVX512_MAX_ROWS` activation rows, with
  `F.linear` for larger (compute-bound, prefill) batches.

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

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "mkldnn", "avx512")
AVX512_MAX_ROWS = 64  # above this many activation rows the kernel no longer beats oneDNN / F.linear

_CPP = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

using bf16 = at::BFloat16;

// acc[i][j] = x[m0+i, :] . w[n0+j, :] for MB activation rows and NB weight rows, kept in registers.
template <int MB, int NB>
static inline void tile(const bf16* x, int64_t ldx, const bf16* w, int64_t K, const float* bias,
                        bf16* y, int64_t ldy, int64_t m0, int64_t n0) {
  __m512 acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w + (n0 + j) * K + k);
    for (int i = 0; i < MB; ++i) {
      __m512bh xv = (__m512bh)_mm512_loadu_si512(x + (m0 + i) * ldx + k);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  if (k < K) {  // tail: masked loads read zeros past the row end
    __mmask32 mask = (__mmask32)((1ull << (K - k)) - 1);
    __m512bh wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + (n0 + j) * K + k);
    for (int i = 0; i < MB; ++i) {
      __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + (m0 + i) * ldx + k);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) {
      float s = _mm512_reduce_add_ps(acc[i][j]) + (bias ? bias[n0 + j] : 0.f);
      y[(m0 + i) * ldy + n0 + j] = bf16(s);
    }
}

template <int NB>
static void rows(const bf16* x, int64_t ldx, int64_t M, const bf16* w, int64_t K, const float* bias,
                 bf16* y, int64_t ldy, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) tile<4, NB>(x, ldx, w, K, bias, y, ldy, m, n0);
  switch (M - m) {
    case 3: tile<3, NB>(x, ldx, w, K, bias, y, ldy, m, n0); break;
    case 2: tile<2, NB>(x, ldx, w, K, bias, y, ldy, m, n0); break;
    case 1: tile<1, NB>(x, ldx, w, K, bias, y, ldy, m, n0); break;
    default: break;
  }
}

// y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N] in fp32); x, w bf16 contiguous.
torch::Tensor gemm_bf16(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* wp = w.data_ptr<bf16>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  bf16* yp = y.data_ptr<bf16>();
  const int64_t nblocks = N / 4;
  // Split the weight rows between threads: each weight byte is read from memory exactly once.
  at::parallel_for(0, nblocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) rows<4>(xp, K, M, wp, K, bp, yp, N, b * 4);
  });
  for (int64_t n = nblocks * 4; n < N; ++n) rows<1>(xp, K, M, wp, K, bp, yp, N, n);
  return y;
}
"""

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
                    name="nanoserve_cpu_linear_v1",
                    cpp_sources=_CPP,
                    functions=["gemm_bf16"],
                    extra_cflags=["-O3", "-march=native", "-mavx512f", "-mavx512bf16", "-mavx512bw"],
                    verbose=False,
                )
            except Exception as e:  # no compiler, old gcc, sandbox without headers...
                _ext_error = f"native kernel build failed: {type(e).__name__}: {str(e)[:300]}"
        if _ext_error:
            log.info("cpu_linear: avx512 path unavailable (%s)", _ext_error)
        return _ext


def avx512_unavailable_reason() -> str | None:
    return _ext_error


def mkldnn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class FastLinear:
    """`y = x @ weight.T + bias` through the chosen CPU path; callable on any leading shape.

    backend: "torch" (F.linear), "mkldnn" (prepacked oneDNN), "avx512" (native kernel for up to
    AVX512_MAX_ROWS rows, F.linear above), or "auto" (avx512, else mkldnn, else torch). A backend that
    cannot serve this weight (not bf16, not on CPU, not built) falls back to "torch"; `self.backend`
    says which path was taken.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} (got {backend!r})")
        self.out_features, self.in_features = weight.shape
        self.weight = weight  # kept for the torch / avx512 paths; None on the mkldnn path
        self.bias = bias
        self._packed: torch.Tensor | None = None
        self._bias_f32: torch.Tensor | None = None
        self._ext = None
        eligible = weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and weight.dim() == 2
        if backend in ("auto", "avx512") and eligible:
            self._ext = load_avx512_kernel()
            if self._ext is not None:
                self.weight = weight.contiguous()
                if bias is not None:
                    self._bias_f32 = bias.detach().float().contiguous()
                self.backend = "avx512"
                return
        if backend in ("auto", "mkldnn", "avx512") and eligible and mkldnn_available():
            try:
                self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
                self.weight = None
                self.backend = "mkldnn"
                return
            except RuntimeError as e:
                log.info("cpu_linear: mkldnn reorder failed (%s); using F.linear", e)
        self.backend = "torch"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "avx512":
            lead = x.shape[:-1]
            x2 = x.reshape(-1, self.in_features)
            if x2.dtype == torch.bfloat16 and x2.shape[0] <= AVX512_MAX_ROWS and not x2.requires_grad:
                y = self._ext.gemm_bf16(x2.contiguous(), self.weight, self._bias_f32)  # [M, N]
                return y.reshape(*lead, self.out_features)
            return F.linear(x, self.weight, self.bias)
        if self.backend == "mkldnn":
            return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")
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
