// Small AVX-512 helpers shared by the native kernels: bf16 <-> fp32 conversion and exp of 16 fp32 lanes.
//
// exp16_ps is what the prefill softmax (csrc/prefill_softmax.cpp) spends its time in; alone it ran at
// ~0.15 ns an element on one Zen 5 core. It is Cephes' expf in vector form: x = n ln2 + r with
// |r| <= ln2 / 2 (ln2 split in two so r is exact to ~1 ulp), exp(r) = 1 + r + r^2 P(r) with P of degree 5,
// then 2^n applied by vscalefps (0 for very negative x). Relative error under 2 ulp on the fp32 range.
#pragma once
#ifdef __AVX512F__
#include <immintrin.h>
#include <c10/util/BFloat16.h>

static inline __m512 bf16_to_ps(const c10::BFloat16* p) {  // 16 bf16 -> 16 fp32, exact
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
// 16 fp32 -> 16 bf16, round to nearest even (the bits c10's and torch's rounding give for finite values).
static inline __m256i ps_to_bf16(__m512 x) {
  __m512i b = _mm512_castps_si512(x);
  b = _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF),
                                           _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1))));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(b, 16));
}

static inline __m512 exp16_ps(__m512 x) {
  // Past these bounds exp over/underflows anyway; the clamp keeps n in vscalefps' exact range.
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}
#endif
