// Internal to the CUDA backend: element_lean.cu's element passes for the common formats with a
// scale shared along 8+ elements (see that file). Same arguments and results as LaunchQuantize;
// the caller finalizes metric partials.
#ifndef QUANTD_KERNELS_CUDA_LEAN_PATH_H_
#define QUANTD_KERNELS_CUDA_LEAN_PATH_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"
#include "quantd/fast_divmod.h"

namespace quantd::cuda {

// ScaleGeometry with its divisions precomputed, for 8-element vectors numbered in row-major
// order.
struct LeanGeometry {
  Granularity granularity = Granularity::kTensor;
  FastDivmod vectors_per_row;
  FastDivmod rows_per_step;      // kChannel: rows_per_channel; kGroup / kBlock: group_rows
  FastDivmod channels;           // kChannel
  FastDivmod vectors_per_group;  // kGroup / kBlock: group_cols / 8
  uint32_t groups_per_row = 1;
};

// Whether the lean pass handles this element pass: INT8 / INT4 (any zero-point) or E4M3 / E5M2 /
// E2M1 / E3M2 / E2M3 with round-to-nearest-even and saturation, codes or output (not both), rows
// a multiple of 8 long, and a granularity whose scale runs are whole vectors.
bool LeanPathApplies(const ElementParams& p, const uint8_t* codes, const void* output);

// Blocks the lean pass launches (its number of metric partials).
int LeanGrid(const ElementParams& p);

cudaError_t LaunchQuantizeLean(const ElementParams& p, const float* scales,
                               const int32_t* zero_points, uint8_t* codes, void* output,
                               DType output_dtype, MetricPartial* partials, DeviceFlags* flags,
                               int grid, cudaStream_t stream);

// Dynamic quantization in one pass (statistics, scales and codes from registers) where the
// lean pass applies and each scale group lies within a row: token rows (longer than 8192
// elements as 1-row tiles of the block kernel), leading-axis channels that are rows, and
// groups of 8..256 elements (a power of two); and 2-D blocks, one kernel reading each tile
// twice (the second time from L2). Writes scales (and zero-points) as LaunchScales would;
// `flags` must be initialized. NVFP4 takes the Nvfp4Fused* functions below instead.
bool LeanFusedApplies(const ElementParams& p, const uint8_t* codes, const void* output);
// Blocks LaunchQuantizeLeanFused launches (its number of metric partials) for codes (else x̂),
// with metrics or without.
int LeanFusedGrid(const ElementParams& p, bool codes, bool metrics);
cudaError_t LaunchQuantizeLeanFused(const ElementParams& p, const ScaleRule& rule, float clip,
                                    float* scales, int32_t* zero_points, uint8_t* codes,
                                    void* output, DType output_dtype, MetricPartial* partials,
                                    DeviceFlags* flags, int grid, cudaStream_t stream);

// NVFP4 in one pass (LeanNvfp4Kernel) over blocks of 16 along the row, S_enc read from
// flags->global_scale_bits: writes s_b into `scales` as LaunchNvfp4Scales would. Applies,
// blocks launched (one wave), launch.
bool Nvfp4FusedApplies(const ElementParams& p, const uint8_t* codes, const void* output);
int Nvfp4FusedGrid(const ElementParams& p, bool codes, bool metrics);
cudaError_t LaunchQuantizeNvfp4Fused(const ElementParams& p, float* scales, uint8_t* codes,
                                     void* output, DType output_dtype, MetricPartial* partials,
                                     DeviceFlags* flags, int grid, cudaStream_t stream);

// Whether the lean dequantization handles these codes: the same formats less FP6 (E3M2 / E2M3),
// any overflow mode, contiguous packing, and granularities as LeanPathApplies.
bool LeanDequantizeApplies(const ElementParams& p, DType output_dtype);

cudaError_t LaunchDequantizeLean(const ElementParams& p, const uint8_t* codes, const float* scales,
                                 const int32_t* zero_points, void* output, DType output_dtype,
                                 cudaStream_t stream);

}  // namespace quantd::cuda

#endif  // QUANTD_KERNELS_CUDA_LEAN_PATH_H_
