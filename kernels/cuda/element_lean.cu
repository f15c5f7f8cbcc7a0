// The CUDA backend's lean element passes: the formats the service moves most bytes of (INT8,
// INT4, UINT8/UINT4 asymmetric, FP8 E4M3/E5M2, MX's E2M1, E3M2 and E2M3 elements, and NVFP4),
// rounded to nearest even and saturating, with a
// scale shared by at least 8 consecutive elements (tensor, token, channel on a leading axis,
// group and block). element_fast.cu's vector kernels call codec.h once per element, with every
// range check and the format read at run time: about 47 instructions per element, which caps
// INT8 quantization near 60% of copy bandwidth on an H200. Here the format is a template
// argument and the checks move to one test per vector and one per scale, about a dozen
// instructions per element.
// The arithmetic, and why it gives codec.h's bits, is in lean_codec.cuh.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "device_common.cuh"
#include "lean_codec.cuh"
#include "lean_path.h"
#include "quantd/codec.h"
#include "quantd/fast_divmod.h"
#include "quantd/packing.h"

namespace quantd::cuda {
namespace {

using namespace lean;  // NOLINT: this file is the lean codec's only user

// The scale group of vector v (32-bit indices: LeanPathApplies checks the sizes).
__device__ __forceinline__ uint32_t LeanGroup(const LeanGeometry& g, uint32_t v) {
  if (g.granularity == Granularity::kTensor) return 0;
  const uint32_t row = g.vectors_per_row.Div(v);
  switch (g.granularity) {
    case Granularity::kToken:
      return row;
    case Granularity::kChannel: {
      const uint32_t run = g.rows_per_step.Div(row);
      return run - g.channels.Div(run) * g.channels.divisor;
    }
    default: {  // kGroup, kBlock
      const uint32_t vcol = v - row * g.vectors_per_row.divisor;
      const uint32_t group_row =
          g.granularity == Granularity::kBlock ? g.rows_per_step.Div(row) : row;
      return group_row * g.groups_per_row + g.vectors_per_group.Div(vcol);
    }
  }
}

// Quantizes vector v (loaded in x) with `scale`, adds its share of the metrics and writes x̂
// when the launch asks for them, and returns its codes, packed as stored.
template <DType kDType, LeanFormat kFormat, bool kOutput, bool kMetrics>
__device__ __forceinline__ PackedVector QuantizeAndEmit(const ElementParams& p, uint32_t v,
                                                        float x[kVector], const LeanScale& scale,
                                                        DeviceFlags* flags, void* output,
                                                        DType output_dtype,
                                                        MetricAccumulator* acc) {
  const int64_t first = static_cast<int64_t>(v) * kVector;
  float x_hat[kVector];
  const PackedVector packed = QuantizeVector < kDType, kFormat,
                     kOutput || kMetrics > (p, first, x, scale, flags, x_hat);
  if (kMetrics) {
#pragma unroll
    for (int j = 0; j < kVector; ++j) acc->Add(x[j], x_hat[j]);
  }
  if (kOutput) StoreAs(output, output_dtype, first, x_hat);
  return packed;
}

// QuantizeAndEmit, then the codes stored when the launch asks for them. Every lean quantizing
// kernel but the lane-group one (which stores two vectors at once) ends its loop here.
template <DType kDType, LeanFormat kFormat, bool kCodes, bool kOutput, bool kMetrics>
__device__ __forceinline__ void EmitVector(const ElementParams& p, uint32_t v, float x[kVector],
                                           const LeanScale& scale, DeviceFlags* flags,
                                           uint32_t code_xor, uint8_t* codes_out, void* output,
                                           DType output_dtype, MetricAccumulator* acc) {
  const PackedVector packed = QuantizeAndEmit<kDType, kFormat, kOutput, kMetrics>(
      p, v, x, scale, flags, output, output_dtype, acc);
  if (kCodes) StoreCodes<kFormat>(codes_out, v, &packed, 1, code_xor);
}

// The element pass with scales already in memory (static, or from a statistics pass).
template <DType kDType, LeanFormat kFormat, bool kCodes, bool kOutput, bool kMetrics>
__global__ void __launch_bounds__(kThreads)
    LeanQuantizeKernel(ElementParams p, LeanGeometry lg, const float* __restrict__ scales,
                       const int32_t* __restrict__ zero_points, uint8_t* __restrict__ codes_out,
                       void* __restrict__ output, DType output_dtype, MetricPartial* partials,
                       DeviceFlags* flags, uint32_t code_xor, uint32_t vectors) {
  MetricAccumulator acc;
  uint32_t cached_group = ~0u;
  LeanScale scale;
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t v = blockIdx.x * blockDim.x + threadIdx.x; v < vectors; v += stride) {
    const int64_t first = static_cast<int64_t>(v) * kVector;
    float x[kVector];
    LoadLean<kDType>(p.input, first, x);
    const uint32_t group = LeanGroup(lg, v);
    if (group != cached_group) {
      cached_group = group;
      scale =
          MakeLeanScale(p.codec, scales[group], zero_points != nullptr ? zero_points[group] : 0);
    }
    EmitVector<kDType, kFormat, kCodes, kOutput, kMetrics>(p, v, x, scale, flags, code_xor,
                                                           codes_out, output, output_dtype, &acc);
  }
  if (kMetrics) WriteBlockPartial(acc.sums, partials);
}

// Folds x's finite values into [lo, hi], as the statistics pass does, in two instructions per
// element: fminf / fmaxf skip NaN, and a vector whose extremes come out infinite (rare) is
// folded again without its infinities. -0 versus +0 is settled once per group (ScaleOfRange).
// NaNs a request rejects are flagged by QuantizeVector, which sees every vector.
__device__ __forceinline__ void FoldRange(const float x[kVector], float* lo, float* hi) {
  float vector_lo = x[0], vector_hi = x[0];
#pragma unroll
  for (int j = 1; j < kVector; ++j) {
    vector_lo = fminf(vector_lo, x[j]);
    vector_hi = fmaxf(vector_hi, x[j]);
  }
  if (fabsf(vector_lo) == __int_as_float(0x7F800000) ||
      fabsf(vector_hi) == __int_as_float(0x7F800000)) {
    vector_lo = __int_as_float(0x7F800000);
    vector_hi = __int_as_float(0xFF800000);
#pragma unroll
    for (int j = 0; j < kVector; ++j) {
      if (IsFinite(x[j])) {
        vector_lo = fminf(vector_lo, x[j]);
        vector_hi = fmaxf(vector_hi, x[j]);
      }
    }
  }
  *lo = fminf(*lo, vector_lo);
  *hi = fmaxf(*hi, vector_hi);
}

// The largest finite |x| of the vector (0 when none), folded into *amax: what a symmetric
// scale needs of the range, in half of FoldRange's instructions.
__device__ __forceinline__ void FoldAbsMax(const float x[kVector], float* amax) {
  float m = fabsf(x[0]);
#pragma unroll
  for (int j = 1; j < kVector; ++j) m = fmaxf(m, fabsf(x[j]));
  if (m == __int_as_float(0x7F800000)) {
    m = 0.0f;
#pragma unroll
    for (int j = 0; j < kVector; ++j) {
      if (IsFinite(x[j])) m = fmaxf(m, fabsf(x[j]));
    }
  }
  *amax = fmaxf(*amax, m);
}

// NVFP4's block scale s_b is an E4M3 code c (0..0x7E: the conversion saturates), and what its
// elements divide by, d_b = RN(decode(c) / S_enc), and RN(1 / d_b) depend on c and S_enc alone.
// So each block of threads tabulates them once, {decode(c), d_b, RN(1 / d_b)} per code, from
// S_enc, which an earlier kernel left in the flags (LaunchQuantizePass); a group's scale is
// then one conversion and one shared load, instead of a division and a reciprocal per 16
// elements.
constexpr int kE4M3Codes = 0x7F;
using Nvfp4Table = float4[kE4M3Codes];

struct Nvfp4Constants {
  float global_over_6 = 0.0f;  // S_enc / 6 as Nvfp4BlockScale rounds it
  const float4* table = nullptr;
};

// Every thread of the block calls it (it synchronizes them).
__device__ __forceinline__ Nvfp4Constants LoadNvfp4Constants(const DeviceFlags* flags,
                                                             Nvfp4Table& table) {
  const float global_scale = __uint_as_float(flags->global_scale_bits);
  const float global_reciprocal = ScaleReciprocal(global_scale);
  for (int code = threadIdx.x; code < kE4M3Codes; code += blockDim.x) {
    // codec.h's Nvfp4BlockScale and Nvfp4ElementScale, the division by DivideByScale
    // (correctly rounded).
    const float block_scale =
        __low2float(DecodeFp8Pair<LeanFormat::kE4M3>(static_cast<unsigned short>(code)));
    const float element_scale = DivideByScale(block_scale, global_scale, global_reciprocal);
    table[code] = make_float4(block_scale, element_scale,
                              LeanReciprocal(element_scale, /*power_of_two=*/false), 0.0f);
  }
  __syncthreads();
  Nvfp4Constants c;
  c.global_over_6 = global_scale / 6.0f;
  c.table = table;
  return c;
}

// The scale of one NVFP4 block from its amax (the largest finite |x|; +0 when none): codec.h's
// Nvfp4BlockScale with S_enc / 6 hoisted and the E4M3 rounding by the hardware's conversion
// (RNE + SATURATE, as codec.h: tests/gpu checks every input), then the code's entry of the
// table. The elements divide by d_b; a d_b of 0 (or below 2^-60) is not lean, and
// QuantizeVector then takes codec.h, which gives codes 0. Stores s_b as scale `block`.
__device__ __forceinline__ LeanScale Nvfp4ScaleOfAmax(const ElementParams& p,
                                                      const Nvfp4Constants& nvfp4, float amax,
                                                      uint32_t block, float* scales) {
  const float4 entry = nvfp4.table[E4M3Code(amax * nvfp4.global_over_6)];
  scales[block] = entry.x;
  return MakeLeanScale(p.codec, entry.y, 0, /*power_of_two=*/false, entry.z);
}

// The scale (and zero-point) of one group from its range, as LaunchScales computes it; the
// caller's `writer` thread stores them. Free fp32 scales and MX's E8M0 ones: NVFP4's E4M3
// block scales come from Nvfp4ScaleOfAmax, in LeanNvfp4Kernel alone.
__device__ __forceinline__ LeanScale ScaleOfRange(const ElementParams& p, const ScaleRule& rule,
                                                  float clip, float lo, float hi, uint32_t group,
                                                  bool writer, float* scales, int32_t* zero_points,
                                                  DeviceFlags* flags) {
  float s = 1.0f;
  int32_t zp = 0;
  // The statistics pass counts -0 as +0; a zero extreme of either sign becomes +0 here.
  const bool range_ok = ScaleFromRange(rule, lo + 0.0f, hi + 0.0f, clip, &s, &zp);
  if (writer) {
    if (!range_ok) atomicMax(&flags->bad_scale_group, static_cast<long long>(group));
    scales[group] = s;
    if (zero_points != nullptr) zero_points[group] = zp;
  }
  return MakeLeanScale(p.codec, s, zero_points != nullptr ? zp : 0,
                       /*power_of_two=*/p.scale_kind == ScaleKind::kE8M0);
}

// Dynamic quantization in one pass for groups of G = 8·2^k elements, 0 ≤ k ≤ 5 (groups up to
// 256 elements, and token rows that short). Each thread holds two consecutive vectors (16
// elements): a group of 16 or more spans G/16 lanes, which reduce its range with shuffles, and
// every lane computes the group's scale once for its 16 elements; with G = 8 each of a thread's
// vectors is a group. (One vector per thread computed a scale per 8 elements, and the scale's
// arithmetic then held the MX kernels on the integer pipe.) NVFP4 takes LeanNvfp4Kernel, MX
// codes LeanMxKernel.
template <DType kDType, LeanFormat kFormat, bool kCodes, bool kOutput, bool kMetrics>
__global__ void __launch_bounds__(kThreads)
    LeanLaneGroupKernel(ElementParams p, ScaleRule rule, float clip, float* __restrict__ scales,
                        int32_t* __restrict__ zero_points, uint8_t* __restrict__ codes_out,
                        void* __restrict__ output, DType output_dtype, MetricPartial* partials,
                        DeviceFlags* flags, uint32_t code_xor, uint32_t vectors,
                        int log2_group_vectors) {
  MetricAccumulator acc;
  const bool shared_group = log2_group_vectors > 0;                    // both vectors in one group
  const int lanes = shared_group ? 1 << (log2_group_vectors - 1) : 1;  // lanes per group
  const uint32_t pairs = (vectors + 1) / 2;
  const uint32_t stride = gridDim.x * blockDim.x;
  // Every lane of a warp runs the same iterations (the shuffles need all 32), and a group's
  // lanes are all in range or all out: with G ≥ 16, vectors is a multiple of G / 8.
  for (uint32_t base = (blockIdx.x * blockDim.x + threadIdx.x) & ~31u; base < pairs;
       base += stride) {
    const uint32_t v = 2 * (base + (threadIdx.x & 31));  // the thread's first vector
    const bool active[2] = {v < vectors, v + 1 < vectors};
    float x[2][kVector];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      if (active[k]) LoadLean<kDType>(p.input, static_cast<int64_t>(v + k) * kVector, x[k]);
    }
    float lo[2], hi[2];
    if (rule.asymmetric) {
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        lo[k] = __int_as_float(0x7F800000);
        hi[k] = __int_as_float(0xFF800000);
        if (active[k]) FoldRange(x[k], &lo[k], &hi[k]);
      }
      if (shared_group) {
        lo[0] = fminf(lo[0], lo[1]);
        hi[0] = fmaxf(hi[0], hi[1]);
        WarpRange(&lo[0], &hi[0], lanes);
      }
    } else {
      // Symmetric scales see only max(hi, -lo): [-amax, amax] gives the same (an empty
      // range and an all-zero one both give amax 0, as ScaleOfRange reads them).
      float amax[2] = {0.0f, 0.0f};
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        if (active[k]) FoldAbsMax(x[k], &amax[k]);
      }
      if (shared_group) {
        amax[0] = fmaxf(amax[0], amax[1]);
        for (int offset = lanes / 2; offset > 0; offset >>= 1) {
          amax[0] = fmaxf(amax[0], __shfl_xor_sync(0xFFFFFFFFu, amax[0], offset, lanes));
        }
      }
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        lo[k] = -amax[k];
        hi[k] = amax[k];
      }
    }
    if (!active[0]) continue;
    PackedVector packed[2];
    const uint32_t group_mask = (1u << log2_group_vectors) - 1;
    const LeanScale scale = ScaleOfRange(p, rule, clip, lo[0], hi[0], v >> log2_group_vectors,
                                         (v & group_mask) == 0, scales, zero_points, flags);
    packed[0] = QuantizeAndEmit<kDType, kFormat, kOutput, kMetrics>(p, v, x[0], scale, flags,
                                                                    output, output_dtype, &acc);
    if (active[1]) {
      if (shared_group) {
        packed[1] = QuantizeAndEmit<kDType, kFormat, kOutput, kMetrics>(
            p, v + 1, x[1], scale, flags, output, output_dtype, &acc);
      } else {
        const LeanScale second =
            ScaleOfRange(p, rule, clip, lo[1], hi[1], v + 1, true, scales, zero_points, flags);
        packed[1] = QuantizeAndEmit<kDType, kFormat, kOutput, kMetrics>(
            p, v + 1, x[1], second, flags, output, output_dtype, &acc);
      }
    }
    if (kCodes) StoreCodes<kFormat>(codes_out, v, packed, active[1] ? 2 : 1, code_xor);
  }
  if (kMetrics) WriteBlockPartial(acc.sums, partials);
}

