// The CUDA backend's fast element passes, for rows whose length is a multiple of 8 (the
// shapes of real weights and activations): each thread takes 8 consecutive elements of one row
// with 16-byte loads, looks the scale up once per run of elements sharing it, draws one Philox
// block per 4 elements, and stores its codes as one 4- or 8-byte word. The arithmetic per
// element is still codec.h's, so the results are those of the generic kernels, bit for bit.
#include <algorithm>
#include <cstdint>

#include "device_common.cuh"
#include "fast_path.h"
#include "quantd/codec.h"
#include "quantd/packing.h"

namespace quantd::cuda {
namespace {

constexpr int kVector = 8;  // elements per thread

// a / b and a % b in 32 bits when both fit: 64-bit division is a long software sequence.
__device__ __forceinline__ int64_t Div(int64_t a, int64_t b) {
  if (((a | b) >> 32) == 0) return static_cast<uint32_t>(a) / static_cast<uint32_t>(b);
  return a / b;
}

// Which scale the elements from (row, col) on use, and for how many of them.
struct GroupCursor {
  int64_t group;
  int64_t run_left;  // elements, from col on, still in `group`
  int64_t run;       // length of every following run (group size along the row)

  __device__ __forceinline__ GroupCursor(const ScaleGeometry& g, int64_t row, int64_t col) {
    constexpr int64_t kEndless = int64_t{1} << 62;
    run = kEndless;
    run_left = kEndless;
    switch (g.granularity) {
      case Granularity::kToken:
        group = row;
        break;
      case Granularity::kChannel:
        if (g.channel_is_last) {
          group = col;
          run = run_left = 1;
        } else {
          const int64_t run_index = Div(row, g.rows_per_channel);
          group = run_index - Div(run_index, g.channels) * g.channels;
        }
        break;
      case Granularity::kGroup:
      case Granularity::kBlock: {
        const int64_t block_row =
            g.granularity == Granularity::kBlock ? Div(row, g.group_rows) : row;
        const int64_t k = Div(col, g.group_cols);
        group = block_row * g.groups_per_row + k;
        run = g.group_cols;
        run_left = (k + 1) * g.group_cols - col;
        break;
      }
      default:
        group = 0;
        break;
    }
  }

  // Moves to the next element; true when it starts a new group.
  __device__ __forceinline__ bool Step() {
    if (--run_left > 0) return false;
    ++group;
    run_left = run;
    return true;
  }
};

template <DType kDType>
__device__ __forceinline__ void LoadVector(const void* data, int64_t first, float x[kVector]) {
  if (kDType == DType::kF32) {
    const float4* v = reinterpret_cast<const float4*>(static_cast<const float*>(data) + first);
    const float4 a = v[0], b = v[1];
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
  } else {
    const uint4 v = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(data) + first);
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
    for (int j = 0; j < kVector; ++j) {
      const uint16_t h = static_cast<uint16_t>(words[j / 2] >> (16 * (j % 2)));
      x[j] = kDType == DType::kF16 ? HalfToFloat(h) : BF16ToFloat(h);
    }
  }
}

__device__ __forceinline__ void StoreVector(void* data, DType dtype, int64_t first,
                                            const float y[kVector]) {
  if (dtype == DType::kF32) {
    float4* v = reinterpret_cast<float4*>(static_cast<float*>(data) + first);
    v[0] = make_float4(y[0], y[1], y[2], y[3]);
    v[1] = make_float4(y[4], y[5], y[6], y[7]);
  } else {
    uint32_t words[4] = {0, 0, 0, 0};
    for (int j = 0; j < kVector; ++j) {
      const uint16_t h = dtype == DType::kF16 ? FloatToHalf(y[j]) : FloatToBF16(y[j]);
      words[j / 2] |= static_cast<uint32_t>(h) << (16 * (j % 2));
    }
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(data) + first) =
        make_uint4(words[0], words[1], words[2], words[3]);
  }
}

