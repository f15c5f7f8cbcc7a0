// The GPU-only paths of codec.h against what they replace, on the GPU itself:
// - DivideByScale's fast step against IEEE division, 2^30 random (x, s) pairs in each of three
//   distributions;
// - MinifloatEncode's hardware FP8 conversion against the portable engine, on every one of the
//   2^32 float bit patterns, for E4M3 and E5M2.
#include <cuda_runtime.h>

#include <cstdint>

#include "gtest/gtest.h"
#include "quantd/codec.h"
#include "quantd/cuda.h"
#include "quantd/format.h"

namespace quantd {
namespace {

enum Distribution : int {
  kAnyFinite = 0,  // x any finite float, s any positive normal float
  kNearTies = 1,   // s a realistic scale, x = s · (k / 2 + tiny perturbation)
  kExactTies = 2,  // x = s · (k + 0.5) computed exactly where representable
};

__global__ void CompareDivision(Distribution distribution, uint64_t seed, int64_t n,
                                unsigned long long* mismatches, unsigned long long* fast,
                                unsigned long long* first_bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    uint32_t w[4];
    StochasticBlock(seed, static_cast<uint64_t>(i), w);
    float x, s;
    if (distribution == kAnyFinite) {
      x = BitsToFloat(w[0]);
      if (!(fabsf(x) <= 3.4e38f)) x = BitsToFloat(w[0] & 0xBF7FFFFFu);   // make it finite
      s = BitsToFloat(((w[1] % 254u + 1u) << 23) | (w[2] & 0x7FFFFFu));  // positive normal
    } else {
      // Scales like amax / qmax: amax over 2^-20 .. 2^20, qmax from the traits table.
      const float qmax[4] = {127.0f, 7.0f, 448.0f, 57344.0f};
      const float amax = BitsToFloat(((w[1] % 40u + 107u) << 23) | (w[2] & 0x7FFFFFu));
      s = amax / qmax[w[3] & 3u];
      const float k = static_cast<float>(static_cast<int32_t>(w[0] % 1024u) - 512);
      if (distribution == kExactTies) {
        x = (k + 0.5f) * s;
      } else {
        const float near = k * 0.5f * s;
        x = BitsToFloat(FloatToBits(near) + (w[3] >> 28) - 8u);  // a few ulps either side
      }
    }
    const float r = ScaleReciprocal(s);
    const float a = DivideByScale(x, s, r);
    const float b = x / s;
    if (r != 0.0f && fabsf(x) >= 0x1p-90f && fabsf(x) <= 0x1p90f) atomicAdd(fast, 1ull);
    if (FloatToBits(a) != FloatToBits(b)) {
      atomicAdd(mismatches, 1ull);
      atomicMin(first_bad, static_cast<unsigned long long>(i));
    }
  }
}

TEST(DivisionTest, FastStepEqualsIeeeDivision) {
  if (!CudaBackendBuilt() || CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible";
  unsigned long long* counters = nullptr;
  ASSERT_EQ(cudaMalloc(&counters, 3 * sizeof(unsigned long long)), cudaSuccess);
  for (Distribution distribution : {kAnyFinite, kNearTies, kExactTies}) {
    const unsigned long long init[3] = {0, 0, ~0ull};
    ASSERT_EQ(cudaMemcpy(counters, init, sizeof(init), cudaMemcpyHostToDevice), cudaSuccess);
    const int64_t n = int64_t{1} << 30;
    CompareDivision<<<1024, 256>>>(distribution, 0x5eed0000u + distribution, n, counters,
                                   counters + 1, counters + 2);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    unsigned long long result[3];
    ASSERT_EQ(cudaMemcpy(result, counters, sizeof(result), cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(result[0], 0u) << "distribution " << distribution << ": first mismatch at pair "
                             << result[2];
    // The step must actually be exercised, not skipped by its range checks.
    EXPECT_GT(result[1], static_cast<unsigned long long>(n / 4)) << "distribution " << distribution;
  }
  cudaFree(counters);
}

__global__ void CompareFp8Conversion(MinifloatParams params, unsigned long long* mismatches,
                                     unsigned long long* first_bad) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x;
       i < (uint64_t{1} << 32); i += stride) {
    const uint32_t bits = static_cast<uint32_t>(i);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) continue;  // NaN is answered before either path
    const float v = BitsToFloat(bits);
    const uint32_t hardware =
        MinifloatEncode(params, v, Rounding::kNearestEven, 0u, Overflow::kSaturate);
    const uint32_t portable =
        MinifloatEncodePortable(params, v, Rounding::kNearestEven, 0u, Overflow::kSaturate);
    if (hardware != portable) {
      atomicAdd(mismatches, 1ull);
      atomicMin(first_bad, static_cast<unsigned long long>(bits));
    }
  }
}

TEST(Fp8ConversionTest, HardwareEqualsThePortableEngineOnEveryFloat) {
  if (!CudaBackendBuilt() || CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible";
  unsigned long long* counters = nullptr;
  ASSERT_EQ(cudaMalloc(&counters, 2 * sizeof(unsigned long long)), cudaSuccess);
  for (Format format : {Format::kFp8E4M3, Format::kFp8E5M2}) {
    const unsigned long long init[2] = {0, ~0ull};
    ASSERT_EQ(cudaMemcpy(counters, init, sizeof(init), cudaMemcpyHostToDevice), cudaSuccess);
    CompareFp8Conversion<<<2048, 256>>>(Traits(format).minifloat, counters, counters + 1);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    unsigned long long result[2];
    ASSERT_EQ(cudaMemcpy(result, counters, sizeof(result), cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(result[0], 0u) << FormatName(format) << ": first mismatch at float bits 0x"
                             << std::hex << result[1];
  }
  cudaFree(counters);
}

}  // namespace
}  // namespace quantd