// NVFP4 in one pass: LeanLaneGroupKernel's case of 16-element groups (a thread's two vectors,
// so no shuffles, and no lone vector: NVFP4 rows are whole blocks) with symmetric E4M3 block
// scales (Nvfp4ScaleOfAmax), all fixed at compile time. The lane-group kernel's run-time
// generality (asymmetric ranges, lanes per group, free and power-of-two scales with their
// zero-points and atomics) cost NVFP4 a fifth of its instructions (21 per element on the
// codes' hot path, 17 here) and 16 registers (64: 4 blocks per SM, where codes now take 5).
//
// Blocks per SM that its launch bounds ask for, and LeanFusedGrid launches (one wave: with
// max_blocks' 8 per SM a second wave would run part-filled). Codes fit in 48 registers without
// spilling; x̂ keeps the lane-group kernel's 64, and the metrics' fp64 sums need about 110.
constexpr int Nvfp4BlocksPerSm(bool codes, bool metrics) { return metrics ? 2 : (codes ? 5 : 4); }

template <DType kDType, bool kCodes, bool kOutput, bool kMetrics>
__global__ void __launch_bounds__(kThreads, Nvfp4BlocksPerSm(kCodes, kMetrics))
    LeanNvfp4Kernel(ElementParams p, float* __restrict__ scales, uint8_t* __restrict__ codes_out,
                    void* __restrict__ output, DType output_dtype, MetricPartial* partials,
                    DeviceFlags* flags, uint32_t code_xor, uint32_t blocks) {
  constexpr LeanFormat kFormat = LeanFormat::kE2M1;
  __shared__ Nvfp4Table nvfp4_table;
  const Nvfp4Constants nvfp4 = LoadNvfp4Constants(flags, nvfp4_table);
  MetricAccumulator acc;
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t b = blockIdx.x * blockDim.x + threadIdx.x; b < blocks; b += stride) {
    const uint32_t v = 2 * b;  // the block's first vector
    float x[2][kVector];
    float amax[2] = {0.0f, 0.0f};
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      LoadLean<kDType>(p.input, static_cast<int64_t>(v + k) * kVector, x[k]);
      FoldAbsMax(x[k], &amax[k]);
    }
    const LeanScale scale = Nvfp4ScaleOfAmax(p, nvfp4, fmaxf(amax[0], amax[1]), b, scales);
    PackedVector packed[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      packed[k] = QuantizeAndEmit<kDType, kFormat, kOutput, kMetrics>(p, v + k, x[k], scale, flags,
                                                                      output, output_dtype, &acc);
    }
    if (kCodes) StoreCodes<kFormat>(codes_out, v, packed, 2, code_xor);
  }
  if (kMetrics) WriteBlockPartial(acc.sums, partials);
}

