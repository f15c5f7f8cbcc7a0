// Internal to the CUDA backend: the vectorized element passes of element_fast.cu, taken when a
// tensor's rows are a multiple of 8 elements long (VectorPathApplies); the generic kernels of
// quantize_kernels.cu handle every other shape. Same arguments and results as their generic
// counterparts in kernels.h.
#ifndef QUANTD_KERNELS_CUDA_FAST_PATH_H_
#define QUANTD_KERNELS_CUDA_FAST_PATH_H_

#include <cuda_runtime.h>

#include "kernels.h"

namespace quantd::cuda {

bool VectorPathApplies(const ElementParams& p);

// Blocks a vectorized element launch uses (its number of metric partials).
int VectorGrid(const ElementParams& p);

cudaError_t LaunchQuantizeVector(const ElementParams& p, const float* scales,
                                 const int32_t* zero_points, uint8_t* codes, void* output,
                                 DType output_dtype, MetricPartial* partials, DeviceFlags* flags,
                                 int grid, cudaStream_t stream);

cudaError_t LaunchDequantizeVector(const ElementParams& p, const uint8_t* codes,
                                   const float* scales, const int32_t* zero_points, void* output,
                                   DType output_dtype, cudaStream_t stream);

// Dynamic per-token quantization in one pass (statistics, scales and the element pass), for
// rows of at most 8192 elements, a multiple of 8. Writes scales (and zero-points), then codes
// or output as LaunchQuantize does; `flags` must be initialized (LaunchInitStats).
bool TokenFusedApplies(const ElementParams& p);
int TokenFusedGrid(const ElementParams& p);
cudaError_t LaunchQuantizeTokenFused(const ElementParams& p, const ScaleRule& rule, float clip,
                                     float* scales, int32_t* zero_points, uint8_t* codes,
                                     void* output, DType output_dtype, MetricPartial* partials,
                                     DeviceFlags* flags, int grid, cudaStream_t stream);

// Statistics of the row-based granularities (token, channel on a leading axis, group, block).
cudaError_t LaunchRowStatsVector(const ElementParams& p, const StatsBuffers& stats,
                                 cudaStream_t stream);

// Statistics of granularity tensor: one range for the whole input.
cudaError_t LaunchTensorStatsVector(const ElementParams& p, const StatsBuffers& stats,
                                    cudaStream_t stream);

}  // namespace quantd::cuda

#endif  // QUANTD_KERNELS_CUDA_FAST_PATH_H_
