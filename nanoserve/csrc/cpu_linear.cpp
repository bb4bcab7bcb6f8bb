// The AVX-512 linear kernels over a packed weight (see nanoserve/model/cpu_linear.py): bf16 (vdpbf16ps,
// k in pairs) and fp32 (vfmadd, one k at a time), on one driver (few_rows, block_rows, gemm_packed).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cstring>
#include <numeric>

#include "kernel_table.h"
#include "threads_probe.h"

using bf16 = at::BFloat16;

// Packed weight wp: [N_pad/64][K2][64][2] bf16, K2 = ceil(K/2): element (n, k) sits at
// ((n / 64) * K2 + k / 2) * 128 + (n % 64) * 2 + k % 2, zero-padded in n and k. One k pair of one
// 64-output block is 256 contiguous bytes = 4 zmm, each holding 16 outputs x 2 k values, the operand
// layout of vdpbf16ps against a broadcast activation pair.
//
// fp32 weight wp: [N_pad/64][K][64] fp32: element (n, k) at ((n / 64) * K + k) * 64 + n % 64, zero-padded
// in n. One k of one block is again 256 contiguous bytes = 4 zmm of 16 outputs each.
constexpr int64_t BLOCK_N = 64;

// Elements of one packed 64-output block.
static inline int64_t block_elems(const bf16*, int64_t K) { return (K + 1) / 2 * 2 * BLOCK_N; }
static inline int64_t block_elems(const float*, int64_t K) { return K * BLOCK_N; }

// 16 outputs (the first `left` of them when fewer remain) in the output's dtype.
static inline void store16(bf16* dst, __m512 s, int64_t left) {
  const __m256i out = (__m256i)_mm512_cvtneps_pbh(s);
  if (left >= 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), out);
  else _mm256_mask_storeu_epi16(dst, (__mmask16)((1u << left) - 1), out);
}
static inline void store16(float* dst, __m512 s, int64_t left) {
  if (left >= 16) _mm512_storeu_ps(dst, s);
  else _mm512_mask_storeu_ps(dst, (__mmask16)((1u << left) - 1), s);
}

// A tile's accumulators + bias (zero-padded to N_pad) into y, columns past N left alone.
template <int MR, int NB, typename T>
static inline void store_tile(const __m512 (&acc)[NB][MR][4], const float* bias, T* y, int64_t ldy,
                              int64_t n0, int64_t N) {
  #pragma GCC unroll 16
  for (int b = 0; b < NB; ++b)
    #pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
      #pragma GCC unroll 16
      for (int j = 0; j < 4; ++j) {
        const int64_t n = n0 + BLOCK_N * b + 16 * j;
        if (n >= N) break;
        __m512 s = acc[b][i][j];
        if (bias) s = _mm512_add_ps(s, _mm512_loadu_ps(bias + n));
        store16(y + i * ldy + n, s, N - n);
      }
}

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

// y[m0:m0+MR, n0:n0+64*NB] = x[m0:m0+MR, :] @ (NB adjacent blocks)^T (+ bias); 4*MR*NB fp32
// accumulators in registers (the unroll pragmas: without them GCC 12 kept some of them on the stack,
// see quant_linear.cpp's tile_a8). pf: another block of the same size to pull into L2 meanwhile (one k pair,
// 256 bytes, per k pair).
//
// Batch invariance: every output sums its k pairs in one accumulator, in order from pair 0, whatever
// MR and NB, so a row's result never depends on how many rows share the step (a speculative verify of
// k + 1 rows gives a row the bits a one-row decode step gives it; greedy output with speculation on
// then equals speculation off). One or two rows keep enough independent vdpbf16ps chains in flight to
// hide their latency by taking three blocks at once (NB = 3: 12 or 24 chains), not by splitting k in
// two (which changed the rounding against the 3..6-row tiles). Measured on SmolLM2-135M's decode
// linears (Zen 4, one thread, against the old split-k tile): one row on one block (4 chains) ~17%
// slower, on two blocks ~4% slower, on three as fast; two rows on one block ~4% slower, on three ~5%
// faster.
template <int MR, int NB = 1>
static inline void tile(const bf16* x, int64_t ldx, int64_t K, const bf16* wb, const float* bias,
                        bf16* y, int64_t ldy, int64_t n0, int64_t N, const bf16* pf = nullptr) {
  const int64_t K2 = (K + 1) / 2, Kfull = K / 2;  // pairs, pairs without the odd tail
  const int64_t block = block_elems(wb, K);
  __m512 acc[NB][MR][4];
  #pragma GCC unroll 16
  for (int b = 0; b < NB; ++b)
    #pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
      #pragma GCC unroll 16
      for (int j = 0; j < 4; ++j) acc[b][i][j] = _mm512_setzero_ps();
  const int32_t* xr[MR];
  #pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) xr[i] = reinterpret_cast<const int32_t*>(x + i * ldx);
  for (int64_t kp = 0; kp < Kfull; ++kp) {
    if (pf)
      #pragma GCC unroll 16
      for (int l = 0; l < 4; ++l) _mm_prefetch((const char*)(pf + kp * 128 + 32 * l), _MM_HINT_T1);
    #pragma GCC unroll 16
    for (int b = 0; b < NB; ++b) {
      const bf16* w = wb + b * block + kp * 128;
      __m512bh w0 = (__m512bh)_mm512_loadu_si512(w);
      __m512bh w1 = (__m512bh)_mm512_loadu_si512(w + 32);
      __m512bh w2 = (__m512bh)_mm512_loadu_si512(w + 64);
      __m512bh w3 = (__m512bh)_mm512_loadu_si512(w + 96);
      #pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        __m512bh xb = (__m512bh)_mm512_set1_epi32(xr[i][kp]);
        acc[b][i][0] = _mm512_dpbf16_ps(acc[b][i][0], xb, w0);
        acc[b][i][1] = _mm512_dpbf16_ps(acc[b][i][1], xb, w1);
        acc[b][i][2] = _mm512_dpbf16_ps(acc[b][i][2], xb, w2);
        acc[b][i][3] = _mm512_dpbf16_ps(acc[b][i][3], xb, w3);
      }
    }
  }
  if (Kfull < K2) {  // odd K: the tail pair (x[K-1], 0), last as in every tile
    #pragma GCC unroll 16
    for (int b = 0; b < NB; ++b) {
      const bf16* w = wb + b * block + Kfull * 128;
      __m512bh wv[4];
      #pragma GCC unroll 16
      for (int j = 0; j < 4; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w + 32 * j);
      #pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        __m512bh xb = (__m512bh)_mm512_set1_epi32(pair_at(x + i * ldx, Kfull, K));
        #pragma GCC unroll 16
        for (int j = 0; j < 4; ++j) acc[b][i][j] = _mm512_dpbf16_ps(acc[b][i][j], xb, wv[j]);
      }
    }
  }
  store_tile<MR, NB>(acc, bias, y, ldy, n0, N);
}