// The MX formats' codes in one pass: LeanLaneGroupKernel's case of 32-element groups with E8M0
// scales (symmetric, no zero-points: every MX format), all fixed at compile time. A thread
// holds two vectors and the other half of its group is the neighbouring lane's: one shuffle
// for the group's amax. The lane-group kernel's run-time generality (asymmetric ranges, lanes
// per group, zero-points, lone vectors) is what LeanNvfp4Kernel shed for NVFP4; MXFP4 sheds it
// here. x̂ (QuantDequant) keeps the lane-group kernel.
//
// Blocks per SM that its launch bounds ask for, and LeanFusedGrid launches (one wave): MXFP4's
// codes fit in 48 registers, the wider formats' keep 64, and the metrics' fp64 sums need ~110.
constexpr int MxBlocksPerSm(LeanFormat format, bool metrics) {
  return metrics ? 2 : (format == LeanFormat::kE2M1 ? 5 : 4);
}

template <DType kDType, LeanFormat kFormat, bool kMetrics>
__global__ void __launch_bounds__(kThreads, MxBlocksPerSm(kFormat, kMetrics))
    LeanMxKernel(ElementParams p, ScaleRule rule, float* __restrict__ scales,
                 uint8_t* __restrict__ codes_out, MetricPartial* partials, DeviceFlags* flags,
                 uint32_t code_xor, uint32_t pairs) {
  MetricAccumulator acc;
  const uint32_t stride = gridDim.x * blockDim.x;
  // Every lane of a warp runs the same iterations (the shuffle needs all 32); a group's two
  // lanes are both in range or both out (pairs is even: a group is two pairs).
  for (uint32_t base = (blockIdx.x * blockDim.x + threadIdx.x) & ~31u; base < pairs;
       base += stride) {
    const uint32_t pair = base + (threadIdx.x & 31);
    const bool active = pair < pairs;
    const uint32_t v = 2 * pair;  // the thread's first vector
    float x[2][kVector];
    float amax[2] = {0.0f, 0.0f};
    if (active) {
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        LoadLean<kDType>(p.input, static_cast<int64_t>(v + k) * kVector, x[k]);
        FoldAbsMax(x[k], &amax[k]);
      }
    }
    float group_amax = fmaxf(amax[0], amax[1]);
    group_amax = fmaxf(group_amax, __shfl_xor_sync(0xFFFFFFFFu, group_amax, 1));
    if (!active) continue;
    // ScaleFromRange's MX case (codec.h): a power of two from the block's amax.
    const float s = MxScaleOfExponent(rule, MxSharedExponent(rule, group_amax));
    if ((pair & 1) == 0) scales[pair / 2] = s;
    const LeanScale scale = MakeLeanScale(p.codec, s, 0, /*power_of_two=*/true);
    PackedVector packed[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      packed[k] = QuantizeAndEmit<kDType, kFormat, false, kMetrics>(p, v + k, x[k], scale, flags,
                                                                    nullptr, DType::kF32, &acc);
    }
    StoreCodes<kFormat>(codes_out, v, packed, 2, code_xor);
  }
  if (kMetrics) WriteBlockPartial(acc.sums, partials);
}

