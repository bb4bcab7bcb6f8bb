"""What every native CPU extension is built with: OpenMP, and a probe that proves it.

ATen's `at::parallel_for` is a header template whose OpenMP backend is a `#pragma omp parallel`. An
extension compiled without `-fopenmp` drops the pragma silently and runs the whole range on the
calling thread: the kernels then used one core of two (the avx512 linear streamed the lm_head at
~20 GB/s whatever `torch.set_num_threads` said). The extension links `libgomp.so.1`, the soname torch
already loaded, so both share one OpenMP runtime and one thread pool.

`parallel_threads_used(n)` runs `at::parallel_for` over n items and returns how many distinct threads
took part, so a test can fail when the flag is lost.
"""

from __future__ import annotations

OPENMP_CFLAGS = ["-fopenmp"]
OPENMP_LDFLAGS = ["-fopenmp"]

THREADS_PROBE_CPP = r"""
#include <atomic>
int64_t parallel_threads_used(int64_t n) {
  std::atomic<uint64_t> seen{0};  // bit t set when thread t ran a chunk
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    const int t = at::get_thread_num();
    seen.fetch_or(uint64_t(1) << (t < 63 ? t : 63));
  });
  return __builtin_popcountll(seen.load());
}
"""
