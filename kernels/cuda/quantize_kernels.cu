// The CUDA backend's kernels: group statistics, scales, and the element passes.
//
// The arithmetic of every element is codec.h's, the same functions the CPU backend calls, and
// this file is compiled without FMA contraction (--fmad=false), so codes, scales and x̂ come
// out bit for bit as on the CPU. What differs is only the order of reductions: min / max are
// order-independent (and -0 is counted as +0 on both sides), and metric sums are allowed to
// differ in their last bits.
#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "device_common.cuh"
#include "fast_path.h"
#include "kernels.h"
#include "lean_path.h"
#include "quantd/codec.h"
#include "quantd/packing.h"

namespace quantd::cuda {
namespace {

// Elements one warp reduces per statistics unit: long rows split into chunks this long, so that
// a 1-row tensor of 10^9 elements still spreads over the whole device.
constexpr int64_t kStatsChunk = 4096;
// Rows a thread walks per column in the column statistics kernel.
constexpr int64_t kColumnTileRows = 256;

// ---- Statistics. ----

__global__ void InitStatsKernel(StatsBuffers stats, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    stats.min_keys[i] = FloatKey(__int_as_float(0x7F800000));  // +inf: no element yet
    stats.max_keys[i] = FloatKey(__int_as_float(0xFF800000));  // -inf
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    stats.flags->first_nan = kNoNan;
    stats.flags->bad_scale_group = kNoBadGroup;
    stats.flags->tensor_amax_bits = 0u;
    stats.flags->first_bad_input = kNoNan;
  }
}

// One warp per (row, run of one scale, chunk of kStatsChunk columns): lanes stride over the
// chunk, the warp reduces, lane 0 merges into the group with two atomics.
template <DType kDType>
__global__ void GroupStatsKernel(ElementParams p, StatsBuffers stats, int64_t units,
                                 int64_t units_per_row, int64_t chunks_per_run, int64_t run_len) {
  const ScaleGeometry& g = p.geometry;
  const int lane = threadIdx.x & 31;
  const int64_t first_warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t u = first_warp; u < units; u += warps) {  // uniform across the warp
    const int64_t row = u / units_per_row, in_row = u % units_per_row;
    const int64_t run = in_row / chunks_per_run, chunk = in_row % chunks_per_run;
    const int64_t run_begin = run * run_len;
    const int64_t c0 = run_begin + chunk * kStatsChunk;
    const int64_t c1 = min(min(c0 + kStatsChunk, run_begin + run_len), g.cols);
    if (c0 >= c1) continue;
    const int64_t base = row * g.cols;
    float lo = __int_as_float(0x7F800000), hi = __int_as_float(0xFF800000);
    for (int64_t c = c0 + lane; c < c1; c += 32) {
      FoldStat(Load<kDType>(p.input, base + c), base + c, p.reject_nan, stats.flags, &lo, &hi);
    }
    WarpRange(&lo, &hi);
    if (lane == 0) MergeRange(stats, g.Index(row, c0), lo, hi);
  }
}

// Channel on the last axis: every column is a group. A thread owns one column and walks a tile
// of rows (coalesced across the warp), then merges once.
template <DType kDType>
__global__ void ColumnStatsKernel(ElementParams p, StatsBuffers stats) {
  const ScaleGeometry& g = p.geometry;
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= g.cols) return;
  for (int64_t tile = blockIdx.y; tile * kColumnTileRows < g.rows; tile += gridDim.y) {
    const int64_t r1 = min(g.rows, (tile + 1) * kColumnTileRows);
    float lo = __int_as_float(0x7F800000), hi = __int_as_float(0xFF800000);
    for (int64_t r = tile * kColumnTileRows; r < r1; ++r) {
      const float v = Load<kDType>(p.input, r * g.cols + c) + 0.0f;
      if (v != v) {
        if (p.reject_nan) OfferNan(stats.flags, r * g.cols + c);
      } else if (IsFinite(v)) {
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
      }
    }
    MergeRange(stats, c, lo, hi);
  }
}