// Dynamic per-row quantization in one pass (token, or a leading-axis channel that is the row)
// for rows of 264..8192 elements: a block holds a row in registers, reduces its range, and
// quantizes it.
// The kernel is compiled for 2 and 4 vectors per thread: rows of up to 4096 elements (the
// common hidden sizes) then hold half the registers, so more rows are in flight per SM.
constexpr int kRowThreads = 256;
constexpr int kRowSlots = 4;  // vectors per thread at most: rows up to 256 · 4 · 8 = 8192
constexpr int kRowWarps = kRowThreads / 32;

template <int kSlots, DType kDType, LeanFormat kFormat, bool kCodes, bool kOutput, bool kMetrics>
__global__ void __launch_bounds__(kRowThreads, kSlots == 2 ? 4 : 2)
    LeanRowKernel(ElementParams p, ScaleRule rule, float clip, float* __restrict__ scales,
                  int32_t* __restrict__ zero_points, uint8_t* __restrict__ codes_out,
                  void* __restrict__ output, DType output_dtype, MetricPartial* partials,
                  DeviceFlags* flags, uint32_t code_xor, uint32_t row_vectors, uint32_t rows) {
  __shared__ float warp_lo[2][kRowWarps], warp_hi[2][kRowWarps];
  MetricAccumulator acc;
  int parity = 0;  // alternate shared slots, so one barrier per row suffices
  for (uint32_t row = blockIdx.x; row < rows; row += gridDim.x) {
    float x[kSlots][kVector];
    float lo = __int_as_float(0x7F800000), hi = __int_as_float(0xFF800000);
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const uint32_t c = threadIdx.x + k * kRowThreads;
      if (c < row_vectors) {
        const int64_t first = (static_cast<int64_t>(row) * row_vectors + c) * kVector;
        LoadLean<kDType>(p.input, first, x[k]);
        FoldRange(x[k], &lo, &hi);
      }
    }
    // Every thread gets the row's range and computes the (same) scale itself.
    BlockRowRange<kRowThreads>(warp_lo, warp_hi, parity, &lo, &hi);
    parity ^= 1;
    const LeanScale scale =
        ScaleOfRange(p, rule, clip, lo, hi, row, threadIdx.x == 0, scales, zero_points, flags);
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const uint32_t c = threadIdx.x + k * kRowThreads;
      if (c >= row_vectors) break;
      const uint32_t v = row * row_vectors + c;
      EmitVector<kDType, kFormat, kCodes, kOutput, kMetrics>(p, v, x[k], scale, flags, code_xor,
                                                             codes_out, output, output_dtype, &acc);
    }
  }
  if (kMetrics) WriteBlockPartial<kRowThreads>(acc.sums, partials);
}

