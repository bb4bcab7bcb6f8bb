// Native CPU kernels for the decode step's small, non-matmul work (see nanoserve/model/native_kernels.py).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernel_table.h"
#include "vec_math.h"
#include "threads_probe.h"

static inline float to_f(float x) { return x; }
static inline float to_f(c10::BFloat16 x) {  // exact: bf16 is the high half of an fp32
  uint32_t bits = uint32_t(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
static inline float to_f(c10::Half x) { return float(x); }
template <typename T> static inline T rnd(float x) { return T(x); }  // one rounding to T, like torch
template <> inline c10::BFloat16 rnd<c10::BFloat16>(float x) {  // round to nearest even, branch-free
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return c10::BFloat16(uint16_t(bits >> 16), c10::BFloat16::from_bits());
}
// s[0:n] -> exp(s - max(s)) in place; returns 1 / their sum. -ffast-math and libmvec vectorize both loops
// (a hand-written AVX-512 exp measured no faster).
static inline float softmax_numerators(float* s, int64_t n) {
  float m = s[0];
  for (int64_t t = 1; t < n; ++t) m = s[t] > m ? s[t] : m;
  float sum = 0.f;
  for (int64_t t = 0; t < n; ++t) { s[t] = std::exp(s[t] - m); sum += s[t]; }
  return 1.f / sum;
}

// 8-bit cache codes; a template, so that only an exact int8/fp8 argument picks it (no conversions).
template <typename X, std::enable_if_t<std::is_same_v<X, int8_t> || std::is_same_v<X, c10::Float8_e4m3fn>,
                                       int> = 0>
static inline float to_f(X x) { return float(x); }

// Ask for the cache lines of n elements at p: a sequence's KV blocks lie anywhere in the pool, and the
// hardware prefetcher, which follows address streams, loses the stream at every block boundary (decode
// attention over 255 sequences of 104 tokens ran 30-40% slower with each sequence's blocks reversed or
// scattered than with them in order, as a pool that has served a while hands them out).
template <typename KT>
static inline void prefetch_rows(const KT* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < n * int64_t(sizeof(KT)); off += 64) __builtin_prefetch(c + off, 0, 3);
}

// DD > 0: head_dim known at compile time (64, 128), so the inner loops vectorize fully. KT: the caches'
// element type, T (q's) or 8-bit codes; with codes, ks/vs [KVH, NB, BS] hold each row's scale, applied
// to the row's scores (K) and softmax weights (V) instead of to its D elements.
template <typename T, int DD, typename KT = T>
static void run(const T* q, const KT* kc, const KT* vc, const int64_t* tables, const int64_t* ctx_lens,
                T* out, int64_t B, int64_t H, int64_t KVH, int64_t D_, int64_t NB, int64_t BS,
                int64_t max_blocks, float scale, const float* ks = nullptr, const float* vs = nullptr) {
  const int64_t D = DD > 0 ? DD : D_;
  const int64_t G = H / KVH;
  at::parallel_for(0, B * KVH, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> qf(G * D), acc(G * D), kv(D), s, inv_sum(G);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / KVH, kh = i % KVH, ctx = ctx_lens[b];
      const int64_t* table = tables + b * max_blocks;
      prefetch_rows(kc + (kh * NB + table[0]) * BS * D, std::min(ctx, BS) * D);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d) qf[g * D + d] = to_f(q[(b * H + kh * G + g) * D + d]) * scale;
      s.assign(G * ctx, 0.f);
      // scores: each key row is read once and dotted with the G query heads of this kv head
      for (int64_t t = 0; t < ctx; ++t) {
        if (t % BS == 0 && t + BS < ctx) prefetch_rows(kc + (kh * NB + table[t / BS + 1]) * BS * D, BS * D);
        const int64_t r = (kh * NB + table[t / BS]) * BS + t % BS;
        const KT* kp = kc + r * D;
        const float sk = ks ? ks[r] : 1.f;
        float* kvp = kv.data();
        for (int64_t d = 0; d < D; ++d) kvp[d] = to_f(kp[d]);
        for (int64_t g = 0; g < G; ++g) {
          float dot = 0.f;
          const float* qg = qf.data() + g * D;
          for (int64_t d = 0; d < D; ++d) dot += qg[d] * kvp[d];
          s[g * ctx + t] = dot * sk;
        }
      }
      for (int64_t g = 0; g < G; ++g) inv_sum[g] = softmax_numerators(s.data() + g * ctx, ctx);
      if (vs)
        for (int64_t t = 0; t < ctx; ++t) {
          const float sv = vs[(kh * NB + table[t / BS]) * BS + t % BS];
          for (int64_t g = 0; g < G; ++g) s[g * ctx + t] *= sv;
        }
      std::fill(acc.begin(), acc.end(), 0.f);
      prefetch_rows(vc + (kh * NB + table[0]) * BS * D, std::min(ctx, BS) * D);
      for (int64_t t = 0; t < ctx; ++t) {
        if (t % BS == 0 && t + BS < ctx) prefetch_rows(vc + (kh * NB + table[t / BS + 1]) * BS * D, BS * D);
        const KT* vp = vc + ((kh * NB + table[t / BS]) * BS + t % BS) * D;
        float* kvp = kv.data();
        for (int64_t d = 0; d < D; ++d) kvp[d] = to_f(vp[d]);
        for (int64_t g = 0; g < G; ++g) {
          const float p = s[g * ctx + t];
          float* ag = acc.data() + g * D;
          for (int64_t d = 0; d < D; ++d) ag[d] += p * kvp[d];
        }
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d)
          out[(b * H + kh * G + g) * D + d] = T(acc[g * D + d] * inv_sum[g]);
    }
  });
}


