"""A native CPU kernel for decode attention straight over the paged KV cache.

In eager PyTorch a decode step's attention is ~8 small ops per layer (gather K, gather V, two
batched matmuls, mask, softmax, transposes) and each costs tens of µs on CPU whatever the batch, so
at batch 1 they cost more than the math. This kernel does it in one call per layer: for each
(sequence, kv head) it walks the sequence's block table, dots the G query heads sharing that kv head
with each key row (read once), takes the softmax and accumulates V, all in fp32. No gather copy, no
mask: each sequence stops at its own context length.

Built once with `torch.utils.cpp_extension.load_inline` (~20 s the first time, cached on disk after)
and threaded with ATen's pool. `load_decode_attention_kernel()` returns None when it cannot be built
(no compiler) or NANOSERVE_DISABLE_NATIVE_ATTENTION=1; the caller then uses the PyTorch path.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

_CPP = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <vector>

static inline float to_f(float x) { return x; }
static inline float to_f(c10::BFloat16 x) {  // exact: bf16 is the high half of an fp32
  uint32_t bits = uint32_t(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
static inline float to_f(c10::Half x) { return float(x); }

// DD > 0: head_dim known at compile time (64, 128), so the inner loops vectorize fully.
template <typename T, int DD>
static void run(const T* q, const T* kc, const T* vc, const int64_t* tables, const int64_t* ctx_lens,
                T* out, int64_t B, int64_t H, int64_t KVH, int64_t D_, int64_t NB, int64_t BS,
                int64_t max_blocks, float scale) {
  const int64_t D = DD > 0 ? DD : D_;
  const int64_t G = H / KVH;
  at::parallel_for(0, B * KVH, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> qf(G * D), acc(G * D), kv(D), s, inv_sum(G);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / KVH, kh = i % KVH, ctx = ctx_lens[b];
      const int64_t* table = tables + b * max_blocks;
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d) qf[g * D + d] = to_f(q[(b * H + kh * G + g) * D + d]) * scale;
      s.assign(G * ctx, 0.f);
      // scores: each key row is read once and dotted with the G query heads of this kv head
      for (int64_t t = 0; t < ctx; ++t) {
        const T* kp = kc + ((kh * NB + table[t / BS]) * BS + t % BS) * D;
        float* kvp = kv.data();
        for (int64_t d = 0; d < D; ++d) kvp[d] = to_f(kp[d]);
        for (int64_t g = 0; g < G; ++g) {
          float dot = 0.f;
          const float* qg = qf.data() + g * D;
          for (int64_t d = 0; d < D; ++d) dot += qg[d] * kvp[d];
          s[g * ctx + t] = dot;
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        float* sg = s.data() + g * ctx;
        float m = sg[0];
        for (int64_t t = 1; t < ctx; ++t) m = sg[t] > m ? sg[t] : m;
        float sum = 0.f;
        for (int64_t t = 0; t < ctx; ++t) { sg[t] = std::exp(sg[t] - m); sum += sg[t]; }
        inv_sum[g] = 1.f / sum;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < ctx; ++t) {
        const T* vp = vc + ((kh * NB + table[t / BS]) * BS + t % BS) * D;
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

// q [B, H, D]; caches [KVH, NB, BS, D]; tables [B, max_blocks] int64; ctx_lens [B] int64 -> out [B, H, D]
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                               torch::Tensor tables, torch::Tensor ctx_lens, double scale) {
  q = q.contiguous();
  auto out = torch::empty_like(q);
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KVH = k_cache.size(0), NB = k_cache.size(1), BS = k_cache.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention", [&] {
    auto f = D == 64 ? run<scalar_t, 64> : D == 128 ? run<scalar_t, 128> : run<scalar_t, 0>;
    f(q.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(),
      tables.data_ptr<int64_t>(), ctx_lens.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
      B, H, KVH, D, NB, BS, tables.size(1), (float)scale);
  });
  return out;
}
"""

_ext = None
_ext_error: str | None = None
_lock = threading.Lock()


def load_decode_attention_kernel():
    """Build (first call only; cached on disk) and return the extension, or None with a logged reason."""
    global _ext, _ext_error
    with _lock:
        if _ext is not None or _ext_error is not None:
            return _ext
        if os.environ.get("NANOSERVE_DISABLE_NATIVE_ATTENTION") == "1":
            _ext_error = "disabled by NANOSERVE_DISABLE_NATIVE_ATTENTION=1"
        else:
            try:
                from torch.utils.cpp_extension import load_inline

                _ext = load_inline(
                    name="nanoserve_decode_attention_v3",
                    cpp_sources=_CPP,
                    functions=["decode_attention"],
                    extra_cflags=["-O3", "-march=native", "-ffast-math"],
                    extra_ldflags=["-lmvec"],
                    verbose=False,
                )
            except Exception as e:  # no compiler, missing headers...
                _ext_error = f"native attention build failed: {type(e).__name__}: {str(e)[:300]}"
        if _ext_error:
            log.info("decode attention: native kernel unavailable (%s); using the PyTorch path", _ext_error)
        return _ext


def native_attention_unavailable_reason() -> str | None:
    return _ext_error