// Dynamic quantization of 2-D blocks (group_rows × group_cols, e.g. DeepSeek's 128 × 128) in one
// kernel: a block of threads per scale block reads the tile once for its range, reduces it,
// and reads it again to quantize. A 128 × 128 F32 tile is 64 KiB and the second read follows
// the first within microseconds, so it comes from L2: DRAM sees the input once, where the
// statistics pass + element pass read it twice.
template <DType kDType, LeanFormat kFormat, bool kCodes, bool kOutput, bool kMetrics>
__global__ void __launch_bounds__(kThreads)
    LeanBlockKernel(ElementParams p, ScaleRule rule, float clip, float* __restrict__ scales,
                    int32_t* __restrict__ zero_points, uint8_t* __restrict__ codes_out,
                    void* __restrict__ output, DType output_dtype, MetricPartial* partials,
                    DeviceFlags* flags, uint32_t code_xor, uint32_t row_vectors, uint32_t rows,
                    uint32_t block_rows, FastDivmod block_vectors, uint32_t blocks_per_row,
                    uint32_t num_blocks) {
  __shared__ float warp_lo[2][kWarps], warp_hi[2][kWarps];
  MetricAccumulator acc;
  int parity = 0;  // alternate shared slots, so one barrier per tile suffices
  const uint32_t width = block_vectors.divisor;
  for (uint32_t b = blockIdx.x; b < num_blocks; b += gridDim.x) {
    const uint32_t band = b / blocks_per_row;
    const uint32_t r0 = band * block_rows;
    const uint32_t height = min(block_rows, rows - r0);
    const uint32_t first_vector = r0 * row_vectors + (b - band * blocks_per_row) * width;
    const uint32_t tile_vectors = height * width;
    // Vector t of the tile, row-major.
    const auto vector_of = [&](uint32_t t) {
      const uint32_t r = block_vectors.Div(t);
      return first_vector + r * row_vectors + (t - r * width);
    };
    float lo = __int_as_float(0x7F800000), hi = __int_as_float(0xFF800000);
#pragma unroll 4
    for (uint32_t t = threadIdx.x; t < tile_vectors; t += kThreads) {
      float x[kVector];
      LoadLean<kDType>(p.input, static_cast<int64_t>(vector_of(t)) * kVector, x);
      FoldRange(x, &lo, &hi);
    }
    BlockRowRange<kThreads>(warp_lo, warp_hi, parity, &lo, &hi);
    parity ^= 1;
    const LeanScale scale =
        ScaleOfRange(p, rule, clip, lo, hi, b, threadIdx.x == 0, scales, zero_points, flags);
#pragma unroll 2
    for (uint32_t t = threadIdx.x; t < tile_vectors; t += kThreads) {
      const uint32_t v = vector_of(t);
      float x[kVector];
      LoadLean<kDType>(p.input, static_cast<int64_t>(v) * kVector, x);
      EmitVector<kDType, kFormat, kCodes, kOutput, kMetrics>(p, v, x, scale, flags, code_xor,
                                                             codes_out, output, output_dtype, &acc);
    }
  }
  if (kMetrics) WriteBlockPartial(acc.sums, partials);
}

// Dequantization in units of 4 elements, 4 units per thread and iteration. With 4 elements
// per thread each warp-wide 16-byte store covers 512 contiguous bytes; with 8 (two stores of
// every other 16 bytes) the writes reached only ~50% of copy bandwidth on the H200. The loads
// of all 4 units are in flight before the first store.
constexpr int kUnit = 4;
constexpr int kDequantizeUnroll = 4;

template <LeanFormat kFormat, DType kOut>
__global__ void __launch_bounds__(kThreads)
    LeanDequantizeKernel(ElementParams p, LeanGeometry lg, const uint8_t* __restrict__ codes,
                         const float* __restrict__ scales, const int32_t* __restrict__ zero_points,
                         void* __restrict__ output, uint32_t code_xor, float offset,
                         uint32_t units) {
  constexpr int kBits = Lean<kFormat>::kBits;
  uint32_t cached_group = ~0u;
  float s = 1.0f, bias = 0.0f;
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t base = blockIdx.x * blockDim.x + threadIdx.x; base < units;
       base += kDequantizeUnroll * stride) {
    uint32_t packed[kDequantizeUnroll];
#pragma unroll
    for (int u = 0; u < kDequantizeUnroll; ++u) {
      const uint32_t v = base + u * stride;
      if (v >= units) break;
      if (kBits == 8) {
        packed[u] = reinterpret_cast<const uint32_t*>(codes)[v] ^ code_xor;
      } else {
        packed[u] = reinterpret_cast<const uint16_t*>(codes)[v] ^ (code_xor & 0xFFFFu);
      }
    }
#pragma unroll
    for (int u = 0; u < kDequantizeUnroll; ++u) {
      const uint32_t v = base + u * stride;
      if (v >= units) break;
      const uint32_t group = LeanGroup(lg, v);
      if (group != cached_group) {
        cached_group = group;
        s = scales[group];
        // 1.5·2^23 + offset + zp: exact (integers below 2^24).
        bias = kRoundingMagic + offset +
               static_cast<float>(zero_points != nullptr ? zero_points[group] : 0);
      }
      float y[kUnit];
      LeanDecode<kFormat, kUnit>(packed[u], s, bias, y);
      StoreDecoded<kOut, kUnit>(output, static_cast<int64_t>(v) * kUnit, y);
    }
  }
}

bool SameMinifloat(const MinifloatParams& m, const MinifloatParams& want) {
  return m.exp_bits == want.exp_bits && m.man_bits == want.man_bits && m.bias == want.bias &&
         m.max_code == want.max_code && m.nan_encoding == want.nan_encoding;
}

// The element formats with a lean encode: OCP FP8 (E4M3, E5M2), and MX's finite-only FP4
// E2M1 (max 6) and FP6 E3M2 (max 28) and E2M3 (max 7.5).
bool IsE4M3(const MinifloatParams& m) { return SameMinifloat(m, E4M3Params()); }
bool IsE5M2(const MinifloatParams& m) {
  return SameMinifloat(m, {5, 2, 15, 0x7B, NanEncoding::kIeee});
}
bool IsE2M1(const MinifloatParams& m) {
  return SameMinifloat(m, {2, 1, 1, 0x7, NanEncoding::kNone});
}
bool IsE3M2(const MinifloatParams& m) {
  return SameMinifloat(m, {3, 2, 3, 0x1F, NanEncoding::kNone});
}
bool IsE2M3(const MinifloatParams& m) {
  return SameMinifloat(m, {2, 3, 1, 0x1F, NanEncoding::kNone});
}

// The lean format of a codec LeanPathApplies / LeanDequantizeApplies accepted.
LeanFormat LeanFormatOf(const ElementCodec& c) {
  if (c.kind == ElementKind::kInt) return c.bits == 8 ? LeanFormat::kInt8 : LeanFormat::kInt4;
  if (IsE2M1(c.minifloat)) return LeanFormat::kE2M1;
  if (IsE3M2(c.minifloat)) return LeanFormat::kE3M2;
  if (IsE2M3(c.minifloat)) return LeanFormat::kE2M3;
  return IsE4M3(c.minifloat) ? LeanFormat::kE4M3 : LeanFormat::kE5M2;
}

// A quantizing launch's compile-time choices.
template <DType kD, LeanFormat kF, bool kC, bool kM>
struct LeanConfig {
  static constexpr DType kDType = kD;
  static constexpr LeanFormat kFormat = kF;
  static constexpr bool kCodes = kC;  // else x̂ in `output`
  static constexpr bool kOutput = !kC;
  static constexpr bool kMetrics = kM;
};

template <auto kValue>
using Constant = std::integral_constant<decltype(kValue), kValue>;

