// Internal to the CUDA backend: device helpers its kernel files share (launch geometry, loads,
// NaN flags, group-range merges, metric accumulation and block reduction).
#ifndef QUANTD_KERNELS_CUDA_DEVICE_COMMON_CUH_
#define QUANTD_KERNELS_CUDA_DEVICE_COMMON_CUH_

#include <cfloat>
#include <cstdint>

#include "kernels.h"

namespace quantd::cuda {

inline constexpr int kThreads = 256;
inline constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ bool IsFinite(float v) { return fabsf(v) <= FLT_MAX; }

template <DType kDType>
__device__ __forceinline__ float Load(const void* data, int64_t i) {
  return LoadAsFloat(kDType, data, i);
}

__device__ __forceinline__ void OfferNan(DeviceFlags* flags, int64_t index) {
  atomicMin(&flags->first_nan, static_cast<unsigned long long>(index));
}

// Folds one element into a statistics range: -0 counts as +0, a NaN is offered for
// rejection (by its flat index) when the pass rejects NaN, infinities are skipped.
__device__ __forceinline__ void FoldStat(float x, int64_t index, bool reject_nan,
                                         DeviceFlags* flags, float* lo, float* hi) {
  const float value = x + 0.0f;
  if (value != value) {
    if (reject_nan) OfferNan(flags, index);
  } else if (IsFinite(value)) {
    *lo = fminf(*lo, value);
    *hi = fmaxf(*hi, value);
  }
}

// min / max across each aligned segment of `width` lanes (a power of two up to 32); every
// lane of a segment ends with the segment's range. All 32 lanes must call it.
__device__ __forceinline__ void WarpRange(float* lo, float* hi, int width = 32) {
  for (int offset = width / 2; offset > 0; offset >>= 1) {
    *lo = fminf(*lo, __shfl_xor_sync(0xFFFFFFFFu, *lo, offset, width));
    *hi = fmaxf(*hi, __shfl_xor_sync(0xFFFFFFFFu, *hi, offset, width));
  }
}

__device__ __forceinline__ void MergeRange(const StatsBuffers& stats, int64_t group, float lo,
                                           float hi) {
  if (lo <= hi) {
    atomicMin(&stats.min_keys[group], FloatKey(lo));
    atomicMax(&stats.max_keys[group], FloatKey(hi));
  }
}

inline int GridFor(int64_t work_items, int max_blocks) {
  const int64_t blocks = (work_items + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > max_blocks ? max_blocks : blocks));
}

struct MetricAccumulator {
  MetricPartial sums = {0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0};

  __device__ __forceinline__ void Add(float x, float x_hat) {
    if (!IsFinite(x)) {
      ++sums.nonfinite_count;
      return;
    }
    const double xd = x, yd = x_hat, d = xd - yd;
    sums.sum_x2 += xd * xd;
    sums.sum_y2 += yd * yd;
    sums.sum_xy += xd * yd;
    sums.sum_err2 += d * d;
    const double abs_d = fabs(d);
    if (abs_d != abs_d) {
      sums.nan_error = 1;
    } else if (abs_d > sums.max_abs_err) {
      sums.max_abs_err = abs_d;
    }
    ++sums.count;
  }
};

__device__ __forceinline__ void MergeInto(MetricPartial& a, const MetricPartial& b) {
  a.sum_x2 += b.sum_x2;
  a.sum_y2 += b.sum_y2;
  a.sum_xy += b.sum_xy;
  a.sum_err2 += b.sum_err2;
  a.max_abs_err = fmax(a.max_abs_err, b.max_abs_err);
  a.count += b.count;
  a.nonfinite_count += b.nonfinite_count;
  a.nan_error |= b.nan_error;
}

__device__ __forceinline__ MetricPartial WarpReduce(MetricPartial a) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    MetricPartial b;
    b.sum_x2 = __shfl_xor_sync(0xFFFFFFFFu, a.sum_x2, offset);
    b.sum_y2 = __shfl_xor_sync(0xFFFFFFFFu, a.sum_y2, offset);
    b.sum_xy = __shfl_xor_sync(0xFFFFFFFFu, a.sum_xy, offset);
    b.sum_err2 = __shfl_xor_sync(0xFFFFFFFFu, a.sum_err2, offset);
    b.max_abs_err = __shfl_xor_sync(0xFFFFFFFFu, a.max_abs_err, offset);
    b.count = __shfl_xor_sync(0xFFFFFFFFu, a.count, offset);
    b.nonfinite_count = __shfl_xor_sync(0xFFFFFFFFu, a.nonfinite_count, offset);
    b.nan_error = __shfl_xor_sync(0xFFFFFFFFu, a.nan_error, offset);
    MergeInto(a, b);
  }
  return a;
}

// Block-wide reduction; thread 0 writes the block's partial.
// kBlockThreads: the launch's block size (a multiple of 32).
template <int kBlockThreads = kThreads>
__device__ __forceinline__ void WriteBlockPartial(const MetricPartial& mine,
                                                  MetricPartial* partials) {
  constexpr int kBlockWarps = kBlockThreads / 32;
  __shared__ MetricPartial warp_sums[kBlockWarps];
  const MetricPartial warp_sum = WarpReduce(mine);
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) warp_sums[warp] = warp_sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    MetricPartial total = warp_sums[0];
    for (int w = 1; w < kBlockWarps; ++w) MergeInto(total, warp_sums[w]);
    partials[blockIdx.x] = total;
  }
}

// The range [lo, hi] of one row that a whole block holds, from each thread's partial range.
// Warps reduce with shuffles; then every thread folds the warp partials itself: min / max are
// order-independent, so all threads get the same range with no serial step and no second
// barrier. The shared slots `warp_lo` / `warp_hi` come in two sets, alternated by `parity`, so
// that one barrier per row suffices: the caller flips parity after each row.
// kBlockThreads: the launch's block size (a multiple of 32).
template <int kBlockThreads>
__device__ __forceinline__ void BlockRowRange(float (&warp_lo)[2][kBlockThreads / 32],
                                              float (&warp_hi)[2][kBlockThreads / 32], int parity,
                                              float* lo, float* hi) {
  WarpRange(lo, hi);
  float l = *lo, h = *hi;
  if ((threadIdx.x & 31) == 0) {
    warp_lo[parity][threadIdx.x >> 5] = l;
    warp_hi[parity][threadIdx.x >> 5] = h;
  }
  __syncthreads();
  l = warp_lo[parity][0];
  h = warp_hi[parity][0];
#pragma unroll
  for (int w = 1; w < kBlockThreads / 32; ++w) {
    l = fminf(l, warp_lo[parity][w]);
    h = fmaxf(h, warp_hi[parity][w]);
  }
  *lo = l;
  *hi = h;
}

}  // namespace quantd::cuda

#endif  // QUANTD_KERNELS_CUDA_DEVICE_COMMON_CUH_