#ifdef __AVX512F__
#include <immintrin.h>
// v[0..15] -> one vector whose lane j is the sum of v[j]'s 16 lanes (a transpose-and-add tree: 15 adds
// and 30 shuffles for 16 dot products instead of 16 separate horizontal sums).
static inline __m512 hsum16(const __m512* v) {
  __m512 x[8], y[4], u[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit quad: (a0+a2, b0+b2, a1+a3, b1+b3)
    x[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per quad: (A, B, C, D), each the sum of that quad of v[4i..4i+3]
    __m512d a = _mm512_castps_pd(x[2 * i]), b = _mm512_castps_pd(x[2 * i + 1]);
    y[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  for (int i = 0; i < 2; ++i)  // quads (q0+q1, q2+q3) of y[2i], then of y[2i+1]
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
}

static inline __m512 load16_ps(const c10::BFloat16* p) { return bf16_to_ps(p); }
static inline __m512 load16_ps(const int8_t* p) {  // 16 int8 codes -> 16 fp32, exact
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// The bf16 decode attention with head_dim DD (a multiple of 16) and GG query heads per kv head, in AVX-512
// registers: keys in chunks of 16 (converted once to fp32, dotted with each query head, the 16 sums
// reduced together by hsum16), then the value rows once per 16-lane slice of D with the GG
// accumulators in registers. Same math as `run` (fp32 throughout), another summation order. KT int8:
// the caches hold codes, ks/vs their per-row scales (as in `run`: applied to scores and weights).
template <int DD, int GG, typename KT = c10::BFloat16>
static void run_bf16_avx512(const c10::BFloat16* q, const KT* kc, const KT* vc,
                            const int64_t* tables, const int64_t* ctx_lens, c10::BFloat16* out, int64_t B,
                            int64_t H, int64_t KVH, int64_t NB, int64_t BS, int64_t max_blocks, float scale,
                            const float* ks = nullptr, const float* vs = nullptr) {
  constexpr int NV = DD / 16;
  at::parallel_for(0, B * KVH, 1, [&](int64_t i0, int64_t i1) {
    alignas(64) float qf[GG * DD];
    alignas(64) float kf[16 * DD];  // one chunk of keys in fp32: [16, DD]
    std::vector<float> s;           // scores [GG, ctx_pad]
    std::vector<int64_t> row;       // [ctx] element offset of key/value t in the caches
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / KVH, kh = i % KVH, ctx = ctx_lens[b], ctx_pad = (ctx + 15) & ~int64_t(15);
      const int64_t* table = tables + b * max_blocks;
      row.resize(ctx);  // walked with counters: a division per key per use cost more than the math
      for (int64_t t = 0, blk = 0, off = 0; t < ctx; ++t) {
        row[t] = ((kh * NB + table[blk]) * BS + off) * DD;
        if (++off == BS) off = 0, ++blk;
      }
      for (int64_t t = 0; t < std::min<int64_t>(16, ctx); ++t) prefetch_rows(kc + row[t], DD);
      for (int g = 0; g < GG; ++g)
        for (int d = 0; d < DD; ++d) qf[g * DD + d] = to_f(q[(b * H + kh * GG + g) * DD + d]) * scale;
      s.resize(GG * ctx_pad);
      for (int64_t t0 = 0; t0 < ctx; t0 += 16) {
        const int n = int(std::min<int64_t>(16, ctx - t0));
        for (int64_t t = t0 + 16; t < std::min<int64_t>(t0 + 32, ctx); ++t) prefetch_rows(kc + row[t], DD);
        for (int j = 0; j < n; ++j) {
          const int64_t t = t0 + j;
          const KT* kp = kc + row[t];
          for (int c = 0; c < NV; ++c) _mm512_store_ps(kf + j * DD + 16 * c, load16_ps(kp + 16 * c));
        }
        for (int g = 0; g < GG; ++g) {
          __m512 qv[NV], part[16];
          for (int c = 0; c < NV; ++c) qv[c] = _mm512_load_ps(qf + g * DD + 16 * c);
          for (int j = 0; j < 16; ++j) {
            if (j >= n) { part[j] = _mm512_setzero_ps(); continue; }
            __m512 a = _mm512_mul_ps(qv[0], _mm512_load_ps(kf + j * DD));
            for (int c = 1; c < NV; ++c) a = _mm512_fmadd_ps(qv[c], _mm512_load_ps(kf + j * DD + 16 * c), a);
            part[j] = a;
          }
          _mm512_storeu_ps(s.data() + g * ctx_pad + t0, hsum16(part));  // lanes past ctx are scratch
        }
      }
      if (ks)
        for (int64_t t = 0; t < ctx; ++t)
          for (int g = 0; g < GG; ++g) s[g * ctx_pad + t] *= ks[row[t] / DD];
      for (int64_t t = 0; t < std::min<int64_t>(16, ctx); ++t) prefetch_rows(vc + row[t], DD);
      float inv_sum[GG];
      for (int g = 0; g < GG; ++g) inv_sum[g] = softmax_numerators(s.data() + g * ctx_pad, ctx);
      if (vs)
        for (int64_t t = 0; t < ctx; ++t)
          for (int g = 0; g < GG; ++g) s[g * ctx_pad + t] *= vs[row[t] / DD];
      for (int c = 0; c < NV; ++c) {
        __m512 acc[GG];
        for (int g = 0; g < GG; ++g) acc[g] = _mm512_setzero_ps();
        for (int64_t t = 0; t < ctx; ++t) {
          if (c == 0 && t + 16 < ctx) prefetch_rows(vc + row[t + 16], DD);
          const __m512 v = load16_ps(vc + row[t] + 16 * c);
          for (int g = 0; g < GG; ++g)
            acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(s[g * ctx_pad + t]), v, acc[g]);
        }
        for (int g = 0; g < GG; ++g) {
          const __m512 o = _mm512_mul_ps(acc[g], _mm512_set1_ps(inv_sum[g]));
          alignas(64) float tmp[16];
          _mm512_store_ps(tmp, o);
          c10::BFloat16* dst = out + (b * H + kh * GG + g) * DD + 16 * c;
          for (int l = 0; l < 16; ++l) dst[l] = rnd<c10::BFloat16>(tmp[l]);
        }
      }
    }
  });
}

template <int DD, typename KT = c10::BFloat16>
static bool try_bf16_avx512(int64_t G, const c10::BFloat16* q, const KT* kc,
                            const KT* vc, const int64_t* tables, const int64_t* ctx_lens,
                            c10::BFloat16* out, int64_t B, int64_t H, int64_t KVH, int64_t NB, int64_t BS,
                            int64_t max_blocks, float scale, const float* ks = nullptr,
                            const float* vs = nullptr) {
  switch (G) {
#define NS_CASE(GG) \
    case GG:        \
      run_bf16_avx512<DD, GG, KT>(q, kc, vc, tables, ctx_lens, out, B, H, KVH, NB, BS, max_blocks, scale, \
                                  ks, vs);                                                             \
      return true;
    NS_CASE(1) NS_CASE(2) NS_CASE(3) NS_CASE(4) NS_CASE(5) NS_CASE(6) NS_CASE(7) NS_CASE(8)
#undef NS_CASE
    default: return false;
  }
}
#endif


// x [T, N] (in/out: x += r when r is given, rounded to T as torch's add); out = w * T(norm(x)).
torch::Tensor add_rms_norm(torch::Tensor x, c10::optional<torch::Tensor> residual, torch::Tensor w,
                           double eps) {
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "add_rms_norm: contiguous inputs");
  auto out = torch::empty_like(x);
  const int64_t N = x.size(-1), rows = x.numel() / N;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_rms_norm", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* rp = residual.has_value() ? residual->contiguous().data_ptr<scalar_t>() : nullptr;
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<float> h(N);
      for (int64_t r = r0; r < r1; ++r) {
        scalar_t* xr = xp + r * N;
        if (rp) {
          for (int64_t j = 0; j < N; ++j) xr[j] = rnd<scalar_t>(to_f(xr[j]) + to_f(rp[r * N + j]));
        }
        float ss = 0.f;
        for (int64_t j = 0; j < N; ++j) { h[j] = to_f(xr[j]); ss += h[j] * h[j]; }
        const float inv = 1.f / std::sqrt(ss / N + (float)eps);
        for (int64_t j = 0; j < N; ++j)
          op[r * N + j] = rnd<scalar_t>(to_f(wp[j]) * to_f(rnd<scalar_t>(h[j] * inv)));
      }
    });
  });
  return out;
}