__global__ void ScalesKernel(ScaleRule rule, float clip, StatsBuffers stats, int64_t n,
                             float* scales, int32_t* zero_points) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    float s = 1.0f;
    int32_t zp = 0;
    if (!ScaleFromRange(rule, KeyFloat(stats.min_keys[i]), KeyFloat(stats.max_keys[i]), clip, &s,
                        &zp)) {
      atomicMax(&stats.flags->bad_scale_group, static_cast<long long>(i));
    }
    scales[i] = s;
    if (zero_points != nullptr) zero_points[i] = zp;
  }
}

// NVFP4, first step: the tensor's amax as the largest block amax. A float >= 0 orders as its
// bits, so one atomicMax per block merges them.
__global__ void TensorAmaxKernel(StatsBuffers stats, int64_t n) {
  float amax = 0.0f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    const float lo = KeyFloat(stats.min_keys[i]), hi = KeyFloat(stats.max_keys[i]);
    if (lo <= hi) amax = fmaxf(amax, fmaxf(hi, -lo));
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, offset));
  }
  if ((threadIdx.x & 31) == 0) atomicMax(&stats.flags->tensor_amax_bits, __float_as_uint(amax));
}

// NVFP4's S_enc reaches every kernel after these one way: the flags (and the response's
// global_scale buffer), set by one of the three one-thread kernels below.
__device__ __forceinline__ void SetNvfp4GlobalScale(DeviceFlags* flags, float* global_scale,
                                                    float value) {
  *global_scale = value;
  flags->global_scale_bits = __float_as_uint(value);
}

// S_enc from the tensor's amax that TensorAmaxKernel merged into the flags.
__global__ void Nvfp4GlobalFromAmaxKernel(DeviceFlags* flags, float* global_scale) {
  SetNvfp4GlobalScale(flags, global_scale,
                      Nvfp4GlobalScale(__uint_as_float(flags->tensor_amax_bits)));
}

// NVFP4 before its fused pass: S_enc from the tensor's range, which LaunchTensorStatsVector
// left in group 0's keys (the fused pass reads none).
__global__ void Nvfp4GlobalFromTensorStatsKernel(StatsBuffers stats, float* global_scale) {
  const float lo = KeyFloat(stats.min_keys[0]), hi = KeyFloat(stats.max_keys[0]);
  const float amax = lo <= hi ? fmaxf(hi, -lo) : 0.0f;
  SetNvfp4GlobalScale(stats.flags, global_scale, Nvfp4GlobalScale(amax));
}

// NVFP4 with the caller's S_enc (QuantSpec::static_global_scale): reported as given.
__global__ void Nvfp4StaticGlobalKernel(DeviceFlags* flags, float* global_scale, float value) {
  SetNvfp4GlobalScale(flags, global_scale, value);
}

// NVFP4, last step: every block's scale value and element scale (codec.h) under S_enc.
__global__ void Nvfp4ScalesKernel(StatsBuffers stats, int64_t n, float* scales,
                                  GlobalScaleBuffers nvfp4) {
  const float global_scale = __uint_as_float(stats.flags->global_scale_bits);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    const float lo = KeyFloat(stats.min_keys[i]), hi = KeyFloat(stats.max_keys[i]);
    const float block_scale = Nvfp4BlockScale(lo <= hi ? fmaxf(hi, -lo) : 0.0f, global_scale);
    scales[i] = block_scale;
    nvfp4.element_scales[i] = Nvfp4ElementScale(block_scale, global_scale);
  }
}

// ---- Element passes. ----

// Elements per thread: whole bytes of codes in one 32-bit word: 4 bytes (8-bit codes), 8
// nibbles, or four 6-bit codes in 3 bytes (FP6 fills no whole word).
__host__ __device__ constexpr int ElementsPerUnit(int bits) { return bits == 6 ? 4 : 32 / bits; }
__host__ __device__ constexpr int UnitBytes(int bits) { return ElementsPerUnit(bits) * bits / 8; }

