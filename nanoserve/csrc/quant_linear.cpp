// AVX-512 kernels for quantized linears: int8 / int4 weights with bf16 activations (w8a16, w4a16) and
// int8 weights with per-token int8 activations through VNNI (w8a8). Layouts and the math they rely on
// are described in nanoserve/model/quant_kernels.py, which packs the weights.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernel_table.h"
#include "threads_probe.h"

using bf16 = at::BFloat16;

constexpr int64_t BLOCK_N = 64;  // outputs per packed block; PACK_BLOCK_N in quant_kernels.py
constexpr int MR_MAX = 6;        // activation rows per tile: 6 x 4 zmm accumulators + 4 weight + 1 broadcast

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

static inline __mmask16 tail_mask(int64_t n, int64_t N) {
  return n + 16 <= N ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - n)) - 1);
}

// ---- weight sources of the a16 kernels: the 4 zmm of bf16 codes (16 outputs x 2 k each) of k pair kp of
// one 64-output block. Codes are small integers, exact in bf16, so vdpbf16ps multiplies them exactly.

struct Int8Codes {  // block [K2][64][2] int8, the bf16 kernel's order
  static constexpr int64_t kp_bytes = 128;  // bytes of one k pair
  const int8_t* p;
  inline void load(int64_t kp, __m512bh w[4]) const {
    const int8_t* b = p + kp * 128;
    for (int j = 0; j < 4; ++j) {
      __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(b + 32 * j))));
      __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(b + 32 * j + 16))));
      w[j] = _mm512_cvtne2ps_pbh(hi, lo);  // elements 0..15 from lo, 16..31 from hi
    }
  }
};

struct Int4Codes {  // block [K2][64] bytes: byte i of half h holds zmm 2h's element i (low nibble), 2h+1's (high)
  static constexpr int64_t kp_bytes = 64;
  const uint8_t* p;
  inline void load(int64_t kp, __m512bh w[4]) const {
    // 0x4300 | u is the bf16 of 128 + u (u < 16): no int->float conversion; the packer folds the 128
    // into the zero point.
    const __m512i nibble = _mm512_set1_epi16(0x000F), magic = _mm512_set1_epi16(0x4300);
    for (int h = 0; h < 2; ++h) {
      __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(p + kp * 64 + 32 * h)));
      w[2 * h] = (__m512bh)_mm512_ternarylogic_epi32(v, nibble, magic, 0xEA);  // (v & 0xF) | magic
      w[2 * h + 1] = (__m512bh)_mm512_or_si512(_mm512_srli_epi16(v, 4), magic);
    }
  }
};

struct Bf16Codes {  // a block already converted by one of the above into [K2][64][2] bf16 (scratch)
  static constexpr int64_t kp_bytes = 256;
  const bf16* p;
  inline void load(int64_t kp, __m512bh w[4]) const {
    for (int j = 0; j < 4; ++j) w[j] = (__m512bh)_mm512_loadu_si512(p + kp * 128 + 32 * j);
  }
};

// Per-call data of the a16 kernels that every block reads.
struct A16Args {
  const bf16* x;      // [M, K]
  const float* xs;    // [M, G] sums of x over each group
  const float* bias;  // [N] or null
  bf16* y;            // [M, N]
  int64_t M, K, N, G, group_pairs;
  int64_t scratch_min_rows;  // convert a block once into scratch from this many rows on
};