// Row and column of a vector's first element.
// Stores one vector's packed codes: 8 bytes (8-bit codes) or 4 (4-bit). With cols % 8 == 0 a
// row's codes start on such a boundary.
__device__ __forceinline__ void StorePackedCodes(uint8_t* out, int bits, uint64_t packed) {
  if (bits == 8) {
    *reinterpret_cast<uint2*>(out) =
        make_uint2(static_cast<uint32_t>(packed), static_cast<uint32_t>(packed >> 32));
  } else {
    *reinterpret_cast<uint32_t*>(out) = static_cast<uint32_t>(packed);
  }
}

__device__ __forceinline__ void RowCol(int64_t first, int64_t cols, int64_t* row, int64_t* col) {
  *row = Div(first, cols);
  *col = first - *row * cols;
}

// kKind and kRounding are the codec's, as constants: the codec's branches for the other element
// kinds and rounding modes fold away. kCodes / kOutput choose what the pass writes; metrics are
// a run-time choice (a uniform branch) to keep the number of instantiations down.
template <DType kDType, ElementKind kKind, Rounding kRounding, bool kCodes, bool kOutput>
__global__ void __launch_bounds__(kThreads)
    QuantizeVectorKernel(ElementParams p, const float* __restrict__ scales,
                         const int32_t* __restrict__ zero_points, uint8_t* __restrict__ codes,
                         void* __restrict__ output, DType output_dtype, MetricPartial* partials,
                         DeviceFlags* flags, int64_t vectors) {
  constexpr bool kStochastic = kRounding == Rounding::kStochastic;
  const bool metrics = partials != nullptr;
  const ScaleGeometry& g = p.geometry;
  const int bits = p.codec.bits;
  MetricAccumulator acc;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < vectors;
       v += stride) {
    const int64_t first = v * kVector;
    int64_t row, col;
    RowCol(first, g.cols, &row, &col);
    float x[kVector];
    LoadVector<kDType>(p.input, first, x);
    uint32_t random[kVector];
    if (kStochastic) {
      StochasticBlock(p.seed, static_cast<uint64_t>(first) >> 2, random);
      StochasticBlock(p.seed, (static_cast<uint64_t>(first) >> 2) + 1, random + 4);
    }
    GroupCursor cursor(g, row, col);
    float s = scales[cursor.group];
    float reciprocal = ScaleReciprocal(s);
    // NF4 with double quantization: x̂ multiplies by another scale than the codes divide by.
    float s_hat = p.dequant_scales != nullptr ? p.dequant_scales[cursor.group] : s;
    int32_t zp = zero_points != nullptr ? zero_points[cursor.group] : 0;
    uint64_t packed = 0;
    float x_hat[kVector];
    if (p.reject_nan) {
#pragma unroll
      for (int j = 0; j < kVector; ++j) {
        if (x[j] != x[j]) OfferNan(flags, first + j);
      }
    }
    // One element's work with the current scale.
    auto quantize = [&](int j) {
      const uint32_t code = QuantizeElementAs(kKind, kRounding, p.codec, x[j], s, reciprocal, zp,
                                              kStochastic ? random[j] : 0u);
      if (kCodes) {
        packed |= static_cast<uint64_t>(PackingTransform(code, bits, p.packing))
                  << CodeBitOffset(j, bits, p.packing);
      }
      if (kOutput || metrics) {
        x_hat[j] = DequantizeElementAs(kKind, p.codec, code, s_hat, zp);
        if (metrics) acc.Add(x[j], x_hat[j]);
      }
    };
    if (cursor.run_left >= kVector) {
      // The whole vector shares one scale (token, tensor, channel, groups of 8 and more): no
      // group bookkeeping inside the loop.
#pragma unroll
      for (int j = 0; j < kVector; ++j) quantize(j);
    } else {
#pragma unroll
      for (int j = 0; j < kVector; ++j) {
        if (j > 0 && cursor.Step()) {
          s = scales[cursor.group];
          reciprocal = ScaleReciprocal(s);
          s_hat = p.dequant_scales != nullptr ? p.dequant_scales[cursor.group] : s;
          zp = zero_points != nullptr ? zero_points[cursor.group] : 0;
        }
        quantize(j);
      }
    }
    if (kCodes) StorePackedCodes(codes + row * p.code_row_bytes + col * bits / 8, bits, packed);
    if (kOutput) StoreVector(output, output_dtype, first, x_hat);
  }
  if (metrics) WriteBlockPartial(acc.sums, partials);
}

