// Included by every native CPU extension: proves it was built with OpenMP (see native_build.py).
// parallel_threads_used(n) runs at::parallel_for over n items and returns how many distinct threads
// took part; without -fopenmp the pragma inside at::parallel_for is dropped and the answer is 1.
#pragma once
#include <ATen/Parallel.h>
#include <atomic>
#include <cstdint>

inline int64_t parallel_threads_used(int64_t n) {
  std::atomic<uint64_t> seen{0};  // bit t set when thread t ran a chunk
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    const int t = at::get_thread_num();
    seen.fetch_or(uint64_t(1) << (t < 63 ? t : 63));
  });
  return __builtin_popcountll(seen.load());
}
