// CUDA errors as absl::Status: QUANTD_CUDA_RETURN_IF_ERROR(expr) returns, from the enclosing
// function, the failure of a CUDA runtime call, naming the statement, file and line.
// Out-of-memory is RESOURCE_EXHAUSTED (the caller may retry later); anything else INTERNAL.
#ifndef QUANTD_KERNELS_CUDA_CUDA_STATUS_H_
#define QUANTD_KERNELS_CUDA_CUDA_STATUS_H_

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace quantd::cuda {

inline absl::Status CudaError(cudaError_t error, const char* statement, const char* file,
                              int line) {
  const std::string message =
      absl::StrCat(statement, " failed at ", file, ":", line, ": ", cudaGetErrorName(error), " (",
                   cudaGetErrorString(error), ")");
  if (error == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

}  // namespace quantd::cuda

#define QUANTD_CUDA_RETURN_IF_ERROR(expr)                                              \
  do {                                                                                 \
    const cudaError_t quantd_cuda_error_ = (expr);                                     \
    if (quantd_cuda_error_ != cudaSuccess) {                                           \
      return ::quantd::cuda::CudaError(quantd_cuda_error_, #expr, __FILE__, __LINE__); \
    }                                                                                  \
  } while (false)

#endif  // QUANTD_KERNELS_CUDA_CUDA_STATUS_H_
