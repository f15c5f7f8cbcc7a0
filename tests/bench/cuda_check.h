// CUDA_CHECK(expr) for the benchmarks: a failed CUDA runtime call prints the statement, the
// error and the place, then exits 1. Benchmarks are not services: they stop at the first error.
// MedianMs: the benchmarks' one timing rule. HashedUniform: their inputs.
#ifndef QUANTD_TESTS_BENCH_CUDA_CHECK_H_
#define QUANTD_TESTS_BENCH_CUDA_CHECK_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CUDA_CHECK(expr)                                                                           \
  do {                                                                                             \
    const cudaError_t error_ = (expr);                                                             \
    if (error_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s failed: %s (%s:%d)\n", #expr, cudaGetErrorString(error_), __FILE__, \
                   __LINE__);                                                                      \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (false)

// Warm-up before timing: fn() again and again for this long. A large FP8 GEMM on the H200 is
// power-bound: torch._scaled_mm at 8192 x 28672 x 8192 took 2.57 ms as the first of 10 timed
// calls after one warm-up call, 3.00 ms as the median of 30 (and 2.19 ms on all-zero codes), so
// two sides timed after different amounts of earlier work compare clock states, not kernels.
// Both timing rules (this and tests/bench/peers.py's median_ms) time the sustained state.
inline constexpr int kWarmUpMs = 300;
// QUANTD_BENCH_WARM_UP_MS overrides it (0: one untimed call only, as before the warm-up), to
// compare the two regimes.
inline int WarmUpMs() {
  const char* value = std::getenv("QUANTD_BENCH_WARM_UP_MS");
  return value != nullptr ? std::atoi(value) : kWarmUpMs;
}

// The median of `reps` CUDA-event timings of fn() on `stream`, after one untimed call (one-time
// setup such as a GEMM's autotune) and kWarmUpMs of untimed calls.
template <typename Fn>
float MedianMs(Fn&& fn, int reps, cudaStream_t stream) {
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  fn();
  CUDA_CHECK(cudaStreamSynchronize(stream));
  const auto warm_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(WarmUpMs());
  while (std::chrono::steady_clock::now() < warm_until) {
    fn();
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  std::vector<float> times;
  for (int r = 0; r < reps; ++r) {
    CUDA_CHECK(cudaEventRecord(start, stream));
    fn();
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

namespace quantd::bench {

// The benchmarks' inputs: murmur3's finalizer over i · 2654435761 + seed · 40503 (mod 2^32), as
// a fraction of 2^32 (tests/bench/gemm_peers.py computes the same on the host).
__device__ __forceinline__ float HashedUniform(int64_t i, uint32_t seed) {
  uint32_t v = static_cast<uint32_t>(i) * 2654435761u + seed * 40503u;
  v ^= v >> 16;
  v *= 0x85EBCA6Bu;
  v ^= v >> 13;
  v *= 0xC2B2AE35u;
  v ^= v >> 16;
  return __fmul_rn(__uint2float_rn(v), 0x1p-32f);
}

}  // namespace quantd::bench

#endif  // QUANTD_TESTS_BENCH_CUDA_CHECK_H_