// One thread per unit of ElementsPerUnit consecutive elements of a row: quantizes them,
// assembles their codes into one 32-bit word and stores it (byte by byte at a row's ragged
// end). kCodes / kOutput / kMetrics choose what the pass produces.
template <DType kDType, bool kCodes, bool kOutput, bool kMetrics>
__global__ void __launch_bounds__(kThreads)
    ElementKernel(ElementParams p, const float* scales, const int32_t* zero_points, uint8_t* codes,
                  void* output, DType output_dtype, MetricPartial* partials, DeviceFlags* flags,
                  int64_t units_per_row) {
  const ScaleGeometry& g = p.geometry;
  const int bits = p.codec.bits;
  const int per_unit = ElementsPerUnit(bits);
  const int64_t units = g.rows * units_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  MetricAccumulator acc;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < units;
       u += stride) {
    const int64_t row = u / units_per_row, k = u % units_per_row;
    const int64_t c0 = k * per_unit;
    const int n = static_cast<int>(min(static_cast<int64_t>(per_unit), g.cols - c0));
    const int64_t base = row * g.cols + c0;
    uint32_t word = 0;
    for (int j = 0; j < n; ++j) {
      const int64_t index = base + j;
      const int64_t group = g.Index(row, c0 + j);
      const float s = scales[group];
      const int32_t zp = zero_points != nullptr ? zero_points[group] : 0;
      const float x = Load<kDType>(p.input, index);
      if (p.reject_nan && x != x) OfferNan(flags, index);
      const uint32_t code =
          QuantizeElement(p.codec, x, s, zp, p.stochastic ? StochasticBits(p.seed, index) : 0u);
      if (kCodes)
        word |= PackingTransform(code, bits, p.packing) << CodeBitOffset(j, bits, p.packing);
      if (kOutput || kMetrics) {
        const float s_hat = p.dequant_scales != nullptr ? p.dequant_scales[group] : s;
        const float x_hat = DequantizeElement(p.codec, code, s_hat, zp);
        if (kOutput) StoreFromFloat(output_dtype, output, index, x_hat);
        if (kMetrics) acc.Add(x, x_hat);
      }
    }
    if (kCodes) {
      const int64_t unit_bytes = UnitBytes(bits);
      const int64_t offset = row * p.code_row_bytes + k * unit_bytes;
      const int64_t bytes = min(unit_bytes, p.code_row_bytes - k * unit_bytes);
      if (bytes == 4 && (offset & 3) == 0) {
        *reinterpret_cast<uint32_t*>(codes + offset) = word;
      } else {
        for (int64_t b = 0; b < bytes; ++b)
          codes[offset + b] = static_cast<uint8_t>(word >> (8 * b));
      }
    }
  }
  if (kMetrics) WriteBlockPartial(acc.sums, partials);
}

// Sums the per-block partials in a fixed order into partials[kMaxMetricBlocks].
__global__ void FinalizeMetricsKernel(MetricPartial* partials, int blocks) {
  MetricAccumulator acc;
  for (int b = threadIdx.x; b < blocks; b += 32) MergeInto(acc.sums, partials[b]);
  const MetricPartial total = WarpReduce(acc.sums);
  if (threadIdx.x == 0) partials[kMaxMetricBlocks] = total;
}