template <ElementKind kKind>
__global__ void __launch_bounds__(kThreads)
    DequantizeVectorKernel(ElementParams p, const uint8_t* __restrict__ codes,
                           const float* __restrict__ scales,
                           const int32_t* __restrict__ zero_points, void* __restrict__ output,
                           DType output_dtype, int64_t vectors) {
  const ScaleGeometry& g = p.geometry;
  const int bits = p.codec.bits;
  const uint32_t mask = (1u << bits) - 1u;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < vectors;
       v += stride) {
    const int64_t first = v * kVector;
    int64_t row, col;
    RowCol(first, g.cols, &row, &col);
    const uint8_t* in = codes + row * p.code_row_bytes + col * bits / 8;
    uint64_t packed;
    if (bits == 8) {
      const uint2 w = *reinterpret_cast<const uint2*>(in);
      packed = w.x | (static_cast<uint64_t>(w.y) << 32);
    } else {
      packed = *reinterpret_cast<const uint32_t*>(in);
    }
    GroupCursor cursor(g, row, col);
    float s = scales[cursor.group];
    int32_t zp = zero_points != nullptr ? zero_points[cursor.group] : 0;
    float y[kVector];
#pragma unroll
    for (int j = 0; j < kVector; ++j) {
      if (j > 0 && cursor.Step()) {
        s = scales[cursor.group];
        zp = zero_points != nullptr ? zero_points[cursor.group] : 0;
      }
      const uint32_t code = PackingTransform(
          static_cast<uint32_t>(packed >> CodeBitOffset(j, bits, p.packing)) & mask, bits,
          p.packing);
      y[j] = DequantizeElementAs(kKind, p.codec, code, s, zp);
    }
    StoreVector(output, output_dtype, first, y);
  }
}

// Per-tensor statistics: every thread folds its share of the tensor into one range, the block
// reduces, and one atomic pair per block merges: no contention on the single group.
template <DType kDType>
__global__ void __launch_bounds__(kThreads)
    TensorStatsVectorKernel(ElementParams p, StatsBuffers stats, int64_t vectors) {
  float lo = __int_as_float(0x7F800000), hi = __int_as_float(0xFF800000);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < vectors;
       v += stride) {
    float x[kVector];
    LoadVector<kDType>(p.input, v * kVector, x);
    for (int j = 0; j < kVector; ++j) {
      FoldStat(x[j], v * kVector + j, p.reject_nan, stats.flags, &lo, &hi);
    }
  }
  WarpRange(&lo, &hi);
  __shared__ float block_lo[kWarps], block_hi[kWarps];
  if ((threadIdx.x & 31) == 0) {
    block_lo[threadIdx.x >> 5] = lo;
    block_hi[threadIdx.x >> 5] = hi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) {
      lo = fminf(lo, block_lo[w]);
      hi = fmaxf(hi, block_hi[w]);
    }
    MergeRange(stats, 0, lo, hi);
  }
}