// y[MR rows, n0:n0+64] for one block. Per group: bf16-code dot products in fp32 registers, then
// out += scale * acc - offset * xsum (offset = scale * zero point), kept in a stack buffer (L1).
// The unroll pragmas keep acc in registers (see tile_a8). pf: the codes of the block this thread takes
// next, pulled into L2 alongside (a second stream keeps more of the memory bandwidth busy), or null.
template <int MR, class W>
static inline void tile_a16(const A16Args& a, int64_t m0, const W& w, const float* scale, const float* offs,
                            int64_t n0, const char* pf = nullptr) {
  constexpr int U = MR <= 2 ? 2 : 1;  // few rows: two accumulator sets hide the vdpbf16ps latency
  const int64_t K = a.K, K2 = (K + 1) / 2, Kfull = K / 2;
  alignas(64) float out[MR][BLOCK_N];
  #pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < 4; ++j) _mm512_store_ps(out[i] + 16 * j, _mm512_setzero_ps());
  const bf16* xrow[MR];
  const int32_t* xr[MR];
  #pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    xrow[i] = a.x + (m0 + i) * K;
    xr[i] = reinterpret_cast<const int32_t*>(xrow[i]);
  }
  for (int64_t g = 0; g < a.G; ++g) {
    const int64_t kp0 = g * a.group_pairs, kp1 = std::min(kp0 + a.group_pairs, K2);
    const int64_t kend = std::min(kp1, Kfull);
    __m512 acc[U][MR][4];
    #pragma GCC unroll 16
    for (int u = 0; u < U; ++u)
      #pragma GCC unroll 16
      for (int i = 0; i < MR; ++i)
        #pragma GCC unroll 16
        for (int j = 0; j < 4; ++j) acc[u][i][j] = _mm512_setzero_ps();
    int64_t kp = kp0;
    for (; kp + U <= kend; kp += U) {
      if (pf)
        #pragma GCC unroll 8
        for (int64_t l = 0; l < U * W::kp_bytes; l += 64) _mm_prefetch(pf + kp * W::kp_bytes + l, _MM_HINT_T1);
      #pragma GCC unroll 16
      for (int u = 0; u < U; ++u) {
        __m512bh wv[4];
        w.load(kp + u, wv);
        #pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
          __m512bh xb = (__m512bh)_mm512_set1_epi32(xr[i][kp + u]);
          #pragma GCC unroll 16
          for (int j = 0; j < 4; ++j) acc[u][i][j] = _mm512_dpbf16_ps(acc[u][i][j], xb, wv[j]);
        }
      }
    }
    for (; kp < kp1; ++kp) {  // leftover pair (U = 2) and the odd-K tail pair
      __m512bh wv[4];
      w.load(kp, wv);
      #pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        __m512bh xb = (__m512bh)_mm512_set1_epi32(pair_at(xrow[i], kp, K));
        #pragma GCC unroll 16
        for (int j = 0; j < 4; ++j) acc[0][i][j] = _mm512_dpbf16_ps(acc[0][i][j], xb, wv[j]);
      }
    }
    #pragma GCC unroll 16
    for (int j = 0; j < 4; ++j) {
      const __m512 sc = _mm512_loadu_ps(scale + g * BLOCK_N + 16 * j);
      const __m512 of = _mm512_loadu_ps(offs + g * BLOCK_N + 16 * j);
      #pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        __m512 s = acc[0][i][j];
        if (U == 2) s = _mm512_add_ps(s, acc[U - 1][i][j]);
        __m512 o = _mm512_fmadd_ps(s, sc, _mm512_load_ps(out[i] + 16 * j));
        o = _mm512_fnmadd_ps(of, _mm512_set1_ps(a.xs[(m0 + i) * a.G + g]), o);
        _mm512_store_ps(out[i] + 16 * j, o);
      }
    }
  }
  #pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + 16 * j;
      if (n >= a.N) break;
      const __mmask16 mask = tail_mask(n, a.N);
      __m512 v = _mm512_load_ps(out[i] + 16 * j);
      if (a.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, a.bias + n));
      _mm256_mask_storeu_epi16(a.y + (m0 + i) * a.N + n, mask, (__m256i)_mm512_cvtneps_pbh(v));
    }
}

// pf (see tile_a16) goes to the first row tile, the one that streams the block from memory.
template <class W>
static void rows_a16(const A16Args& a, const W& w, const float* scale, const float* offs, int64_t n0,
                     const char* pf = nullptr) {
  int64_t m = 0;
  for (; m + MR_MAX <= a.M; m += MR_MAX, pf = nullptr) tile_a16<MR_MAX>(a, m, w, scale, offs, n0, pf);
  switch (a.M - m) {
    case 5: tile_a16<5>(a, m, w, scale, offs, n0, pf); break;
    case 4: tile_a16<4>(a, m, w, scale, offs, n0, pf); break;
    case 3: tile_a16<3>(a, m, w, scale, offs, n0, pf); break;
    case 2: tile_a16<2>(a, m, w, scale, offs, n0, pf); break;
    case 1: tile_a16<1>(a, m, w, scale, offs, n0, pf); break;
    default: break;
  }
}