// gu [T, 2I] = [gate | up] -> T(silu(gate)) * up  [T, I]
torch::Tensor silu_mul(torch::Tensor gu) {
  TORCH_CHECK(gu.is_contiguous(), "silu_mul: contiguous input");
  const int64_t I = gu.size(-1) / 2, rows = gu.numel() / (2 * I);
  auto out = torch::empty({rows, I}, gu.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gu.scalar_type(), "silu_mul", [&] {
    const scalar_t* gp = gu.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
      std::vector<float> a(I);
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* g = gp + r * 2 * I;
        const scalar_t* u = g + I;
        scalar_t* o = op + r * I;
        for (int64_t j = 0; j < I; ++j) a[j] = to_f(g[j]);
        for (int64_t j = 0; j < I; ++j) a[j] = a[j] / (1.f + std::exp(-a[j]));  // vectorized exp
        for (int64_t j = 0; j < I; ++j) o[j] = rnd<scalar_t>(to_f(rnd<scalar_t>(a[j])) * to_f(u[j]));
      }
    });
  });
  return out;
}

// qkv [T, (H + 2 KVH) D]; cos, sin_signed [T, D] (in T's dtype; sin_signed = [-sin_lo, sin_hi]).
// Returns rotated q [T, H, D]; writes rotated k and v to the caches [KVH, NB, BS, D] at slots [T].
torch::Tensor rope_cache(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor slots,
                         torch::Tensor k_cache, torch::Tensor v_cache, int64_t H, int64_t KVH) {
  TORCH_CHECK(qkv.is_contiguous() && cos.is_contiguous() && sin.is_contiguous(), "rope_cache: contiguous");
  const int64_t T = qkv.size(0), D = k_cache.size(3), half = D / 2;
  const int64_t slots_per_head = k_cache.size(1) * k_cache.size(2), W = (H + 2 * KVH) * D;
  auto q = torch::empty({T, H, D}, qkv.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "rope_cache", [&] {
    const scalar_t* xp = qkv.data_ptr<scalar_t>();
    const scalar_t* cp = cos.data_ptr<scalar_t>();
    const scalar_t* sp = sin.data_ptr<scalar_t>();
    const int64_t* slot = slots.data_ptr<int64_t>();
    scalar_t* qp = q.data_ptr<scalar_t>();
    scalar_t* kc = k_cache.data_ptr<scalar_t>();
    scalar_t* vc = v_cache.data_ptr<scalar_t>();
    at::parallel_for(0, T * (H + KVH), 8, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t t = i / (H + KVH), n = i % (H + KVH);
        const scalar_t* x = xp + t * W + n * D;
        scalar_t* y = n < H ? qp + (t * H + n) * D : kc + ((n - H) * slots_per_head + slot[t]) * D;
        for (int64_t d = 0; d < D; ++d) {
          const float rot = to_f(x[d < half ? d + half : d - half]);  // [x_hi, x_lo]
          const float a = to_f(rnd<scalar_t>(to_f(x[d]) * to_f(cp[t * D + d])));
          const float b = to_f(rnd<scalar_t>(rot * to_f(sp[t * D + d])));
          y[d] = rnd<scalar_t>(a + b);
        }
        if (n >= H) {  // this kv head's v row goes to the cache too
          const scalar_t* v = xp + t * W + (H + KVH + n - H) * D;
          std::memcpy(vc + ((n - H) * slots_per_head + slot[t]) * D, v, D * sizeof(scalar_t));
        }
      }
    });
  });
  return q;
}