// Statistics of the row-based granularities (token, leading-axis channel, group, block): each
// thread folds its 8 elements into per-run ranges with the same GroupCursor as the element
// pass, and lanes sharing one group combine in the warp before a single atomic pair: the whole
// warp when it covers one group (token rows), power-of-two lane segments when groups are
// aligned runs of `segment` lanes (group or block sizes of 16..256), each lane alone otherwise.
template <DType kDType>
__global__ void __launch_bounds__(kThreads)
    RowStatsVectorKernel(ElementParams p, StatsBuffers stats, int64_t vectors, int segment) {
  const ScaleGeometry& g = p.geometry;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // Every lane of a warp runs the same number of iterations, so the shuffles below see all 32.
  const int64_t warp_first = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) & ~31;
  for (int64_t base = warp_first; base < vectors; base += stride) {
    const int64_t v = base + (threadIdx.x & 31);
    const bool active = v < vectors;
    float lo = __int_as_float(0x7F800000), hi = __int_as_float(0xFF800000);
    int64_t group = -1;
    if (active) {
      int64_t row, col;
      RowCol(v * kVector, g.cols, &row, &col);
      float x[kVector];
      LoadVector<kDType>(p.input, v * kVector, x);
      GroupCursor cursor(g, row, col);
      group = cursor.group;
#pragma unroll
      for (int j = 0; j < kVector; ++j) {
        if (j > 0 && cursor.Step()) {  // a run ends inside the vector: merge it alone
          MergeRange(stats, group, lo, hi);
          lo = __int_as_float(0x7F800000);
          hi = __int_as_float(0xFF800000);
          group = cursor.group;
        }
        FoldStat(x[j], v * kVector + j, p.reject_nan, stats.flags, &lo, &hi);
      }
    }
    const int64_t lane0_group = __shfl_sync(0xFFFFFFFFu, group, 0);
    if (__all_sync(0xFFFFFFFFu, group == lane0_group)) {
      WarpRange(&lo, &hi);
      if ((threadIdx.x & 31) == 0 && group >= 0) MergeRange(stats, group, lo, hi);
    } else if (segment > 1) {
      WarpRange(&lo, &hi, segment);
      if ((threadIdx.x & (segment - 1)) == 0 && group >= 0) MergeRange(stats, group, lo, hi);
    } else if (group >= 0) {
      MergeRange(stats, group, lo, hi);
    }
  }
}

// Per-token dynamic quantization in one pass: a block takes a row, holds it in registers
// (up to kFusedVectors vectors per thread: rows of at most 8192 elements), reduces its finite
// range, computes the row's scale with ScaleFromRange, and quantizes from the registers. The
// input is read once instead of twice; every value is computed by the same functions as the
// two-pass path, so the results are the same bits.
// 128 threads × 4 vectors × 8 elements: a 4096-wide row fills every slot, and twice as many
// rows are in flight per SM as with 256-thread blocks (each row's load → reduce → quantize is
// a chain of latencies; more rows in flight hide them).
constexpr int kFusedVectors = 4;
constexpr int kFusedThreads = 128;
constexpr int kFusedWarps = kFusedThreads / 32;