// One 64-output block over all rows. With several row tiles the block's codes are converted to
// bf16 once into a per-thread scratch (L2-resident, 64 x K x 2 bytes) and every tile reads that: the
// conversion is then paid once per block instead of once per tile.
template <class W>
static void block_a16(const A16Args& a, const W& w, const float* scale, const float* offs, int64_t n0,
                      const char* pf) {
  if (a.M < a.scratch_min_rows) return rows_a16(a, w, scale, offs, n0, pf);
  const int64_t K2 = (a.K + 1) / 2;
  thread_local std::vector<bf16> scratch;
  if ((int64_t)scratch.size() < K2 * 128) scratch.resize(K2 * 128);
  bf16* s = scratch.data();
  for (int64_t kp = 0; kp < K2; ++kp) {
    __m512bh wv[4];
    w.load(kp, wv);
    for (int j = 0; j < 4; ++j) _mm512_storeu_si512(s + kp * 128 + 32 * j, (__m512i)wv[j]);
  }
  rows_a16(a, Bf16Codes{s}, scale, offs, n0);
}

static inline __m512 load_bf16(const bf16* x, int64_t k, int64_t end) {  // x[k:k+16] as fp32, 0 past end
  __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(tail_mask(k, end), x + k));
  return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));  // bf16 -> fp32 is a shift
}

// xs[g] = sum of x[k] over group g's columns: the zero points' share of each group's dot product.
static void group_sums(const bf16* x, int64_t K, int64_t group_size, int64_t G, float* xs) {
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k1 = std::min(K, (g + 1) * group_size);
    __m512 s = _mm512_setzero_ps();
    for (int64_t k = g * group_size; k < k1; k += 16) s = _mm512_add_ps(s, load_bf16(x, k, k1));
    xs[g] = _mm512_reduce_add_ps(s);
  }
}

// y[M, N] = x[M, K] @ W^T (+ bias), W = (codes - zero) * scale per group of group_size columns.
// wq: int8 [nb, K2, 64, 2] (bits 8) or uint8 [nb, K2, 64] (bits 4); scales, offsets: [nb, G, 64] fp32.
torch::Tensor linear_a16(torch::Tensor x, torch::Tensor wq, int64_t bits, int64_t N, int64_t group_size,
                         torch::Tensor scales, torch::Tensor offsets, c10::optional<torch::Tensor> bias,
                         int64_t scratch_min_rows) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(), "x: contiguous bf16 [M, K]");
  const int64_t M = x.size(0), K = x.size(1), K2 = (K + 1) / 2, nblocks = wq.size(0);
  const int64_t G = (K + group_size - 1) / group_size;
  TORCH_CHECK(G == 1 || group_size % 2 == 0, "grouped weights need an even group_size");
  TORCH_CHECK(wq.size(1) == K2 && nblocks * BLOCK_N >= N, "packed weight does not match x");
  TORCH_CHECK(scales.size(0) == nblocks && scales.size(1) == G && offsets.sizes() == scales.sizes(), "scales");
  TORCH_CHECK(bits == 8 ? wq.scalar_type() == at::kChar : (bits == 4 && wq.scalar_type() == at::kByte), "bits");
  if (bias.has_value()) TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() >= N, "bias: fp32 [N]");
  auto y = torch::empty({M, N}, x.options());
  if (M == 0) return y;
  auto xs = torch::empty({M, G}, x.options().dtype(at::kFloat));  // [M, G]
  const bf16* xp = x.data_ptr<bf16>();
  float* xsp = xs.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) group_sums(xp + m * K, K, group_size, G, xsp + m * G);
  });
  A16Args a{xp, xsp, bias.has_value() ? bias->data_ptr<float>() : nullptr, y.data_ptr<bf16>(),
            M, K, N, G, G == 1 ? K2 : group_size / 2, scratch_min_rows};
  const float* sp = scales.data_ptr<float>();
  const float* op = offsets.data_ptr<float>();
  // Split the 64-output blocks between threads: each weight byte is read from memory exactly once.
  const char* codes = static_cast<const char*>(wq.data_ptr());
  const int64_t block_bytes = K2 * (bits == 8 ? Int8Codes::kp_bytes : Int4Codes::kp_bytes);
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* sc = sp + b * G * BLOCK_N;
      const float* of = op + b * G * BLOCK_N;
      const char* wb = codes + b * block_bytes;
      const char* pf = b + 1 < b1 ? wb + block_bytes : nullptr;
      if (bits == 8) block_a16(a, Int8Codes{reinterpret_cast<const int8_t*>(wb)}, sc, of, b * BLOCK_N, pf);
      else block_a16(a, Int4Codes{reinterpret_cast<const uint8_t*>(wb)}, sc, of, b * BLOCK_N, pf);
    }
  });
  return y;
}