__global__ void __launch_bounds__(kThreads)
    DequantizeKernel(ElementParams p, const uint8_t* codes, const float* scales,
                     const int32_t* zero_points, void* output, DType output_dtype,
                     int64_t units_per_row) {
  const ScaleGeometry& g = p.geometry;
  const int bits = p.codec.bits;
  const int per_unit = ElementsPerUnit(bits);
  const uint32_t mask = bits >= 32 ? 0xFFFFFFFFu : ((1u << bits) - 1u);
  const int64_t units = g.rows * units_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < units;
       u += stride) {
    const int64_t row = u / units_per_row, k = u % units_per_row;
    const int64_t c0 = k * per_unit;
    const int n = static_cast<int>(min(static_cast<int64_t>(per_unit), g.cols - c0));
    const int64_t unit_bytes = UnitBytes(bits);
    const int64_t offset = row * p.code_row_bytes + k * unit_bytes;
    const int64_t bytes = min(unit_bytes, p.code_row_bytes - k * unit_bytes);
    uint32_t word = 0;
    if (bytes == 4 && (offset & 3) == 0) {
      word = *reinterpret_cast<const uint32_t*>(codes + offset);
    } else {
      for (int64_t b = 0; b < bytes; ++b)
        word |= static_cast<uint32_t>(codes[offset + b]) << (8 * b);
    }
    const int64_t base = row * g.cols + c0;
    for (int j = 0; j < n; ++j) {
      const int64_t group = g.Index(row, c0 + j);
      const int32_t zp = zero_points != nullptr ? zero_points[group] : 0;
      const uint32_t code =
          PackingTransform((word >> CodeBitOffset(j, bits, p.packing)) & mask, bits, p.packing);
      StoreFromFloat(output_dtype, output, base + j,
                     DequantizeElement(p.codec, code, scales[group], zp));
    }
  }
}

template <template <DType> class Launch, typename... Args>
cudaError_t ForInputDType(DType dtype, Args&&... args) {
  switch (dtype) {
    case DType::kF16:
      return Launch<DType::kF16>::Run(args...);
    case DType::kBF16:
      return Launch<DType::kBF16>::Run(args...);
    default:
      return Launch<DType::kF32>::Run(args...);
  }
}

template <DType kDType>
struct GroupStatsLaunch {
  static cudaError_t Run(const ElementParams& p, const StatsBuffers& stats, cudaStream_t stream) {
    const ScaleGeometry& g = p.geometry;
    if (g.granularity == Granularity::kChannel && g.channel_is_last) {
      const dim3 grid(static_cast<unsigned>((g.cols + kThreads - 1) / kThreads),
                      static_cast<unsigned>(std::min<int64_t>(
                          65535, (g.rows + kColumnTileRows - 1) / kColumnTileRows)));
      ColumnStatsKernel<kDType><<<grid, kThreads, 0, stream>>>(p, stats);
      return cudaGetLastError();
    }
    const bool runs = g.granularity == Granularity::kGroup || g.granularity == Granularity::kBlock;
    const int64_t run_len = runs ? g.group_cols : g.cols;
    const int64_t runs_per_row = runs ? g.groups_per_row : 1;
    const int64_t chunks_per_run = (run_len + kStatsChunk - 1) / kStatsChunk;
    const int64_t units_per_row = runs_per_row * chunks_per_run;
    const int64_t units = g.rows * units_per_row;
    GroupStatsKernel<kDType><<<GridFor(units * 32, p.max_blocks), kThreads, 0, stream>>>(
        p, stats, units, units_per_row, chunks_per_run, run_len);
    return cudaGetLastError();
  }
};