// 8-bit code of one value already multiplied by its row's inverse scale (clamped to +-max_code first).
static inline void put_code(int8_t* dst, float y) { *dst = int8_t(std::nearbyint(y)); }  // half to even
static inline void put_code(c10::Float8_e4m3fn* dst, float y) { *dst = c10::Float8_e4m3fn(y); }

// row [D] (fp32 values of the model-dtype row) -> codes and the row's scale, as kv_cache.quantize_rows:
// scale = amax * (1 / max_code), code = clamp(x * (max_code / amax)); an all-zero row gets amax = max_code.
template <typename C>
static inline void quantize_row(const float* row, int64_t D, float max_code, C* codes, float* scale) {
  float amax = 0.f;
  for (int64_t d = 0; d < D; ++d) amax = std::max(amax, std::fabs(row[d]));
  if (!(amax > 0.f)) amax = max_code;
  *scale = amax * (1.f / max_code);
  const float inv = max_code / amax;
  for (int64_t d = 0; d < D; ++d) put_code(codes + d, std::min(std::max(row[d] * inv, -max_code), max_code));
}

// rope_cache with quantized caches: codes [KVH, NB, BS, D] (int8 or float8_e4m3fn), scales [KVH, NB, BS]
// float32. k is rotated and rounded to the model's dtype exactly as rope_cache writes it, then quantized
// per (token, kv head) as kv_cache.quantize_rows does; v likewise from its model-dtype values.
torch::Tensor rope_cache_quant(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor slots,
                               torch::Tensor k_codes, torch::Tensor k_scales, torch::Tensor v_codes,
                               torch::Tensor v_scales, int64_t H, int64_t KVH) {
  TORCH_CHECK(qkv.is_contiguous() && cos.is_contiguous() && sin.is_contiguous(), "rope_cache_quant: contiguous");
  TORCH_CHECK(k_codes.scalar_type() == v_codes.scalar_type(), "rope_cache_quant: one code dtype");
  const int64_t T = qkv.size(0), D = k_codes.size(3), half = D / 2;
  const int64_t slots_per_head = k_codes.size(1) * k_codes.size(2), W = (H + 2 * KVH) * D;
  auto q = torch::empty({T, H, D}, qkv.options());
  const bool is_int8 = k_codes.scalar_type() == at::kChar;
  TORCH_CHECK(is_int8 || k_codes.scalar_type() == at::kFloat8_e4m3fn, "rope_cache_quant: int8 or fp8 codes");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "rope_cache_quant", [&] {
    const scalar_t* xp = qkv.data_ptr<scalar_t>();
    const scalar_t* cp = cos.data_ptr<scalar_t>();
    const scalar_t* sp = sin.data_ptr<scalar_t>();
    const int64_t* slot = slots.data_ptr<int64_t>();
    scalar_t* qp = q.data_ptr<scalar_t>();
    float* ksc = k_scales.data_ptr<float>();
    float* vsc = v_scales.data_ptr<float>();
    auto write = [&](auto* kc, auto* vc, float max_code) {
      at::parallel_for(0, T * (H + KVH), 8, [&](int64_t i0, int64_t i1) {
        std::vector<float> y(D);
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t t = i / (H + KVH), n = i % (H + KVH);
          const scalar_t* x = xp + t * W + n * D;
          for (int64_t d = 0; d < D; ++d) {
            const float rot = to_f(x[d < half ? d + half : d - half]);  // [x_hi, x_lo]
            const float a = to_f(rnd<scalar_t>(to_f(x[d]) * to_f(cp[t * D + d])));
            const float b = to_f(rnd<scalar_t>(rot * to_f(sp[t * D + d])));
            y[d] = to_f(rnd<scalar_t>(a + b));
          }
          if (n < H) {
            scalar_t* qr = qp + (t * H + n) * D;
            for (int64_t d = 0; d < D; ++d) qr[d] = rnd<scalar_t>(y[d]);  // exact: y is a scalar_t value
            continue;
          }
          const int64_t r = (n - H) * slots_per_head + slot[t];
          quantize_row(y.data(), D, max_code, kc + r * D, ksc + r);
          const scalar_t* v = xp + t * W + (H + KVH + n - H) * D;
          for (int64_t d = 0; d < D; ++d) y[d] = to_f(v[d]);
          quantize_row(y.data(), D, max_code, vc + r * D, vsc + r);
        }
      });
    };
    if (is_int8)
      write(k_codes.data_ptr<int8_t>(), v_codes.data_ptr<int8_t>(), 127.f);
    else
      write(k_codes.data_ptr<c10::Float8_e4m3fn>(), v_codes.data_ptr<c10::Float8_e4m3fn>(), 448.f);
  });
  return q;
}

