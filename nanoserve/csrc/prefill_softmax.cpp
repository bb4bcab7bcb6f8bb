// The softmax of a prefill row group's attention scores, causal mask included, in one pass over them
// (nanoserve/model/attention/torch_backend.py computes the scores and the weighted values by batched
// matmuls). torch's bf16 softmax plus the additive mask took ~40% of a 512-token step's attention time.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <vector>

#include "vec_math.h"

namespace {

// row[0:n] -> softmax of those n scores in place (fp32 math, one rounding to T); row[n:c] -> 0.
template <typename T>
void softmax_row(T* row, int64_t n, int64_t c, float* e) {
  int64_t j = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, float>) {
    auto load = [&](int64_t k, __mmask16 mask) {
      if constexpr (std::is_same_v<T, float>) return _mm512_maskz_loadu_ps(mask, row + k);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, row + k)), 16));
    };
    const int64_t n16 = n - n % 16;
    const __mmask16 tail = __mmask16((1u << (n % 16)) - 1);
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (; j < n16; j += 16) vmax = _mm512_max_ps(vmax, load(j, 0xFFFF));
    if (tail) vmax = _mm512_mask_max_ps(vmax, tail, vmax, load(n16, tail));
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 vsum = _mm512_setzero_ps();
    for (j = 0; j < n16; j += 16) {
      const __m512 x = exp16_ps(_mm512_sub_ps(load(j, 0xFFFF), m));
      _mm512_storeu_ps(e + j, x);
      vsum = _mm512_add_ps(vsum, x);
    }
    if (tail) {
      const __m512 x = _mm512_maskz_mov_ps(tail, exp16_ps(_mm512_sub_ps(load(n16, tail), m)));
      _mm512_mask_storeu_ps(e + n16, tail, x);
      vsum = _mm512_add_ps(vsum, x);
    }
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(vsum));
    for (j = 0; j < n16; j += 16) {
      const __m512 p = _mm512_mul_ps(_mm512_loadu_ps(e + j), inv);
      if constexpr (std::is_same_v<T, float>) _mm512_storeu_ps(row + j, p);
      else _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + j), ps_to_bf16(p));
    }
    for (; j < n; ++j) row[j] = T(e[j] * inv[0]);
    if (n < c) std::memset(static_cast<void*>(row + n), 0, (c - n) * sizeof(T));
    return;
  }
#endif
  float mx = -INFINITY, sum = 0.f;
  for (j = 0; j < n; ++j) mx = std::max(mx, static_cast<float>(row[j]));
  for (j = 0; j < n; ++j) sum += (e[j] = std::exp(static_cast<float>(row[j]) - mx));
  const float inv = 1.f / sum;
  for (j = 0; j < n; ++j) row[j] = T(e[j] * inv);
  if (n < c) std::memset(static_cast<void*>(row + n), 0, (c - n) * sizeof(T));
}

}  // namespace

// scores [KVH, m, G, c]: one row group of a prefill, the m queries being the last m positions of a c-token
// context (G query heads per kv head). Query i sits at position c - m + i and sees keys 0..c - m + i.
// In place: each row becomes the softmax over the keys it sees, 0 over the rest. Returns scores.
torch::Tensor causal_softmax_(torch::Tensor scores, int64_t m) {
  TORCH_CHECK(scores.dim() == 4 && scores.is_contiguous(), "causal_softmax_: contiguous [KVH, m, G, c] scores");
  TORCH_CHECK(scores.size(1) == m && m <= scores.size(3), "causal_softmax_: m queries, at most c keys");
  const int64_t G = scores.size(2), c = scores.size(3), rows = scores.numel() / c;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "causal_softmax_", [&] {
    scalar_t* base = scores.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<float> e(c + 16);
      for (int64_t r = r0; r < r1; ++r) softmax_row(base + r * c, c - m + (r / G) % m + 1, c, e.data());
    });
  });
  return scores;
}