template <DType kDType>
struct ElementLaunch {
  static cudaError_t Run(const ElementParams& p, const float* scales, const int32_t* zero_points,
                         uint8_t* codes, void* output, DType output_dtype, MetricPartial* partials,
                         DeviceFlags* flags, cudaStream_t stream) {
    const bool metrics = partials != nullptr;
    // NVFP4 comes here only where its one-pass kernel does not apply (LaunchQuantizePass), and
    // then no lean kernel does: it stays on the general kernels.
    if (p.scale_kind != ScaleKind::kE4M3 && LeanPathApplies(p, codes, output)) {
      const int grid = LeanGrid(p);
      if (cudaError_t error = LaunchQuantizeLean(p, scales, zero_points, codes, output,
                                                 output_dtype, partials, flags, grid, stream);
          error != cudaSuccess || !metrics) {
        return error;
      }
      return LaunchFinalizeMetrics(partials, grid, stream);
    }
    if (VectorPathApplies(p)) {
      const int grid = std::min(VectorGrid(p), kMaxMetricBlocks);
      if (cudaError_t error = LaunchQuantizeVector(p, scales, zero_points, codes, output,
                                                   output_dtype, partials, flags, grid, stream);
          error != cudaSuccess || !metrics) {
        return error;
      }
      return LaunchFinalizeMetrics(partials, grid, stream);
    }
    const int64_t units_per_row =
        (p.geometry.cols + ElementsPerUnit(p.codec.bits) - 1) / ElementsPerUnit(p.codec.bits);
    const int grid = GridFor(p.geometry.rows * units_per_row,
                             p.max_blocks < kMaxMetricBlocks ? p.max_blocks : kMaxMetricBlocks);
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, stream>>>(p, scales, zero_points, codes, output, output_dtype,
                                            partials, flags, units_per_row);
    };
    if (codes != nullptr && output == nullptr) {
      metrics ? launch(ElementKernel<kDType, true, false, true>)
              : launch(ElementKernel<kDType, true, false, false>);
    } else if (codes == nullptr && output != nullptr) {
      metrics ? launch(ElementKernel<kDType, false, true, true>)
              : launch(ElementKernel<kDType, false, true, false>);
    } else {
      launch(ElementKernel<kDType, false, false, true>);  // metrics only
    }
    if (cudaError_t error = cudaGetLastError(); error != cudaSuccess) return error;
    if (metrics) {
      return LaunchFinalizeMetrics(partials, grid, stream);
    }
    return cudaSuccess;
  }
};

}  // namespace

ElementParams MakeElementParams(const QuantSpec& spec, const QuantLayout& layout, const void* input,
                                DType input_dtype, int max_blocks) {
  ElementParams p;
  p.input = input;
  p.input_dtype = input_dtype;
  p.geometry = layout.geometry;
  p.codec = MakeElementCodec(Traits(spec.format), spec.rounding, spec.overflow,
                             /*nan_to_zero=*/spec.nan_policy == NanPolicy::kZero);
  p.packing = spec.packing;
  p.code_row_bytes = layout.code_row_bytes;
  p.stochastic = spec.rounding == Rounding::kStochastic;
  p.seed = spec.seed;
  p.reject_nan = spec.nan_policy == NanPolicy::kReject;
  p.scale_kind = Traits(spec.format).scale_kind;
  p.max_blocks = max_blocks;
  return p;
}

int64_t WorkspaceBytes(const QuantLayout& layout) {
  const int64_t keys = 2 * layout.geometry.num_scales * static_cast<int64_t>(sizeof(int32_t));
  const int64_t keys_aligned = (keys + 255) / 256 * 256;
  return keys_aligned + 256 + (kMaxMetricBlocks + 1) * static_cast<int64_t>(sizeof(MetricPartial));
}

void SplitWorkspace(void* workspace, const QuantLayout& layout, StatsBuffers* stats,
                    MetricPartial** partials) {
  uint8_t* bytes = static_cast<uint8_t*>(workspace);
  const int64_t n = layout.geometry.num_scales;
  const int64_t keys_aligned = (2 * n * static_cast<int64_t>(sizeof(int32_t)) + 255) / 256 * 256;
  stats->min_keys = reinterpret_cast<int32_t*>(bytes);
  stats->max_keys = stats->min_keys + n;
  stats->flags = reinterpret_cast<DeviceFlags*>(bytes + keys_aligned);
  *partials = reinterpret_cast<MetricPartial*>(bytes + keys_aligned + 256);
}

cudaError_t LaunchInitStats(const StatsBuffers& stats, int64_t num_scales, cudaStream_t stream) {
  InitStatsKernel<<<GridFor(num_scales, 1024), kThreads, 0, stream>>>(stats, num_scales);
  return cudaGetLastError();
}

cudaError_t LaunchGroupStats(const ElementParams& p, const StatsBuffers& stats,
                             cudaStream_t stream) {
  if (p.geometry.rows == 0 || p.geometry.cols == 0) return cudaSuccess;
  if (VectorPathApplies(p)) {
    if (p.geometry.granularity == Granularity::kTensor)
      return LaunchTensorStatsVector(p, stats, stream);
    if (!(p.geometry.granularity == Granularity::kChannel && p.geometry.channel_is_last)) {
      return LaunchRowStatsVector(p, stats, stream);
    }
  }
  return ForInputDType<GroupStatsLaunch>(p.input_dtype, p, stats, stream);
}

