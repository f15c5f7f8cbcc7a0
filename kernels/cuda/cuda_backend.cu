// The CUDA backend. Device discovery is real; the kernels land with the CUDA issue, until then
// CreateCudaBackend says so and the server keeps to the CPU backend.
#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "quantd/cuda.h"

namespace quantd {

bool CudaBackendBuilt() { return true; }

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: clear the sticky error, report none
    return 0;
  }
  return count;
}

std::string CudaDeviceSummary() {
  std::string summary;
  const int count = CudaDeviceCount();
  for (int device = 0; device < count; ++device) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) continue;
    summary += absl::StrFormat("%d: %s, sm_%d%d, %.0f GiB\n", device, prop.name, prop.major,
                               prop.minor, static_cast<double>(prop.totalGlobalMem) / (1 << 30));
  }
  return summary;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions&) {
  if (CudaDeviceCount() == 0) {
    return absl::FailedPreconditionError(
        "--backend=cuda needs a visible CUDA device and none was found (check nvidia-smi and "
        "CUDA_VISIBLE_DEVICES), or use --backend=cpu");
  }
  return absl::UnimplementedError("the CUDA backend's kernels have not landed yet");
}

}  // namespace quantd