// ---- w8a8 -----------------------------------------------------------------------------------------

// Row m of x to int8 codes q = round_half_even(x / s), s = max|x| / 127 (1 for an all-zero row),
// stored as q + 128 (vpdpbusd multiplies unsigned by signed bytes); columns K..Kp-1 hold 128 (q = 0).
static void quantize_row(const bf16* x, int64_t K, int64_t Kp, uint8_t* xq, float* sx, int32_t* xsum) {
  __m512 amax = _mm512_setzero_ps();
  auto load = [&](int64_t k) { return load_bf16(x, k, K); };
  for (int64_t k = 0; k < K; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(load(k)));
  const float mx = _mm512_reduce_max_ps(amax);
  const float s = mx > 0.0f ? mx / 127.0f : 1.0f;
  const __m512 sv = _mm512_set1_ps(s);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), off = _mm512_set1_epi32(128);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 16) {
    __m512i q = _mm512_cvtps_epi32(_mm512_div_ps(load(k), sv));  // MXCSR default: round half to even
    q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
    sum = _mm512_add_epi32(sum, q);  // masked-off lanes loaded 0: q = 0
    _mm_mask_storeu_epi8(xq + k, tail_mask(k, K), _mm512_cvtepi32_epi8(_mm512_add_epi32(q, off)));
  }
  std::memset(xq + K, 128, Kp - K);
  *sx = s;
  *xsum = _mm512_reduce_add_epi32(sum);
}

// x [M, K] bf16 -> (codes + 128 as uint8 [M, Kp], scales fp32 [M], code sums int32 [M]); Kp >= K.
std::vector<torch::Tensor> quantize_per_token(torch::Tensor x, int64_t Kp) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(), "x: contiguous bf16 [M, K]");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(Kp >= K, "Kp < K");
  auto xq = torch::empty({M, Kp}, x.options().dtype(at::kByte));
  auto sx = torch::empty({M}, x.options().dtype(at::kFloat));
  auto xsum = torch::empty({M}, x.options().dtype(at::kInt));
  const bf16* xp = x.data_ptr<bf16>();
  uint8_t* qp = xq.data_ptr<uint8_t>();
  float* sp = sx.data_ptr<float>();
  int32_t* cp = xsum.data_ptr<int32_t>();
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) quantize_row(xp + m * K, K, Kp, qp + m * Kp, sp + m, cp + m);
  });
  return {xq, sx, xsum};
}

struct A8Args {
  const uint8_t* xq;     // [M, Kp] codes + 128
  const float* sx;       // [M]
  const int32_t* xsum;   // [M] sums of the codes (for zero points)
  const int32_t* wsum;   // [N_pad] 128 * sum_k q[n, k]: what the +128 on the activations added
  const float* wscale;   // [N_pad]
  const float* wzero;    // [N_pad] or null
  const float* bias;     // [N] or null
  bf16* y;               // [M, N]
  int64_t M, Kp, N;
};