cudaError_t LaunchScales(const ScaleRule& rule, float clip, const StatsBuffers& stats,
                         int64_t num_scales, float* scales, int32_t* zero_points,
                         cudaStream_t stream) {
  if (num_scales == 0) return cudaSuccess;
  ScalesKernel<<<GridFor(num_scales, 1024), kThreads, 0, stream>>>(rule, clip, stats, num_scales,
                                                                   scales, zero_points);
  return cudaGetLastError();
}

cudaError_t LaunchNvfp4Scales(const StatsBuffers& stats, int64_t num_scales, float* scales,
                              const GlobalScaleBuffers& nvfp4, float static_global_scale,
                              cudaStream_t stream) {
  const int grid = GridFor(std::max<int64_t>(num_scales, 1), 1024);
  if (static_global_scale == 0.0f) {
    TensorAmaxKernel<<<grid, kThreads, 0, stream>>>(stats, num_scales);
    Nvfp4GlobalFromAmaxKernel<<<1, 1, 0, stream>>>(stats.flags, nvfp4.global_scale);
  } else {
    Nvfp4StaticGlobalKernel<<<1, 1, 0, stream>>>(stats.flags, nvfp4.global_scale,
                                                 static_global_scale);
  }
  Nvfp4ScalesKernel<<<grid, kThreads, 0, stream>>>(stats, num_scales, scales, nvfp4);
  return cudaGetLastError();
}

cudaError_t LaunchQuantize(const ElementParams& p, const float* scales, const int32_t* zero_points,
                           uint8_t* codes, void* output, DType output_dtype,
                           MetricPartial* partials, DeviceFlags* flags, cudaStream_t stream) {
  if (p.geometry.rows == 0 || p.geometry.cols == 0) {
    if (partials == nullptr) return cudaSuccess;
    // No element: the total is all zeros.
    return cudaMemsetAsync(partials + kMaxMetricBlocks, 0, sizeof(MetricPartial), stream);
  }
  return ForInputDType<ElementLaunch>(p.input_dtype, p, scales, zero_points, codes, output,
                                      output_dtype, partials, flags, stream);
}

