// CUDA_CHECK(expr) for the benchmarks: a failed CUDA runtime call prints the statement, the
// error and the place, then exits 1. Benchmarks are not services: they stop at the first error.
#ifndef QUANTD_TESTS_BENCH_CUDA_CHECK_H_
#define QUANTD_TESTS_BENCH_CUDA_CHECK_H_

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CUDA_CHECK(expr)                                                                           \
  do {                                                                                             \
    const cudaError_t error_ = (expr);                                                             \
    if (error_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s failed: %s (%s:%d)\n", #expr, cudaGetErrorString(error_), __FILE__, \
                   __LINE__);                                                                      \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (false)

#endif  // QUANTD_TESTS_BENCH_CUDA_CHECK_H_