// x [B, V] -> [B] int64: the first index of each row's maximum (torch.argmax's answer), rows in parallel.
torch::Tensor argmax_rows(torch::Tensor x) {
  x = x.contiguous();
  const int64_t B = x.size(0), V = x.size(1);
  auto out = torch::empty({B}, x.options().dtype(torch::kInt64));
  int64_t* op = out.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "argmax_rows", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* row = xp + b * V;
        float m = to_f(row[0]);
        for (int64_t j = 1; j < V; ++j) m = std::max(m, to_f(row[j]));  // vectorizes
        int64_t idx = 0;
        while (idx < V - 1 && to_f(row[idx]) != m) ++idx;
        op[b] = idx;
      }
    });
  });
  return out;
}

// q [B, H, D]; caches [KVH, NB, BS, D]; tables [B, max_blocks] int64; ctx_lens [B] int64 -> out [B, H, D]
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                               torch::Tensor tables, torch::Tensor ctx_lens, double scale) {
  q = q.contiguous();
  auto out = torch::empty_like(q);
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KVH = k_cache.size(0), NB = k_cache.size(1), BS = k_cache.size(2);
#ifdef __AVX512F__
  if (q.scalar_type() == at::kBFloat16 && (D == 64 || D == 128)) {
    using bf = c10::BFloat16;
    auto f = D == 64 ? try_bf16_avx512<64> : try_bf16_avx512<128>;
    if (f(H / KVH, q.data_ptr<bf>(), k_cache.data_ptr<bf>(), v_cache.data_ptr<bf>(),
          tables.data_ptr<int64_t>(), ctx_lens.data_ptr<int64_t>(), out.data_ptr<bf>(), B, H, KVH, NB, BS,
          tables.size(1), (float)scale, nullptr, nullptr))
      return out;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention", [&] {
    auto f = D == 64 ? run<scalar_t, 64> : D == 128 ? run<scalar_t, 128> : run<scalar_t, 0>;
    f(q.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(),
      tables.data_ptr<int64_t>(), ctx_lens.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
      B, H, KVH, D, NB, BS, tables.size(1), (float)scale, nullptr, nullptr);
  });
  return out;
}