cudaError_t LaunchQuantizePass(const ElementParams& p, const QuantSpec& spec, bool scales_ready,
                               const StatsBuffers& stats, float* scales, int32_t* zero_points,
                               const GlobalScaleBuffers& nvfp4, uint8_t* codes, void* output,
                               DType output_dtype, MetricPartial* partials, cudaStream_t stream) {
  if (p.scale_kind == ScaleKind::kE4M3) {
    if (Nvfp4FusedApplies(p, codes, output)) {
      // Two passes: the tensor's range (the vector statistics kernel), then blocks of 16
      // quantized from registers. One with the caller's S_enc.
      if (spec.static_global_scale != 0.0f) {
        Nvfp4StaticGlobalKernel<<<1, 1, 0, stream>>>(stats.flags, nvfp4.global_scale,
                                                     spec.static_global_scale);
      } else {
        if (cudaError_t error = LaunchTensorStatsVector(p, stats, stream); error != cudaSuccess) {
          return error;
        }
        Nvfp4GlobalFromTensorStatsKernel<<<1, 1, 0, stream>>>(stats, nvfp4.global_scale);
      }
      if (cudaError_t error = cudaGetLastError(); error != cudaSuccess) return error;
      const int grid = Nvfp4FusedGrid(p, codes != nullptr, partials != nullptr);
      if (cudaError_t error = LaunchQuantizeNvfp4Fused(p, scales, codes, output, output_dtype,
                                                       partials, stats.flags, grid, stream);
          error != cudaSuccess || partials == nullptr) {
        return error;
      }
      return LaunchFinalizeMetrics(partials, grid, stream);
    }
    if (cudaError_t error = LaunchGroupStats(p, stats, stream); error != cudaSuccess) return error;
    if (cudaError_t error = LaunchNvfp4Scales(stats, p.geometry.num_scales, scales, nvfp4,
                                              spec.static_global_scale, stream);
        error != cudaSuccess) {
      return error;
    }
    return LaunchQuantize(p, nvfp4.element_scales, nullptr, codes, output, output_dtype, partials,
                          stats.flags, stream);
  }
  if (!scales_ready) {
    const ScaleRule rule = MakeScaleRule(Traits(spec.format), spec.asymmetric, spec.scale_rounding);
    if (LeanFusedApplies(p, codes, output)) {
      const int grid = LeanFusedGrid(p, codes != nullptr, partials != nullptr);
      if (cudaError_t error =
              LaunchQuantizeLeanFused(p, rule, spec.clip_ratio, scales, zero_points, codes, output,
                                      output_dtype, partials, stats.flags, grid, stream);
          error != cudaSuccess || partials == nullptr) {
        return error;
      }
      return LaunchFinalizeMetrics(partials, grid, stream);
    }
    if (TokenFusedApplies(p)) {
      const int grid = TokenFusedGrid(p);
      if (cudaError_t error =
              LaunchQuantizeTokenFused(p, rule, spec.clip_ratio, scales, zero_points, codes, output,
                                       output_dtype, partials, stats.flags, grid, stream);
          error != cudaSuccess || partials == nullptr) {
        return error;
      }
      return LaunchFinalizeMetrics(partials, grid, stream);
    }
    if (cudaError_t error = LaunchGroupStats(p, stats, stream); error != cudaSuccess) return error;
    if (cudaError_t error = LaunchScales(rule, spec.clip_ratio, stats, p.geometry.num_scales,
                                         scales, zero_points, stream);
        error != cudaSuccess) {
      return error;
    }
  }
  return LaunchQuantize(p, scales, zero_points, codes, output, output_dtype, partials, stats.flags,
                        stream);
}

cudaError_t LaunchDequantize(const ElementParams& p, const uint8_t* codes, const float* scales,
                             const int32_t* zero_points, void* output, DType output_dtype,
                             cudaStream_t stream) {
  if (p.geometry.rows == 0 || p.geometry.cols == 0) return cudaSuccess;
  if (LeanDequantizeApplies(p, output_dtype)) {
    return LaunchDequantizeLean(p, codes, scales, zero_points, output, output_dtype, stream);
  }
  if (VectorPathApplies(p)) {
    return LaunchDequantizeVector(p, codes, scales, zero_points, output, output_dtype, stream);
  }
  const int64_t units_per_row =
      (p.geometry.cols + ElementsPerUnit(p.codec.bits) - 1) / ElementsPerUnit(p.codec.bits);
  DequantizeKernel<<<GridFor(p.geometry.rows * units_per_row, p.max_blocks), kThreads, 0, stream>>>(
      p, codes, scales, zero_points, output, output_dtype, units_per_row);
  return cudaGetLastError();
}

ErrorMetrics MetricsFromPartial(const MetricPartial& total) {
  MetricSums sums;
  sums.sum_x2 = total.sum_x2;
  sums.sum_y2 = total.sum_y2;
  sums.sum_xy = total.sum_xy;
  sums.sum_err2 = total.sum_err2;
  sums.max_abs_err = total.max_abs_err;
  sums.nan_error = total.nan_error != 0;
  sums.count = static_cast<int64_t>(total.count);
  sums.nonfinite_count = static_cast<int64_t>(total.nonfinite_count);
  return FinalizeMetrics(sums);
}

cudaError_t LaunchFinalizeMetrics(MetricPartial* partials, int blocks, cudaStream_t stream) {
  FinalizeMetricsKernel<<<1, 32, 0, stream>>>(partials, blocks);
  return cudaGetLastError();
}

}  // namespace quantd::cuda