// The fp32 tile: the same contract as the bf16 one (one in-order accumulator per output, batch
// invariant), fused multiply-adds of a broadcast activation against 16 outputs, k one at a time.
template <int MR, int NB = 1>
static inline void tile(const float* x, int64_t ldx, int64_t K, const float* wb, const float* bias,
                        float* y, int64_t ldy, int64_t n0, int64_t N, const float* pf = nullptr) {
  const int64_t block = K * BLOCK_N;
  __m512 acc[NB][MR][4];
  #pragma GCC unroll 16
  for (int b = 0; b < NB; ++b)
    #pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
      #pragma GCC unroll 16
      for (int j = 0; j < 4; ++j) acc[b][i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    if (pf)
      #pragma GCC unroll 16
      for (int l = 0; l < 4; ++l) _mm_prefetch((const char*)(pf + k * 64 + 16 * l), _MM_HINT_T1);
    #pragma GCC unroll 16
    for (int b = 0; b < NB; ++b) {
      const float* w = wb + b * block + k * 64;
      const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16);
      const __m512 w2 = _mm512_loadu_ps(w + 32), w3 = _mm512_loadu_ps(w + 48);
      #pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m512 xb = _mm512_set1_ps(x[i * ldx + k]);
        acc[b][i][0] = _mm512_fmadd_ps(xb, w0, acc[b][i][0]);
        acc[b][i][1] = _mm512_fmadd_ps(xb, w1, acc[b][i][1]);
        acc[b][i][2] = _mm512_fmadd_ps(xb, w2, acc[b][i][2]);
        acc[b][i][3] = _mm512_fmadd_ps(xb, w3, acc[b][i][3]);
      }
    }
  }
  store_tile<MR, NB>(acc, bias, y, ldy, n0, N);
}

// y[0:MR, blocks b0..b1) for MR = 1 or 2 rows: three blocks per tile, then what is left (see tile).
template <int MR, typename T>
static void few_rows(const T* x, int64_t K, const T* wp, int64_t b0, int64_t b1, const float* bias,
                     T* y, int64_t N) {
  const int64_t be = block_elems(wp, K);
  int64_t b = b0;
  for (; b + 3 <= b1; b += 3) tile<MR, 3>(x, K, K, wp + b * be, bias, y, N, b * BLOCK_N, N);
  if (b + 2 <= b1) tile<MR, 2>(x, K, K, wp + b * be, bias, y, N, b * BLOCK_N, N);
  else if (b < b1) tile<MR, 1>(x, K, K, wp + b * be, bias, y, N, b * BLOCK_N, N);
}

static constexpr int MR_MAX = 6;  // 6 rows x 4 zmm = 24 accumulators + 4 weight + 1 broadcast <= 32