// decode_attention over quantized caches: codes [KVH, NB, BS, D] (int8 or float8_e4m3fn) with scales
// [KVH, NB, BS] float32; each K/V row is dequantized as it streams past (its scale folded into that row's
// score and softmax weight). bf16 q with int8 codes, head_dim 64 or 128, G <= 8: the AVX-512 kernel.
torch::Tensor decode_attention_quant(torch::Tensor q, torch::Tensor k_codes, torch::Tensor k_scales,
                                     torch::Tensor v_codes, torch::Tensor v_scales, torch::Tensor tables,
                                     torch::Tensor ctx_lens, double scale) {
  q = q.contiguous();
  auto out = torch::empty_like(q);
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KVH = k_codes.size(0), NB = k_codes.size(1), BS = k_codes.size(2);
  const float* ks = k_scales.data_ptr<float>();
  const float* vs = v_scales.data_ptr<float>();
  const bool is_int8 = k_codes.scalar_type() == at::kChar;
  TORCH_CHECK(is_int8 || k_codes.scalar_type() == at::kFloat8_e4m3fn, "decode_attention_quant: int8 or fp8");
#ifdef __AVX512F__
  if (is_int8 && q.scalar_type() == at::kBFloat16 && (D == 64 || D == 128)) {
    using bf = c10::BFloat16;
    auto f = D == 64 ? try_bf16_avx512<64, int8_t> : try_bf16_avx512<128, int8_t>;
    if (f(H / KVH, q.data_ptr<bf>(), k_codes.data_ptr<int8_t>(), v_codes.data_ptr<int8_t>(),
          tables.data_ptr<int64_t>(), ctx_lens.data_ptr<int64_t>(), out.data_ptr<bf>(), B, H, KVH, NB, BS,
          tables.size(1), (float)scale, ks, vs))
      return out;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention_quant", [&] {
    auto go = [&](auto* kc, auto* vc) {
      using KT = std::remove_const_t<std::remove_pointer_t<decltype(kc)>>;
      auto f = D == 64 ? run<scalar_t, 64, KT> : D == 128 ? run<scalar_t, 128, KT> : run<scalar_t, 0, KT>;
      f(q.data_ptr<scalar_t>(), kc, vc, tables.data_ptr<int64_t>(), ctx_lens.data_ptr<int64_t>(),
        out.data_ptr<scalar_t>(), B, H, KVH, D, NB, BS, tables.size(1), (float)scale, ks, vs);
    };
    if (is_int8)
      go(k_codes.data_ptr<int8_t>(), v_codes.data_ptr<int8_t>());
    else
      go(k_codes.data_ptr<c10::Float8_e4m3fn>(), v_codes.data_ptr<c10::Float8_e4m3fn>());
  });
  return out;
}