// y[m0:m0+MR, n0:n0+64]: int32 dot products by vpdpbusd (4 k per instruction), then
// y = (acc - wsum - zero * xsum) * (sx[m] * scale[n]) (+ bias) in fp32.
// Every loop over rows and columns carries an unroll pragma: GCC 12 left these loops rolled when it
// decided what to keep in registers, so MR = 6's 24 accumulators lived on the stack, a load and a
// store around every vpdpbusd (the tiles ran at 0.84x the bf16 kernel's speed instead of ~2x).
template <int MR>
static inline void tile_a8(const A8Args& a, int64_t m0, const int8_t* wb, int64_t n0) {
  constexpr int U = MR <= 2 ? 2 : 1;  // few rows: two accumulator sets (k quads alternate) hide the latency
  const int64_t K4 = a.Kp / 4;
  __m512i acc[U * MR][4];  // set u, row i: acc[u * MR + i]
#pragma GCC unroll 16
  for (int r = 0; r < U * MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_si512();
  const int32_t* xr[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) xr[i] = reinterpret_cast<const int32_t*>(a.xq + (m0 + i) * a.Kp);
  int64_t kq = 0;
  for (; kq < K4; kq += U) {
    const int sets = kq + U <= K4 ? U : 1;  // the odd last quad goes to set 0
#pragma GCC unroll 2
    for (int u = 0; u < U; ++u) {
      if (u >= sets) break;
      const int8_t* w = wb + (kq + u) * 256;
      const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64);
      const __m512i w2 = _mm512_loadu_si512(w + 128), w3 = _mm512_loadu_si512(w + 192);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m512i xb = _mm512_set1_epi32(xr[i][kq + u]);
        __m512i* c = acc[u * MR + i];
        c[0] = _mm512_dpbusd_epi32(c[0], xb, w0);
        c[1] = _mm512_dpbusd_epi32(c[1], xb, w1);
        c[2] = _mm512_dpbusd_epi32(c[2], xb, w2);
        c[3] = _mm512_dpbusd_epi32(c[3], xb, w3);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    const __m512 sx = _mm512_set1_ps(a.sx[m0 + i]);
    const __m512 xsum = _mm512_set1_ps((float)a.xsum[m0 + i]);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + 16 * j;
      if (n >= a.N) break;
      const __mmask16 mask = tail_mask(n, a.N);
      __m512i s = acc[i][j];
      if (U == 2) s = _mm512_add_epi32(s, acc[MR + i][j]);
      __m512 d = _mm512_cvtepi32_ps(_mm512_sub_epi32(s, _mm512_loadu_si512(a.wsum + n)));
      if (a.wzero) d = _mm512_fnmadd_ps(_mm512_loadu_ps(a.wzero + n), xsum, d);
      __m512 v = _mm512_mul_ps(d, _mm512_mul_ps(sx, _mm512_loadu_ps(a.wscale + n)));
      if (a.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, a.bias + n));
      _mm256_mask_storeu_epi16(a.y + (m0 + i) * a.N + n, mask, (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

// ---- w8a8 hybrid (prefill): VNNI for outputs 0..47 of a block, vdpbf16ps for 48..63 --------------------
// On this CPU (Zen 4) a zmm vpdpbusd issues every ~2 cycles on the integer-multiply pipe while vdpbf16ps
// issues every cycle on the FMA pipes: VNNI alone only matches bf16's 32 MACs/cycle, but both at once
// (3 vpdpbusd : 2 vdpbf16ps) reach ~50. The bf16 part multiplies the integer codes q (activations) and
// w (weights), exact in bf16, and sums them in fp32 exactly as long as |partial sum| < 2**24: it is
// flushed into int32 every HYB_CHUNK_QUADS * 4 k (1024 * 127 * 128 < 2**24), so the integer dot, and the
// output, stay bit-identical to the VNNI-only kernel and the reference.
constexpr int64_t HYB_CHUNK_QUADS = 256;

// Outputs 48..63 of one packed block [K4][64][4] int8 -> [2 * K4][16][2] bf16 codes (the bf16 kernel's order).
static void hybrid_block_scratch(const int8_t* wb, int64_t K4, bf16* wh) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t kq = 0; kq < K4; ++kq) {
    const int8_t* b = wb + kq * 256 + 192;  // [16 outputs][4 k]
    __m512 f[4];
    for (int j = 0; j < 4; ++j) f[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(b + 16 * j))));
    const __m512i lo = (__m512i)_mm512_cvtne2ps_pbh(f[1], f[0]);  // dword 2o + p: output o, k pair p
    const __m512i hi = (__m512i)_mm512_cvtne2ps_pbh(f[3], f[2]);  // outputs 8..15
    _mm512_storeu_si512(wh + kq * 64, _mm512_permutex2var_epi32(lo, even, hi));
    _mm512_storeu_si512(wh + kq * 64 + 32, _mm512_permutex2var_epi32(lo, odd, hi));
  }
}