// Calls visit(Constant<format>{}) with the lean format of `codec`.
template <typename Visit>
void VisitLeanFormat(const ElementCodec& codec, Visit&& visit) {
  switch (LeanFormatOf(codec)) {
    case LeanFormat::kInt8:
      return visit(Constant<LeanFormat::kInt8>{});
    case LeanFormat::kInt4:
      return visit(Constant<LeanFormat::kInt4>{});
    case LeanFormat::kE4M3:
      return visit(Constant<LeanFormat::kE4M3>{});
    case LeanFormat::kE5M2:
      return visit(Constant<LeanFormat::kE5M2>{});
    case LeanFormat::kE2M1:
      return visit(Constant<LeanFormat::kE2M1>{});
    case LeanFormat::kE3M2:
      return visit(Constant<LeanFormat::kE3M2>{});
    case LeanFormat::kE2M3:
      return visit(Constant<LeanFormat::kE2M3>{});
  }
}

// Calls visit(Constant<DType>{}) for an input dtype (F32 for any other than F16 / BF16).
template <typename Visit>
void VisitLeanDType(DType dtype, Visit&& visit) {
  switch (dtype) {
    case DType::kF16:
      return visit(Constant<DType::kF16>{});
    case DType::kBF16:
      return visit(Constant<DType::kBF16>{});
    default:
      return visit(Constant<DType::kF32>{});
  }
}

// Calls visit(LeanConfig<...>{}) with the constants of this launch: the one place that turns
// run-time choices into quantizing kernel instantiations.
template <typename Visit>
void VisitLeanConfig(const ElementParams& p, bool codes, bool metrics, Visit&& visit) {
  const auto with_format = [&](auto dtype, auto format) {
    constexpr DType kD = decltype(dtype)::value;
    constexpr LeanFormat kF = decltype(format)::value;
    if (codes) {
      metrics ? visit(LeanConfig<kD, kF, true, true>{}) : visit(LeanConfig<kD, kF, true, false>{});
    } else {
      metrics ? visit(LeanConfig<kD, kF, false, true>{})
              : visit(LeanConfig<kD, kF, false, false>{});
    }
  };
  VisitLeanDType(p.input_dtype, [&](auto dtype) {
    VisitLeanFormat(p.codec, [&](auto format) { with_format(dtype, format); });
  });
}

// SMs of the device (ElementParams::max_blocks is 8 per SM).
int Sms(const ElementParams& p) { return std::max(1, p.max_blocks / 8); }

// INT32_OFFSET stores every code with its top bit flipped: one XOR per packed word.
uint32_t StoredCodeXor(const ElementParams& p) {
  if (p.packing != Packing::kInt32Offset) return 0;
  return p.codec.bits == 4 ? 0x88888888u : 0x80808080u;
}

// Vectors per scale group when one-pass dynamic quantization applies, else 0: token rows, rows
// that are a leading-axis channel each, and groups along the row.
uint32_t FusedGroupVectors(const ScaleGeometry& g) {
  switch (g.granularity) {
    case Granularity::kToken:
      return static_cast<uint32_t>(g.cols / kVector);
    case Granularity::kChannel:
      return !g.channel_is_last && g.rows_per_channel == 1 && g.channels == g.rows
                 ? static_cast<uint32_t>(g.cols / kVector)
                 : 0;
    case Granularity::kGroup:
      return static_cast<uint32_t>(g.group_cols / kVector);
    default:
      return 0;
  }
}

bool IsPowerOfTwo(uint32_t n) { return n != 0 && (n & (n - 1)) == 0; }

// Whether every scale run is made of whole 8-element vectors.
bool LeanGranularity(const ScaleGeometry& g) {
  switch (g.granularity) {
    case Granularity::kTensor:
    case Granularity::kToken:
      return true;
    case Granularity::kChannel:
      return !g.channel_is_last;
    case Granularity::kGroup:
    case Granularity::kBlock:
      return g.group_cols % kVector == 0 && g.cols % g.group_cols == 0;
    default:
      return false;
  }
}

}  // namespace

bool LeanPathApplies(const ElementParams& p, const uint8_t* codes, const void* output) {
  const ScaleGeometry& g = p.geometry;
  const ElementCodec& c = p.codec;
  if ((codes == nullptr) == (output == nullptr)) return false;  // one of the two, not both
  if (g.rows <= 0 || g.cols <= 0 || g.cols % kVector != 0) return false;
  if (g.rows * g.cols / kVector >= (int64_t{1} << 31) || g.num_scales >= (int64_t{1} << 31)) {
    return false;
  }
  if (p.stochastic || c.rounding != Rounding::kNearestEven) return false;
  if (c.kind == ElementKind::kInt) {
    if (c.bits != 8 && c.bits != 4) return false;
  } else if (c.kind == ElementKind::kMinifloat) {
    if (!(IsE4M3(c.minifloat) || IsE5M2(c.minifloat) || IsE2M1(c.minifloat) ||
          IsE3M2(c.minifloat) || IsE2M3(c.minifloat)) ||
        c.overflow == Overflow::kNonfinite) {
      return false;
    }
  } else {
    return false;
  }
  if (codes != nullptr && p.code_row_bytes != g.cols * c.bits / 8) return false;
  return LeanGranularity(g);
}

// `unit`: elements per vector index (8, or 4 for dequantization).
LeanGeometry MakeLeanGeometry(const ScaleGeometry& g, int unit = kVector) {
  LeanGeometry lg;
  lg.granularity = g.granularity;
  lg.vectors_per_row = FastDivmod(static_cast<uint32_t>(g.cols / unit));
  if (g.granularity == Granularity::kChannel) {
    lg.rows_per_step = FastDivmod(static_cast<uint32_t>(g.rows_per_channel));
    lg.channels = FastDivmod(static_cast<uint32_t>(g.channels));
  } else if (g.granularity == Granularity::kGroup || g.granularity == Granularity::kBlock) {
    lg.rows_per_step = FastDivmod(static_cast<uint32_t>(g.group_rows));
    lg.vectors_per_group = FastDivmod(static_cast<uint32_t>(g.group_cols / unit));
    lg.groups_per_row = static_cast<uint32_t>(g.groups_per_row);
  }
  return lg;
}

int LeanGrid(const ElementParams& p) {
  return GridFor(p.geometry.rows * p.geometry.cols / kVector,
                 p.max_blocks < kMaxMetricBlocks ? p.max_blocks : kMaxMetricBlocks);
}

