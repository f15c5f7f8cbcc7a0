// The CUDA backend in a build without nvcc: it reports itself absent.
#include "absl/status/status.h"
#include "quantd/cuda.h"

namespace quantd {

bool CudaBackendBuilt() { return false; }
int CudaDeviceCount() { return 0; }
std::string CudaDeviceSummary() { return ""; }

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions&) {
  return absl::FailedPreconditionError(
      "this quantd was built without CUDA (QUANTD_ENABLE_CUDA=OFF or no nvcc); rebuild on a "
      "machine with the CUDA toolkit to use --backend=cuda");
}

}  // namespace quantd
