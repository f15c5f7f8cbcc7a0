// MSE clip search on the GPU, bit for bit the CPU backend's (reference/calibrate.cc): for each
// scale group and each clip ratio of the grid, Σ (x - x̂)² over the group's finite elements,
// summed in fp64 in the group's flat element order, then the ratio with the smallest sum
// (strictly smaller: ties keep the larger ratio).
//
// The CPU sums each group sequentially, and an fp64 sum depends on its order, so one GPU thread
// sums one (group, ratio) pair in that same order: the sums, hence the choices, are identical.
// The parallelism is groups × ratios; the backend keeps the search on the CPU when that is too
// small for the GPU to win (CudaBackendOptions::mse_search_min_pairs).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "device_common.cuh"
#include "kernels.h"
#include "quantd/codec.h"

namespace quantd::cuda {
namespace {

// Adds (x - x̂)² for the finite elements [first, first + count) of the input, in order.
__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ void AddRunError(const ElementParams& p, int64_t first, int64_t count,
                                            float s, int32_t zp, double* error) {
  for (int64_t i = first; i < first + count; ++i) {
    const float v = LoadAsFloat(p.input_dtype, p.input, i);
    if (!IsFinite(v)) continue;
    const uint32_t code = QuantizeElement(p.codec, v, s, zp, 0u);
    const double d =
        static_cast<double>(v) - static_cast<double>(DequantizeElement(p.codec, code, s, zp));
    *error += d * d;
  }
}

// Σ (x - x̂)² over group g's elements in flat (row-major) order: the order in which
// reference::GroupFiniteValues lists them.
__device__ double GroupError(const ElementParams& p, int64_t g, float s, int32_t zp) {
  const ScaleGeometry& geo = p.geometry;
  double error = 0.0;
  switch (geo.granularity) {
    case Granularity::kToken:
      AddRunError(p, g * geo.cols, geo.cols, s, zp, &error);
      break;
    case Granularity::kGroup:
    case Granularity::kBlock: {
      const int64_t band = g / geo.groups_per_row;
      const int64_t c0 = (g % geo.groups_per_row) * geo.group_cols;
      const int64_t width = Min64(geo.group_cols, geo.cols - c0);
      const int64_t r0 = geo.granularity == Granularity::kBlock ? band * geo.group_rows : band;
      const int64_t r1 =
          geo.granularity == Granularity::kBlock ? Min64(geo.rows, r0 + geo.group_rows) : r0 + 1;
      for (int64_t row = r0; row < r1; ++row)
        AddRunError(p, row * geo.cols + c0, width, s, zp, &error);
      break;
    }
    case Granularity::kChannel:
      if (geo.channel_is_last) {
        for (int64_t row = 0; row < geo.rows; ++row)
          AddRunError(p, row * geo.cols + g, 1, s, zp, &error);
      } else {
        // Runs of rows_per_channel rows, one run in every `channels`.
        for (int64_t run = g; run * geo.rows_per_channel < geo.rows; run += geo.channels) {
          const int64_t r0 = run * geo.rows_per_channel;
          const int64_t r1 = Min64(geo.rows, r0 + geo.rows_per_channel);
          AddRunError(p, r0 * geo.cols, (r1 - r0) * geo.cols, s, zp, &error);
        }
      }
      break;
    default:  // kTensor
      AddRunError(p, 0, geo.rows * geo.cols, s, zp, &error);
      break;
  }
  return error;
}

// Thread (g, i) = group g, ratio i: consecutive threads share a group, so a warp's loads of
// one element are one broadcast.
// Groups [first_group, first_group + groups); errors[(g - first_group) · steps + i].
__global__ void MseErrorsKernel(ElementParams p, ScaleRule rule, StatsBuffers stats,
                                const float* ratios, int steps, int64_t first_group, int64_t groups,
                                double* errors) {
  const int64_t total = groups * steps;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += stride) {
    const int64_t g = first_group + t / steps;
    float s = 1.0f;
    int32_t zp = 0;
    if (!ScaleFromRange(rule, KeyFloat(stats.min_keys[g]), KeyFloat(stats.max_keys[g]),
                        ratios[t % steps], &s, &zp)) {
      atomicMax(&stats.flags->bad_scale_group, static_cast<long long>(g));
      errors[t] = 0.0;
      continue;
    }
    if (!rule.asymmetric) zp = 0;
    errors[t] = GroupError(p, g, s, zp);
  }
}

// Per group: the first ratio with the smallest error, its scale and zero-point.
__global__ void MseChooseKernel(ScaleRule rule, StatsBuffers stats, const float* ratios, int steps,
                                int64_t first_group, int64_t groups, const double* errors,
                                float* scales, int32_t* zero_points, float* chosen_ratios) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < groups;
       k += stride) {
    const int64_t g = first_group + k;
    const double* error = errors + k * steps;
    int best = 0;
    for (int i = 1; i < steps; ++i) {
      if (error[i] < error[best]) best = i;
    }
    float s = 1.0f;
    int32_t zp = 0;
    ScaleFromRange(rule, KeyFloat(stats.min_keys[g]), KeyFloat(stats.max_keys[g]), ratios[best], &s,
                   &zp);
    scales[g] = s;
    if (zero_points != nullptr) zero_points[g] = zp;
    chosen_ratios[g] = ratios[best];
  }
}

}  // namespace

int64_t MseSearchChunkGroups(int64_t num_scales, int steps) {
  // The errors of at most 64 Mi (group, ratio) pairs at a time: 512 MiB of workspace.
  return std::max<int64_t>(1, std::min<int64_t>(num_scales, (int64_t{64} << 20) / steps));
}

cudaError_t LaunchMseSearch(const ElementParams& p, const ScaleRule& rule,
                            const StatsBuffers& stats, const float* ratios, int steps,
                            double* errors, float* scales, int32_t* zero_points,
                            float* chosen_ratios, cudaStream_t stream) {
  const int64_t n = p.geometry.num_scales;
  if (n == 0) return cudaSuccess;
  ElementParams rne = p;
  // Candidates are scored under round-to-nearest-even, as on the CPU: stochastic rounding's
  // expected error is what the choice should follow, not one draw.
  if (rne.codec.rounding == Rounding::kStochastic) rne.codec.rounding = Rounding::kNearestEven;
  const int64_t chunk = MseSearchChunkGroups(n, steps);
  for (int64_t first = 0; first < n; first += chunk) {
    const int64_t groups = std::min(chunk, n - first);
    MseErrorsKernel<<<GridFor(groups * steps, p.max_blocks), kThreads, 0, stream>>>(
        rne, rule, stats, ratios, steps, first, groups, errors);
    MseChooseKernel<<<GridFor(groups, p.max_blocks), kThreads, 0, stream>>>(
        rule, stats, ratios, steps, first, groups, errors, scales, zero_points, chosen_ratios);
  }
  return cudaGetLastError();
}

}  // namespace quantd::cuda