cudaError_t LaunchQuantizeLean(const ElementParams& p, const float* scales,
                               const int32_t* zero_points, uint8_t* codes, void* output,
                               DType output_dtype, MetricPartial* partials, DeviceFlags* flags,
                               int grid, cudaStream_t stream) {
  const LeanGeometry lg = MakeLeanGeometry(p.geometry);
  const uint32_t vectors = static_cast<uint32_t>(p.geometry.rows * p.geometry.cols / kVector);
  const uint32_t code_xor = StoredCodeXor(p);
  VisitLeanConfig(p, codes != nullptr, partials != nullptr, [&](auto config) {
    using C = decltype(config);
    LeanQuantizeKernel<C::kDType, C::kFormat, C::kCodes, C::kOutput, C::kMetrics>
        <<<grid, kThreads, 0, stream>>>(p, lg, scales, zero_points, codes, output, output_dtype,
                                        partials, flags, code_xor, vectors);
  });
  return cudaGetLastError();
}

bool Nvfp4FusedApplies(const ElementParams& p, const uint8_t* codes, const void* output) {
  // LeanNvfp4Kernel: groups of 16 along the row.
  return LeanPathApplies(p, codes, output) && p.geometry.granularity == Granularity::kGroup &&
         FusedGroupVectors(p.geometry) == 2;
}

int Nvfp4FusedGrid(const ElementParams& p, bool codes, bool metrics) {
  // One wave.
  const int cap = std::min(p.max_blocks, kMaxMetricBlocks);
  return GridFor(p.geometry.rows * p.geometry.cols / (2 * kVector),
                 std::min(cap, Sms(p) * Nvfp4BlocksPerSm(codes, metrics)));
}

cudaError_t LaunchQuantizeNvfp4Fused(const ElementParams& p, float* scales, uint8_t* codes,
                                     void* output, DType output_dtype, MetricPartial* partials,
                                     DeviceFlags* flags, int grid, cudaStream_t stream) {
  const uint32_t blocks = static_cast<uint32_t>(p.geometry.rows * p.geometry.cols / (2 * kVector));
  VisitLeanDType(p.input_dtype, [&](auto dtype) {
    constexpr DType kDType = decltype(dtype)::value;
    const auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, stream>>>(p, scales, codes, output, output_dtype, partials, flags,
                                            StoredCodeXor(p), blocks);
    };
    if (codes != nullptr) {
      partials != nullptr ? launch(LeanNvfp4Kernel<kDType, true, false, true>)
                          : launch(LeanNvfp4Kernel<kDType, true, false, false>);
    } else {
      partials != nullptr ? launch(LeanNvfp4Kernel<kDType, false, true, true>)
                          : launch(LeanNvfp4Kernel<kDType, false, true, false>);
    }
  });
  return cudaGetLastError();
}

bool LeanFusedApplies(const ElementParams& p, const uint8_t* codes, const void* output) {
  if (!LeanPathApplies(p, codes, output)) return false;
  if (p.geometry.granularity == Granularity::kBlock) return true;  // LeanBlockKernel
  const uint32_t group_vectors = FusedGroupVectors(p.geometry);
  if (group_vectors == 0) return false;
  if (group_vectors <= 32 && IsPowerOfTwo(group_vectors)) return true;
  // Rows up to 8192 elements: LeanRowKernel; longer ones: LeanBlockKernel (LongRows).
  return p.geometry.granularity != Granularity::kGroup;
}

// Whether the fused pass takes this per-row quantization as 1-row tiles of LeanBlockKernel:
// rows too long for LeanRowKernel's registers (K = 14336 or 28672 of the Llama MLPs). The tile
// is read a second time from L2 (a 28672-element BF16 row is 56 KiB), so DRAM still sees the
// input once, where the statistics pass + element pass of the two-pass path read it twice and
// launch three kernels (what a decode step with a few rows pays most for).
bool LongRows(const ElementParams& p) {
  return p.geometry.granularity != Granularity::kBlock &&
         p.geometry.granularity != Granularity::kGroup &&
         FusedGroupVectors(p.geometry) > static_cast<uint32_t>(kRowThreads * kRowSlots);
}

// Blocks LeanBlockKernel launches for tiles of `tile_bytes`: the tiles in flight must fit in L2
// for their second read (on the H200's 50 MiB L2, F32 128 x 128 tiles at 3 blocks per SM ran at
// 65% of copy, 8 per SM at 60%, 2 per SM at 56%).
int BlockKernelGrid(const ElementParams& p, int64_t tile_bytes, int cap) {
  constexpr int64_t kTileBytesInFlight = int64_t{32} << 20;
  const int64_t sms = Sms(p);
  const int64_t per_sm = std::clamp<int64_t>(kTileBytesInFlight / (sms * tile_bytes), 1, 8);
  return static_cast<int>(
      std::clamp<int64_t>(std::min<int64_t>(sms * per_sm, cap), 1, p.geometry.num_scales));
}

// Whether LeanMxKernel takes the pass: MX codes (E8M0 scales on 32-element groups along the
// row), the only case of the lane-group kernel with its own kernel.
bool MxFused(const ElementParams& p, bool codes) {
  return codes && p.scale_kind == ScaleKind::kE8M0 &&
         p.geometry.granularity == Granularity::kGroup && FusedGroupVectors(p.geometry) == 4 &&
         LeanFormatOf(p.codec) != LeanFormat::kInt4;
}

int LeanFusedGrid(const ElementParams& p, bool codes, bool metrics) {
  const uint32_t group_vectors = FusedGroupVectors(p.geometry);
  const int cap = std::min(p.max_blocks, kMaxMetricBlocks);
  const int64_t element_bytes = DTypeSize(p.input_dtype);
  if (p.geometry.granularity == Granularity::kBlock) {
    return BlockKernelGrid(p, p.geometry.group_rows * p.geometry.group_cols * element_bytes, cap);
  }
  if (LongRows(p)) return BlockKernelGrid(p, p.geometry.cols * element_bytes, cap);
  if (MxFused(p, codes)) {
    return GridFor(
        p.geometry.rows * p.geometry.cols / (2 * kVector),
        std::min(cap, Sms(p) * MxBlocksPerSm(LeanFormatOf(p.codec), metrics)));  // one wave
  }
  if (group_vectors <= 32 && IsPowerOfTwo(group_vectors)) {
    return GridFor((p.geometry.rows * p.geometry.cols / kVector + 1) / 2, cap);  // two vectors
  }
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(p.geometry.rows, cap)));
}