template <DType kDType, ElementKind kKind, Rounding kRounding, bool kCodes, bool kOutput>
__global__ void __launch_bounds__(kFusedThreads)
    TokenFusedKernel(ElementParams p, ScaleRule rule, float clip, float* __restrict__ scales,
                     int32_t* __restrict__ zero_points, uint8_t* __restrict__ codes,
                     void* __restrict__ output, DType output_dtype, MetricPartial* partials,
                     DeviceFlags* flags) {
  constexpr bool kStochastic = kRounding == Rounding::kStochastic;
  const bool metrics = partials != nullptr;
  const ScaleGeometry& g = p.geometry;
  const int bits = p.codec.bits;
  __shared__ float warp_lo[2][kFusedWarps], warp_hi[2][kFusedWarps];
  MetricAccumulator acc;
  int parity = 0;  // alternate shared slots, so one barrier per row suffices
  for (int64_t row = blockIdx.x; row < g.rows; row += gridDim.x) {
    float x[kFusedVectors][kVector];
    float lo = __int_as_float(0x7F800000), hi = __int_as_float(0xFF800000);
#pragma unroll
    for (int k = 0; k < kFusedVectors; ++k) {
      const int64_t col = (threadIdx.x + static_cast<int64_t>(k) * kFusedThreads) * kVector;
      if (col >= g.cols) break;
      const int64_t first = row * g.cols + col;
      LoadVector<kDType>(p.input, first, x[k]);
#pragma unroll
      for (int j = 0; j < kVector; ++j) FoldStat(x[k][j], first + j, p.reject_nan, flags, &lo, &hi);
    }
    // Every thread gets the row's range and computes the (same) scale itself.
    BlockRowRange<kFusedThreads>(warp_lo, warp_hi, parity, &lo, &hi);
    parity ^= 1;
    float s = 1.0f;
    int32_t zp = 0;
    const bool range_ok = ScaleFromRange(rule, lo, hi, clip, &s, &zp);
    if (threadIdx.x == 0) {
      if (!range_ok) atomicMax(&flags->bad_scale_group, static_cast<long long>(row));
      scales[row] = s;
      if (zero_points != nullptr) zero_points[row] = zp;
    }
    if (zero_points == nullptr) zp = 0;
    const float reciprocal = ScaleReciprocal(s);
#pragma unroll
    for (int k = 0; k < kFusedVectors; ++k) {
      const int64_t col = (threadIdx.x + static_cast<int64_t>(k) * kFusedThreads) * kVector;
      if (col >= g.cols) break;
      const int64_t first = row * g.cols + col;
      uint32_t random[kVector];
      if (kStochastic) {
        StochasticBlock(p.seed, static_cast<uint64_t>(first) >> 2, random);
        StochasticBlock(p.seed, (static_cast<uint64_t>(first) >> 2) + 1, random + 4);
      }
      uint64_t packed = 0;
      float x_hat[kVector];
#pragma unroll
      for (int j = 0; j < kVector; ++j) {
        const uint32_t code = QuantizeElementAs(kKind, kRounding, p.codec, x[k][j], s, reciprocal,
                                                zp, kStochastic ? random[j] : 0u);
        if (kCodes) {
          packed |= static_cast<uint64_t>(PackingTransform(code, bits, p.packing)) << (j * bits);
        }
        if (kOutput || metrics) {
          x_hat[j] = DequantizeElementAs(kKind, p.codec, code, s, zp);
          if (metrics) acc.Add(x[k][j], x_hat[j]);
        }
      }
      if (kCodes) {
        StorePackedCodes(codes + row * p.code_row_bytes + col * bits / 8, bits, packed);
      }
      if (kOutput) StoreVector(output, output_dtype, first, x_hat);
    }
  }
  if (metrics) WriteBlockPartial<kFusedThreads>(acc.sums, partials);
}

template <DType kDType, ElementKind kKind, Rounding kRounding>
cudaError_t LaunchTokenFusedAs(const ElementParams& p, const ScaleRule& rule, float clip,
                               float* scales, int32_t* zero_points, uint8_t* codes, void* output,
                               DType output_dtype, MetricPartial* partials, DeviceFlags* flags,
                               int grid, cudaStream_t stream) {
  auto launch = [&](auto kernel) {
    kernel<<<grid, kFusedThreads, 0, stream>>>(p, rule, clip, scales, zero_points, codes, output,
                                               output_dtype, partials, flags);
  };
  if (codes != nullptr) {
    launch(TokenFusedKernel<kDType, kKind, kRounding, true, false>);
  } else if (output != nullptr) {
    launch(TokenFusedKernel<kDType, kKind, kRounding, false, true>);
  } else {
    launch(TokenFusedKernel<kDType, kKind, kRounding, false, false>);
  }
  return cudaGetLastError();
}