// Activation codes + 128 (uint8 [M, Kp]) -> the codes q as bf16 [M, Kp] (exact: |q| <= 127).
static void codes_to_bf16(const uint8_t* xq, int64_t n, bf16* out) {
  const __m512i off = _mm512_set1_epi32(128);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 mask = tail_mask(k, n);
    __m512i v = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, xq + k)), off);
    _mm256_mask_storeu_epi16(out + k, mask, (__m256i)_mm512_cvtneps_pbh(_mm512_cvtepi32_ps(v)));
  }
}

// Same contract as tile_a8; xh: the activation codes as bf16 [M, Kp]; wh: the block's hybrid scratch.
template <int MR>
static inline void tile_a8h(const A8Args& a, const bf16* xh, int64_t m0, const int8_t* wb, const bf16* wh,
                            int64_t n0) {
  const int64_t K4 = a.Kp / 4;
  __m512i acc[MR][3];  // MR x 3 + MR + 5 weights + 1 broadcast <= 32 registers at MR = 6
  alignas(64) int32_t hsum[MR][16];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < 3; ++j) acc[i][j] = _mm512_setzero_si512();
    _mm512_store_si512(hsum[i], _mm512_setzero_si512());
  }
  const int32_t* xr[MR];
  const int32_t* xp[MR];
  for (int i = 0; i < MR; ++i) {
    xr[i] = reinterpret_cast<const int32_t*>(a.xq + (m0 + i) * a.Kp);
    xp[i] = reinterpret_cast<const int32_t*>(xh + (m0 + i) * a.Kp);
  }
  for (int64_t c0 = 0; c0 < K4; c0 += HYB_CHUNK_QUADS) {
    const int64_t c1 = std::min(c0 + HYB_CHUNK_QUADS, K4);
    __m512 hacc[MR];
    for (int i = 0; i < MR; ++i) hacc[i] = _mm512_setzero_ps();
    for (int64_t kq = c0; kq < c1; ++kq) {
      const int8_t* w = wb + kq * 256;
      const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64), w2 = _mm512_loadu_si512(w + 128);
      const __m512bh h0 = (__m512bh)_mm512_loadu_si512(wh + kq * 64);
      const __m512bh h1 = (__m512bh)_mm512_loadu_si512(wh + kq * 64 + 32);
      for (int i = 0; i < MR; ++i) {
        const __m512i xb = _mm512_set1_epi32(xr[i][kq]);
        acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], xb, w0);
        acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], xb, w1);
        acc[i][2] = _mm512_dpbusd_epi32(acc[i][2], xb, w2);
        hacc[i] = _mm512_dpbf16_ps(hacc[i], (__m512bh)_mm512_set1_epi32(xp[i][2 * kq]), h0);
        hacc[i] = _mm512_dpbf16_ps(hacc[i], (__m512bh)_mm512_set1_epi32(xp[i][2 * kq + 1]), h1);
      }
    }
    for (int i = 0; i < MR; ++i)  // integer-valued and < 2**24: the conversion is exact
      _mm512_store_si512(hsum[i], _mm512_add_epi32(_mm512_load_si512(hsum[i]), _mm512_cvtps_epi32(hacc[i])));
  }
  for (int i = 0; i < MR; ++i) {
    const __m512 sx = _mm512_set1_ps(a.sx[m0 + i]);
    const __m512 xsum = _mm512_set1_ps((float)a.xsum[m0 + i]);
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + 16 * j;
      if (n >= a.N) break;
      const __mmask16 mask = tail_mask(n, a.N);
      // VNNI saw q + 128: take 128 * sum_k w off; the bf16 part multiplied q itself
      const __m512i dot = j < 3 ? _mm512_sub_epi32(acc[i][j], _mm512_loadu_si512(a.wsum + n)) : _mm512_load_si512(hsum[i]);
      __m512 d = _mm512_cvtepi32_ps(dot);
      if (a.wzero) d = _mm512_fnmadd_ps(_mm512_loadu_ps(a.wzero + n), xsum, d);
      __m512 v = _mm512_mul_ps(d, _mm512_mul_ps(sx, _mm512_loadu_ps(a.wscale + n)));
      if (a.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, a.bias + n));
      _mm256_mask_storeu_epi16(a.y + (m0 + i) * a.N + n, mask, (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

template <int MR>
static void tile_w8a8(const A8Args& a, const bf16* xh, int64_t m, const int8_t* wb, const bf16* wh, int64_t n0) {
  if (xh) tile_a8h<MR>(a, xh, m, wb, wh, n0);
  else tile_a8<MR>(a, m, wb, n0);
}

// y[M, N] = dequant(quantize_per_token(x)) @ W^T (+ bias); wq: int8 [nb, K4, 64, 4]; wsum int32 and
// wscale / wzero fp32 [nb * 64]. From hybrid_min_rows rows on, the hybrid tiles above.
torch::Tensor linear_w8a8(torch::Tensor x, torch::Tensor wq, int64_t N, torch::Tensor wsum, torch::Tensor wscale,
                          c10::optional<torch::Tensor> wzero, c10::optional<torch::Tensor> bias,
                          int64_t hybrid_min_rows) {
  const int64_t M = x.size(0), nblocks = wq.size(0), K4 = wq.size(1);
  TORCH_CHECK(wq.scalar_type() == at::kChar && (x.size(1) + 3) / 4 == K4 && nblocks * BLOCK_N >= N, "packed");
  if (bias.has_value()) TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() >= N, "bias: fp32 [N]");
  auto y = torch::empty({M, N}, x.options());
  if (M == 0) return y;
  auto q = quantize_per_token(x, 4 * K4);
  A8Args a{q[0].data_ptr<uint8_t>(), q[1].data_ptr<float>(), q[2].data_ptr<int32_t>(), wsum.data_ptr<int32_t>(),
           wscale.data_ptr<float>(), wzero.has_value() ? wzero->data_ptr<float>() : nullptr,
           bias.has_value() ? bias->data_ptr<float>() : nullptr, y.data_ptr<bf16>(), M, 4 * K4, N};
  const bool hybrid = M >= hybrid_min_rows;
  torch::Tensor xh_t;
  const bf16* xh = nullptr;
  if (hybrid) {
    xh_t = torch::empty({M, 4 * K4}, x.options());  // [M, Kp] the codes as bf16
    xh = xh_t.data_ptr<bf16>();
    at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
      codes_to_bf16(a.xq + m0 * a.Kp, (m1 - m0) * a.Kp, const_cast<bf16*>(xh) + m0 * a.Kp);
    });
  }
  const int8_t* wp = wq.data_ptr<int8_t>();
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    thread_local std::vector<bf16> scratch;  // [2 * K4][16][2]: the hybrid part of the current block
    if (hybrid && (int64_t)scratch.size() < K4 * 64) scratch.resize(K4 * 64);
    const bf16* wh = hybrid ? scratch.data() : nullptr;
    for (int64_t b = b0; b < b1; ++b) {
      const int8_t* wb = wp + b * K4 * 256;
      const int64_t n0 = b * BLOCK_N;
      if (hybrid) hybrid_block_scratch(wb, K4, scratch.data());
      int64_t m = 0;  // row tiles over one block: the first streams it, the rest find it in L2
      for (; m + MR_MAX <= M; m += MR_MAX) tile_w8a8<MR_MAX>(a, xh, m, wb, wh, n0);
      switch (M - m) {
        case 5: tile_w8a8<5>(a, xh, m, wb, wh, n0); break;
        case 4: tile_w8a8<4>(a, xh, m, wb, wh, n0); break;
        case 3: tile_w8a8<3>(a, xh, m, wb, wh, n0); break;
        case 2: tile_w8a8<2>(a, xh, m, wb, wh, n0); break;
        case 1: tile_w8a8<1>(a, xh, m, wb, wh, n0); break;
        default: break;
      }
    }
  });
  return y;
}

static const QuantLinearKernelTable kTable = {&linear_a16, &linear_w8a8};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear_a16", &linear_a16, "y = x @ W^T (+ bias), W int8/int4 codes packed by quant_kernels.pack_w*a16");
  m.def("linear_w8a8", &linear_w8a8, "y = quant(x) @ W^T (+ bias) by VNNI, W packed by quant_kernels.pack_w8a8");
  m.def("quantize_per_token", &quantize_per_token, "x bf16 -> (codes + 128 uint8, scales, code sums)");
  m.def("parallel_threads_used", &parallel_threads_used, "threads at::parallel_for used for n items");
  m.attr("kernel_table") = kernel_table_capsule(&kTable, NANOSERVE_QUANT_TABLE);  // for fused_decode
}