cudaError_t LaunchQuantizeLeanFused(const ElementParams& p, const ScaleRule& rule, float clip,
                                    float* scales, int32_t* zero_points, uint8_t* codes,
                                    void* output, DType output_dtype, MetricPartial* partials,
                                    DeviceFlags* flags, int grid, cudaStream_t stream) {
  const uint32_t vectors = static_cast<uint32_t>(p.geometry.rows * p.geometry.cols / kVector);
  const uint32_t group_vectors = FusedGroupVectors(p.geometry);
  const uint32_t code_xor = StoredCodeXor(p);
  const ScaleGeometry& g = p.geometry;
  if (g.granularity == Granularity::kBlock || LongRows(p)) {
    // A long row is a 1 x cols tile and its scale group the row's (token, or a channel that
    // is the row): one group per row, tile index = group index = row.
    const bool blocks = g.granularity == Granularity::kBlock;
    const FastDivmod block_vectors(
        static_cast<uint32_t>((blocks ? g.group_cols : g.cols) / kVector));
    const uint32_t block_rows = blocks ? static_cast<uint32_t>(g.group_rows) : 1;
    const uint32_t blocks_per_row = blocks ? static_cast<uint32_t>(g.groups_per_row) : 1;
    VisitLeanConfig(p, codes != nullptr, partials != nullptr, [&](auto config) {
      using C = decltype(config);
      LeanBlockKernel<C::kDType, C::kFormat, C::kCodes, C::kOutput, C::kMetrics>
          <<<grid, kThreads, 0, stream>>>(
              p, rule, clip, scales, zero_points, codes, output, output_dtype, partials, flags,
              code_xor, static_cast<uint32_t>(g.cols / kVector), static_cast<uint32_t>(g.rows),
              block_rows, block_vectors, blocks_per_row, static_cast<uint32_t>(g.num_scales));
    });
    return cudaGetLastError();
  }
  if (MxFused(p, codes != nullptr)) {
    VisitLeanDType(p.input_dtype, [&](auto dtype) {
      VisitLeanFormat(p.codec, [&](auto format) {
        constexpr DType kD = decltype(dtype)::value;
        constexpr LeanFormat kF = decltype(format)::value;
        if constexpr (kF != LeanFormat::kInt4) {  // no MX format
          const auto kernel =
              partials != nullptr ? LeanMxKernel<kD, kF, true> : LeanMxKernel<kD, kF, false>;
          kernel<<<grid, kThreads, 0, stream>>>(p, rule, scales, codes, partials, flags, code_xor,
                                                vectors / 2);
        }
      });
    });
    return cudaGetLastError();
  }
  if (group_vectors <= 32 && IsPowerOfTwo(group_vectors)) {
    int log2_group_vectors = 0;
    while ((1u << log2_group_vectors) < group_vectors) ++log2_group_vectors;
    VisitLeanConfig(p, codes != nullptr, partials != nullptr, [&](auto config) {
      using C = decltype(config);
      LeanLaneGroupKernel<C::kDType, C::kFormat, C::kCodes, C::kOutput, C::kMetrics>
          <<<grid, kThreads, 0, stream>>>(p, rule, clip, scales, zero_points, codes, output,
                                          output_dtype, partials, flags, code_xor, vectors,
                                          log2_group_vectors);
    });
  } else {
    const uint32_t rows = static_cast<uint32_t>(p.geometry.rows);
    VisitLeanConfig(p, codes != nullptr, partials != nullptr, [&](auto config) {
      using C = decltype(config);
      const auto kernel =
          group_vectors <= 2 * kRowThreads
              ? LeanRowKernel<2, C::kDType, C::kFormat, C::kCodes, C::kOutput, C::kMetrics>
              : LeanRowKernel<kRowSlots, C::kDType, C::kFormat, C::kCodes, C::kOutput, C::kMetrics>;
      kernel<<<grid, kRowThreads, 0, stream>>>(p, rule, clip, scales, zero_points, codes, output,
                                               output_dtype, partials, flags, code_xor,
                                               group_vectors, rows);
    });
  }
  return cudaGetLastError();
}

bool LeanDequantizeApplies(const ElementParams& p, DType output_dtype) {
  const ScaleGeometry& g = p.geometry;
  const ElementCodec& c = p.codec;
  if (output_dtype != DType::kF32 && output_dtype != DType::kF16 && output_dtype != DType::kBF16) {
    return false;
  }
  if (g.rows <= 0 || g.cols <= 0 || g.cols % kVector != 0) return false;
  if (g.rows * g.cols / kUnit >= (int64_t{1} << 31) || g.num_scales >= (int64_t{1} << 31)) {
    return false;
  }
  if (c.kind == ElementKind::kInt) {
    if (c.bits != 8 && c.bits != 4) return false;
  } else if (c.kind != ElementKind::kMinifloat ||
             !(IsE4M3(c.minifloat) || IsE5M2(c.minifloat) || IsE2M1(c.minifloat))) {
    return false;
  }
  if (p.code_row_bytes != g.cols * c.bits / 8) return false;
  return LeanGranularity(g);
}

cudaError_t LaunchDequantizeLean(const ElementParams& p, const uint8_t* codes, const float* scales,
                                 const int32_t* zero_points, void* output, DType output_dtype,
                                 cudaStream_t stream) {
  const LeanGeometry lg = MakeLeanGeometry(p.geometry, kUnit);
  const uint32_t units = static_cast<uint32_t>(p.geometry.rows * p.geometry.cols / kUnit);
  const int grid = GridFor(units, std::min(p.max_blocks, kMaxMetricBlocks));
  // Stored bits → offset binary: undo INT32_OFFSET's flip, then flip signed codes' top bit.
  uint32_t code_xor = p.packing == Packing::kInt32Offset ? 0x88888888u : 0u;
  float offset = 0.0f;
  if (p.codec.kind == ElementKind::kInt && p.codec.qmin < 0) {
    code_xor ^= 0x88888888u;
    offset = static_cast<float>(1 << (p.codec.bits - 1));
  }
  if (p.codec.bits == 8) code_xor &= 0x80808080u;
  const auto launch = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, stream>>>(p, lg, codes, scales, zero_points, output, code_xor,
                                          offset, units);
  };
  const auto for_output = [&](auto format) {
    constexpr LeanFormat kF = decltype(format)::value;
    if constexpr (Lean<kF>::kFp6) {
      return;  // LeanDequantizeApplies refuses FP6
    } else {
      switch (output_dtype) {
        case DType::kF16:
          return launch(LeanDequantizeKernel<kF, DType::kF16>);
        case DType::kBF16:
          return launch(LeanDequantizeKernel<kF, DType::kBF16>);
        default:
          return launch(LeanDequantizeKernel<kF, DType::kF32>);
      }
    }
  };
  VisitLeanFormat(p.codec, for_output);
  return cudaGetLastError();
}

}  // namespace quantd::cuda