template <DType kDType, ElementKind kKind>
cudaError_t LaunchTokenFusedKind(const ElementParams& p, const ScaleRule& rule, float clip,
                                 float* scales, int32_t* zero_points, uint8_t* codes, void* output,
                                 DType output_dtype, MetricPartial* partials, DeviceFlags* flags,
                                 int grid, cudaStream_t stream) {
  switch (p.codec.rounding) {
    case Rounding::kStochastic:
      return LaunchTokenFusedAs<kDType, kKind, Rounding::kStochastic>(
          p, rule, clip, scales, zero_points, codes, output, output_dtype, partials, flags, grid,
          stream);
    case Rounding::kNearestAway:
      return LaunchTokenFusedAs<kDType, kKind, Rounding::kNearestAway>(
          p, rule, clip, scales, zero_points, codes, output, output_dtype, partials, flags, grid,
          stream);
    default:
      return LaunchTokenFusedAs<kDType, kKind, Rounding::kNearestEven>(
          p, rule, clip, scales, zero_points, codes, output, output_dtype, partials, flags, grid,
          stream);
  }
}

template <DType kDType>
cudaError_t LaunchTokenFusedTyped(const ElementParams& p, const ScaleRule& rule, float clip,
                                  float* scales, int32_t* zero_points, uint8_t* codes, void* output,
                                  DType output_dtype, MetricPartial* partials, DeviceFlags* flags,
                                  int grid, cudaStream_t stream) {
  if (p.codec.kind == ElementKind::kMinifloat) {
    return LaunchTokenFusedKind<kDType, ElementKind::kMinifloat>(p, rule, clip, scales, zero_points,
                                                                 codes, output, output_dtype,
                                                                 partials, flags, grid, stream);
  }
  return LaunchTokenFusedKind<kDType, ElementKind::kInt>(p, rule, clip, scales, zero_points, codes,
                                                         output, output_dtype, partials, flags,
                                                         grid, stream);
}

template <DType kDType, ElementKind kKind, Rounding kRounding>
cudaError_t LaunchQuantizeVectorAs(const ElementParams& p, const float* scales,
                                   const int32_t* zero_points, uint8_t* codes, void* output,
                                   DType output_dtype, MetricPartial* partials, DeviceFlags* flags,
                                   int grid, cudaStream_t stream) {
  const int64_t vectors = p.geometry.rows * p.geometry.cols / kVector;
  auto launch = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, stream>>>(p, scales, zero_points, codes, output, output_dtype,
                                          partials, flags, vectors);
  };
  if (codes != nullptr) {
    launch(QuantizeVectorKernel<kDType, kKind, kRounding, true, false>);
  } else if (output != nullptr) {
    launch(QuantizeVectorKernel<kDType, kKind, kRounding, false, true>);
  } else {
    launch(QuantizeVectorKernel<kDType, kKind, kRounding, false, false>);  // metrics only
  }
  return cudaGetLastError();
}

template <DType kDType, ElementKind kKind>
cudaError_t LaunchQuantizeVectorKind(const ElementParams& p, const float* scales,
                                     const int32_t* zero_points, uint8_t* codes, void* output,
                                     DType output_dtype, MetricPartial* partials,
                                     DeviceFlags* flags, int grid, cudaStream_t stream) {
  switch (p.codec.rounding) {
    case Rounding::kStochastic:
      return LaunchQuantizeVectorAs<kDType, kKind, Rounding::kStochastic>(
          p, scales, zero_points, codes, output, output_dtype, partials, flags, grid, stream);
    case Rounding::kNearestAway:
      return LaunchQuantizeVectorAs<kDType, kKind, Rounding::kNearestAway>(
          p, scales, zero_points, codes, output, output_dtype, partials, flags, grid, stream);
    default:
      return LaunchQuantizeVectorAs<kDType, kKind, Rounding::kNearestEven>(
          p, scales, zero_points, codes, output, output_dtype, partials, flags, grid, stream);
  }
}

