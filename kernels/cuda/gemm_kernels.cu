// The small kernels around the GEMM's product (gemm_path.h): the epilogue that turns sums into
// the output, scale repacking for cuBLASLt's block modes, fp32 conversion and the metrics'
// comparison. All are memory-bound element passes; the epilogue reads four sums per thread
// where a row allows it.
#include <cuda_runtime.h>

#include <cstdint>

#include "device_common.cuh"
#include "gemm_path.h"

namespace quantd::cuda {
namespace {

// One output element from its sum, as GemmEpilogue states the order of the fp32 steps (the
// library builds without FMA contraction, so each step rounds).
__device__ __forceinline__ float EpilogueValue(const GemmEpilogue& e, float sum, int64_t row,
                                               int64_t col) {
  float v = sum;
  if (e.row_scales != nullptr) v = v * e.row_scales[row * e.row_stride];
  if (e.col_scales != nullptr) {
    v = v * e.col_scales[(row / e.m) * e.col_batch_stride + col * e.col_stride];
  }
  v = e.alpha * v;
  if (e.c != nullptr) {
    const int64_t c_row = e.c_batched ? row : row % e.m;
    v = v + e.beta * LoadAsFloat(e.c_dtype, e.c, c_row * e.n + col);
  }
  if (e.bias != nullptr) v = v + LoadAsFloat(e.bias_dtype, e.bias, col);
  return v;
}

// kVector consecutive elements of one row per thread (kVector divides n).
template <int kVector, bool kInt32>
__global__ void __launch_bounds__(kThreads) GemmEpilogueKernel(GemmEpilogue e) {
  const int64_t units = e.rows * e.n / kVector;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < units;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t first = u * kVector;
    const int64_t row = first / e.n, col = first % e.n;
    float sums[kVector];
    if constexpr (kVector == 4) {
      if constexpr (kInt32) {
        const int4 s = static_cast<const int4*>(e.acc)[u];
        sums[0] = static_cast<float>(s.x);
        sums[1] = static_cast<float>(s.y);
        sums[2] = static_cast<float>(s.z);
        sums[3] = static_cast<float>(s.w);
      } else {
        const float4 s = static_cast<const float4*>(e.acc)[u];
        sums[0] = s.x;
        sums[1] = s.y;
        sums[2] = s.z;
        sums[3] = s.w;
      }
    } else {
      sums[0] = kInt32 ? static_cast<float>(static_cast<const int32_t*>(e.acc)[u])
                       : static_cast<const float*>(e.acc)[u];
    }
#pragma unroll
    for (int j = 0; j < kVector; ++j) {
      StoreFromFloat(e.out_dtype, e.out, first + j, EpilogueValue(e, sums[j], row, col + j));
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    ConvertKernel(const void* src, DType src_dtype, int64_t n, void* dst, DType dst_dtype) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    StoreFromFloat(dst_dtype, dst, i, LoadAsFloat(src_dtype, src, i));
  }
}

__global__ void __launch_bounds__(kThreads)
    BroadcastScaleKernel(const float* scalar, int64_t n, float* dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = *scalar;
  }
}

__global__ void __launch_bounds__(kThreads)
    RepackScalesKernel(const float* src, int64_t rows, int64_t cols, float* dst,
                       int64_t dst_row_stride, int64_t dst_col_stride) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows * cols;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    dst[c * dst_col_stride + r * dst_row_stride] = src[i];
  }
}

__global__ void __launch_bounds__(kThreads)
    CompareMetricsKernel(const float* exact, const void* out, DType out_dtype, int64_t n,
                         MetricPartial* partials) {
  MetricAccumulator acc;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc.Add(exact[i], LoadAsFloat(out_dtype, out, i));
  }
  WriteBlockPartial(acc.sums, partials);
}

}  // namespace

cudaError_t LaunchGemmEpilogue(const GemmEpilogue& e, cudaStream_t stream) {
  if (e.rows == 0 || e.n == 0) return cudaSuccess;
  const bool vector = e.n % 4 == 0;
  const int grid = GridFor(e.rows * e.n / (vector ? 4 : 1), e.max_blocks);
  if (vector) {
    e.acc_int32 ? GemmEpilogueKernel<4, true><<<grid, kThreads, 0, stream>>>(e)
                : GemmEpilogueKernel<4, false><<<grid, kThreads, 0, stream>>>(e);
  } else {
    e.acc_int32 ? GemmEpilogueKernel<1, true><<<grid, kThreads, 0, stream>>>(e)
                : GemmEpilogueKernel<1, false><<<grid, kThreads, 0, stream>>>(e);
  }
  return cudaGetLastError();
}

cudaError_t LaunchConvert(const void* src, DType src_dtype, int64_t n, void* dst, DType dst_dtype,
                          int max_blocks, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ConvertKernel<<<GridFor(n, max_blocks), kThreads, 0, stream>>>(src, src_dtype, n, dst, dst_dtype);
  return cudaGetLastError();
}

cudaError_t LaunchBroadcastScale(const float* scalar, int64_t n, float* dst, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  BroadcastScaleKernel<<<GridFor(n, 1024), kThreads, 0, stream>>>(scalar, n, dst);
  return cudaGetLastError();
}

__global__ void Nvfp4ElementScalesKernel(const float* __restrict__ block_scales, int64_t n,
                                         const float* __restrict__ global_scale,
                                         float* __restrict__ element_scales) {
  const float s_enc = *global_scale;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    element_scales[i] = Nvfp4ElementScale(block_scales[i], s_enc);
  }
}

cudaError_t LaunchNvfp4ElementScales(const float* block_scales, int64_t n,
                                     const float* global_scale, float* element_scales,
                                     int max_blocks, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  Nvfp4ElementScalesKernel<<<GridFor(n, max_blocks), kThreads, 0, stream>>>(
      block_scales, n, global_scale, element_scales);
  return cudaGetLastError();
}

cudaError_t LaunchRepackScales(const float* src, int64_t rows, int64_t cols, float* dst,
                               int64_t dst_row_stride, int64_t dst_col_stride,
                               cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  RepackScalesKernel<<<GridFor(rows * cols, 1024), kThreads, 0, stream>>>(
      src, rows, cols, dst, dst_row_stride, dst_col_stride);
  return cudaGetLastError();
}

cudaError_t LaunchCompareMetrics(const float* exact, const void* out, DType out_dtype, int64_t n,
                                 MetricPartial* partials, int max_blocks, cudaStream_t stream) {
  const int grid = GridFor(n, max_blocks < kMaxMetricBlocks ? max_blocks : kMaxMetricBlocks);
  CompareMetricsKernel<<<grid, kThreads, 0, stream>>>(exact, out, out_dtype, n, partials);
  if (cudaError_t error = cudaGetLastError(); error != cudaSuccess) return error;
  return LaunchFinalizeMetrics(partials, grid, stream);
}

}  // namespace quantd::cuda