torch::Tensor causal_softmax_(torch::Tensor scores, int64_t m);  // csrc/prefill_softmax.cpp

static const NativeKernelTable kTable = {&add_rms_norm, &silu_mul, &rope_cache, &decode_attention};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "paged decode attention, one query per sequence");
  m.def("add_rms_norm", &add_rms_norm, "x += residual (optional) in place; returns w * rms_norm(x)");
  m.def("silu_mul", &silu_mul, "[T, 2I] = [gate | up] -> silu(gate) * up [T, I]");
  m.def("rope_cache", &rope_cache, "rotate q and k, write k and v to the caches; returns q");
  m.def("decode_attention_quant", &decode_attention_quant, "decode_attention over int8/fp8 caches + scales");
  m.def("rope_cache_quant", &rope_cache_quant, "rope_cache writing int8/fp8 codes + per-row scales");
  m.def("causal_softmax_", &causal_softmax_, "a prefill row group's causal softmax, in place");
  m.def("argmax_rows", &argmax_rows, "first index of each row's maximum");
  m.def("parallel_threads_used", &parallel_threads_used, "threads at::parallel_for used for n items");
  m.attr("kernel_table") = kernel_table_capsule(&kTable, NANOSERVE_NATIVE_TABLE);  // for fused_decode
}