template <DType kDType>
cudaError_t LaunchQuantizeVectorTyped(const ElementParams& p, const float* scales,
                                      const int32_t* zero_points, uint8_t* codes, void* output,
                                      DType output_dtype, MetricPartial* partials,
                                      DeviceFlags* flags, int grid, cudaStream_t stream) {
  switch (p.codec.kind) {
    case ElementKind::kMinifloat:
      return LaunchQuantizeVectorKind<kDType, ElementKind::kMinifloat>(
          p, scales, zero_points, codes, output, output_dtype, partials, flags, grid, stream);
    // HiF8 and NF4 each have one rounding (ResolveSpec refuses the others).
    case ElementKind::kHif8:
      return LaunchQuantizeVectorAs<kDType, ElementKind::kHif8, Rounding::kNearestAway>(
          p, scales, zero_points, codes, output, output_dtype, partials, flags, grid, stream);
    case ElementKind::kNf4:
      return LaunchQuantizeVectorAs<kDType, ElementKind::kNf4, Rounding::kNearestEven>(
          p, scales, zero_points, codes, output, output_dtype, partials, flags, grid, stream);
    default:
      break;
  }
  return LaunchQuantizeVectorKind<kDType, ElementKind::kInt>(
      p, scales, zero_points, codes, output, output_dtype, partials, flags, grid, stream);
}

}  // namespace

bool TokenFusedApplies(const ElementParams& p) {
  // Integer formats only, as measured on the H200 (docs/PERF_NOTES.md v6): int8 per-token runs
  // 39% faster fused than in two passes, while FP8's longer per-element chain needs 96
  // registers here and, at the occupancy that leaves, runs 35% slower than two passes.
  return p.geometry.granularity == Granularity::kToken && p.codec.kind == ElementKind::kInt &&
         VectorPathApplies(p) &&
         p.geometry.cols <= static_cast<int64_t>(kFusedVectors) * kFusedThreads * kVector;
}

int TokenFusedGrid(const ElementParams& p) {
  const int64_t rows = p.geometry.rows;
  // Twice the blocks of a 256-thread launch: they are half the size.
  const int64_t cap = std::min<int64_t>(2 * static_cast<int64_t>(p.max_blocks), kMaxMetricBlocks);
  return static_cast<int>(std::max<int64_t>(1, std::min(rows, cap)));
}

cudaError_t LaunchQuantizeTokenFused(const ElementParams& p, const ScaleRule& rule, float clip,
                                     float* scales, int32_t* zero_points, uint8_t* codes,
                                     void* output, DType output_dtype, MetricPartial* partials,
                                     DeviceFlags* flags, int grid, cudaStream_t stream) {
  switch (p.input_dtype) {
    case DType::kF16:
      return LaunchTokenFusedTyped<DType::kF16>(p, rule, clip, scales, zero_points, codes, output,
                                                output_dtype, partials, flags, grid, stream);
    case DType::kBF16:
      return LaunchTokenFusedTyped<DType::kBF16>(p, rule, clip, scales, zero_points, codes, output,
                                                 output_dtype, partials, flags, grid, stream);
    default:
      return LaunchTokenFusedTyped<DType::kF32>(p, rule, clip, scales, zero_points, codes, output,
                                                output_dtype, partials, flags, grid, stream);
  }
}

bool VectorPathApplies(const ElementParams& p) {
  // Its kernels are instantiated for every element kind, HiF8 and NF4 with their one rounding.
  return p.geometry.cols > 0 && p.geometry.cols % kVector == 0 && p.geometry.rows > 0 &&
         (p.codec.bits == 8 || p.codec.bits == 4);
}

int VectorGrid(const ElementParams& p) {
  return GridFor(p.geometry.rows * p.geometry.cols / kVector, p.max_blocks);
}

cudaError_t LaunchQuantizeVector(const ElementParams& p, const float* scales,
                                 const int32_t* zero_points, uint8_t* codes, void* output,
                                 DType output_dtype, MetricPartial* partials, DeviceFlags* flags,
                                 int grid, cudaStream_t stream) {
  switch (p.input_dtype) {
    case DType::kF16:
      return LaunchQuantizeVectorTyped<DType::kF16>(p, scales, zero_points, codes, output,
                                                    output_dtype, partials, flags, grid, stream);
    case DType::kBF16:
      return LaunchQuantizeVectorTyped<DType::kBF16>(p, scales, zero_points, codes, output,
                                                     output_dtype, partials, flags, grid, stream);
    default:
      return LaunchQuantizeVectorTyped<DType::kF32>(p, scales, zero_points, codes, output,
                                                    output_dtype, partials, flags, grid, stream);
  }
}