template <typename T>
static void block_rows(const T* x, int64_t M, int64_t K, const T* wb, const float* bias, T* y,
                       int64_t N, int64_t n0, const T* next) {
  // Row tiles run one after another over the same block: the first streams it from memory, the
  // rest find it in L2 (a block is 64 x K x 2 bytes: 112 KiB at K = 896, 608 KiB at K = 4864). The
  // largest tile goes first so the memory stream overlaps the most arithmetic. With two or more
  // full tiles the second also prefetches the thread's next block into L2, so the next first tile
  // computes instead of waiting on memory (a few percent at 32 and 64 rows; benchmarks/RESULTS.md).
  // Below 12 rows the step is memory-bound and the hardware prefetcher already keeps up.
  int64_t m = 0;
  for (; m + MR_MAX <= M; m += MR_MAX) {
    const T* pf = (m == MR_MAX && M >= 2 * MR_MAX) ? next : nullptr;
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

// How many groups of rows each block's work is cut into: 1 (threads split blocks only) unless there are
// enough rows to be compute-bound (two full tiles per group and thread) and the blocks do not divide
// evenly between the threads; then the fewest groups that make (blocks x groups) divide evenly.
static int64_t row_groups(int64_t M, int64_t nblocks, int64_t threads) {
  if (threads <= 1 || nblocks % threads == 0) return 1;
  const int64_t groups = threads / std::gcd(nblocks, threads);
  return M >= groups * 2 * MR_MAX ? groups : 1;
}

// y[M, N] = x[M, K] @ W^T (+ bias) with W packed as above; x contiguous of the weight's dtype, bias
// fp32 [N_pad].
template <typename T>
static torch::Tensor gemm_packed(torch::Tensor x, torch::Tensor wp, int64_t N, c10::optional<torch::Tensor> bias,
                                 int64_t k_rows) {
  const int64_t M = x.size(0), K = x.size(1), nblocks = wp.size(0);
  TORCH_CHECK(x.scalar_type() == wp.scalar_type(), "x and the packed weight differ in dtype");
  TORCH_CHECK(wp.size(1) == k_rows && wp.size(2) == BLOCK_N && nblocks * BLOCK_N >= N, "packed shape");
  auto y = torch::empty({M, N}, x.options());
  const T* xp = x.data_ptr<T>();
  const T* wpp = wp.data_ptr<T>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  T* yp = y.data_ptr<T>();
  const int64_t be = block_elems(wpp, K);
  // Threads split the work items: (64-output block, group of rows), block-major. With one group (the
  // usual case) each weight byte is read from memory exactly once. With several (compute-bound, and the
  // blocks do not divide evenly between the threads: SmolLM2's o and down projections have 9 blocks, 5 +
  // 4 on two threads, so one thread idled 20% of the call) a thread runs every group of a block back to
  // back (the block stays in its L2) and only the blocks at the threads' boundaries are read twice. A
  // row's result does not depend on its group (every tile sums k in order; see tile).
  const int64_t groups = row_groups(M, nblocks, at::get_num_threads());
  const int64_t rows = (M + groups - 1) / groups, group_rows = (rows + MR_MAX - 1) / MR_MAX * MR_MAX;
  at::parallel_for(0, nblocks * groups, 1, [&](int64_t i0, int64_t i1) {
    // 1-2 rows (one group then): several blocks per tile, see few_rows.
    if (M == 1) return few_rows<1>(xp, K, wpp, i0, i1, bp, yp, N);
    if (M == 2) return few_rows<2>(xp, K, wpp, i0, i1, bp, yp, N);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / groups, m0 = (i % groups) * group_rows, mr = std::min(group_rows, M - m0);
      if (mr <= 0) continue;
      // the thread's next block, pulled into L2 while its last group of this block computes
      const bool last_group = i % groups == groups - 1 && i + 1 < i1;
      const T* next = last_group ? wpp + (b + 1) * be : nullptr;
      block_rows(xp + m0 * K, mr, K, wpp + b * be, bp, yp + m0 * N, N, b * BLOCK_N, next);
    }
  });
  return y;
}

torch::Tensor gemm_bf16_packed(torch::Tensor x, torch::Tensor wp, int64_t N, c10::optional<torch::Tensor> bias) {
  return gemm_packed<bf16>(x, wp, N, bias, (x.size(1) + 1) / 2);
}

torch::Tensor gemm_f32_packed(torch::Tensor x, torch::Tensor wp, int64_t N, c10::optional<torch::Tensor> bias) {
  return gemm_packed<float>(x, wp, N, bias, x.size(1));
}

static const LinearKernelTable kTable = {&gemm_bf16_packed, &gemm_f32_packed};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemm_bf16_packed", &gemm_bf16_packed, "y = x @ W^T (+ bias) with W packed by cpu_linear.pack_weight");
  m.def("gemm_f32_packed", &gemm_f32_packed, "y = x @ W^T (+ bias) with W packed by cpu_linear.pack_weight_f32");
  m.def("parallel_threads_used", &parallel_threads_used, "threads at::parallel_for used for n items");
  m.attr("kernel_table") = kernel_table_capsule(&kTable, NANOSERVE_LINEAR_TABLE);  // for fused_decode
}