cudaError_t LaunchDequantizeVector(const ElementParams& p, const uint8_t* codes,
                                   const float* scales, const int32_t* zero_points, void* output,
                                   DType output_dtype, cudaStream_t stream) {
  const int64_t vectors = p.geometry.rows * p.geometry.cols / kVector;
  if (p.codec.kind == ElementKind::kMinifloat) {
    DequantizeVectorKernel<ElementKind::kMinifloat><<<VectorGrid(p), kThreads, 0, stream>>>(
        p, codes, scales, zero_points, output, output_dtype, vectors);
  } else if (p.codec.kind == ElementKind::kHif8) {
    DequantizeVectorKernel<ElementKind::kHif8><<<VectorGrid(p), kThreads, 0, stream>>>(
        p, codes, scales, zero_points, output, output_dtype, vectors);
  } else if (p.codec.kind == ElementKind::kNf4) {
    DequantizeVectorKernel<ElementKind::kNf4><<<VectorGrid(p), kThreads, 0, stream>>>(
        p, codes, scales, zero_points, output, output_dtype, vectors);
  } else {
    DequantizeVectorKernel<ElementKind::kInt><<<VectorGrid(p), kThreads, 0, stream>>>(
        p, codes, scales, zero_points, output, output_dtype, vectors);
  }
  return cudaGetLastError();
}

cudaError_t LaunchRowStatsVector(const ElementParams& p, const StatsBuffers& stats,
                                 cudaStream_t stream) {
  const ScaleGeometry& g = p.geometry;
  const int64_t vectors = g.rows * g.cols / kVector;
  // Lanes per group when every group is an aligned run of a power-of-two number of vectors that
  // divides the warp (and rows hold whole groups, so no run is ragged): then a lane segment
  // never mixes groups.
  int segment = 1;
  if ((g.granularity == Granularity::kGroup || g.granularity == Granularity::kBlock) &&
      g.group_cols % kVector == 0 && g.cols % g.group_cols == 0) {
    const int64_t lanes = g.group_cols / kVector;
    if (lanes <= 32 && (lanes & (lanes - 1)) == 0) segment = static_cast<int>(lanes);
  }
  const int grid = VectorGrid(p);
  switch (p.input_dtype) {
    case DType::kF16:
      RowStatsVectorKernel<DType::kF16><<<grid, kThreads, 0, stream>>>(p, stats, vectors, segment);
      break;
    case DType::kBF16:
      RowStatsVectorKernel<DType::kBF16><<<grid, kThreads, 0, stream>>>(p, stats, vectors, segment);
      break;
    default:
      RowStatsVectorKernel<DType::kF32><<<grid, kThreads, 0, stream>>>(p, stats, vectors, segment);
      break;
  }
  return cudaGetLastError();
}

cudaError_t LaunchTensorStatsVector(const ElementParams& p, const StatsBuffers& stats,
                                    cudaStream_t stream) {
  const int64_t vectors = p.geometry.rows * p.geometry.cols / kVector;
  const int grid = VectorGrid(p);
  switch (p.input_dtype) {
    case DType::kF16:
      TensorStatsVectorKernel<DType::kF16><<<grid, kThreads, 0, stream>>>(p, stats, vectors);
      break;
    case DType::kBF16:
      TensorStatsVectorKernel<DType::kBF16><<<grid, kThreads, 0, stream>>>(p, stats, vectors);
      break;
    default:
      TensorStatsVectorKernel<DType::kF32><<<grid, kThreads, 0, stream>>>(p, stats, vectors);
      break;
  }
  return cudaGetLastError();
}

}  // namespace quantd::cuda
