// The CUDA backend's entry points, present in every build: without nvcc they report that the
// backend was not built, so callers handle "no GPU" and "no CUDA build" the same way.
//
//   if (CudaDeviceCount() > 0) { QUANTD_ASSIGN_OR_RETURN(backend, CreateCudaBackend(...)); }
#ifndef QUANTD_CUDA_H_
#define QUANTD_CUDA_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "quantd/backend.h"

namespace quantd {

// True when this binary contains the CUDA backend.
bool CudaBackendBuilt();

// Visible CUDA devices; 0 when there is no driver, no device, or no CUDA build.
int CudaDeviceCount();

// One line per visible device ("0: NVIDIA H200, sm_90, 139 GiB"), empty without devices.
std::string CudaDeviceSummary();

struct CudaBackendOptions {
  // Requests computed at once per GPU, each on its own stream.
  int streams_per_device = 4;
  // Device memory the backend may hold per GPU; 0: 90% of what is free when it starts.
  int64_t device_memory_cap = 0;
  // Tensors of at most this many elements are computed on the host by the CPU backend (the
  // oracle, so the bits are the same), on the calling thread: below a few thousand elements a
  // GPU round trip (~35 µs of copies, launches and a synchronization on the H200) costs more
  // than the arithmetic (~15 ns per element on one core). 0: everything on the GPU.
  int64_t host_max_elements = 0;
  // Calibrate's MSE clip search runs on the GPU from this many (scale group, clip ratio) pairs
  // on: each pair is one GPU thread summing its group in order (the order the CPU sums in, so
  // that both choose the same ratio), and below ~16 K such threads the CPU's cores are faster.
  int64_t mse_search_min_pairs = 16384;
  // A streamed tensor of at least this many bytes moves to the GPU while it arrives
  // (Backend::BeginUpload), so that only the kernels and the copy back remain once the last
  // byte is in; smaller ones are copied in with the call. 0: never.
  int64_t upload_min_bytes = int64_t{16} << 20;
  // GEMM: the first product of each shape times cuBLASLt's best few algorithms on its own
  // operands and keeps the fastest (else the heuristic's first is used); with a path, the
  // choices are kept in that file (one per device: PATH.<PCI bus>) and read back at start.
  bool gemm_autotune = true;
  std::string gemm_algorithm_cache;
};

// The CUDA backend over every visible device. FailedPrecondition without a device or a CUDA
// build.
[[nodiscard]] absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    const CudaBackendOptions& options);

}  // namespace quantd

#endif  // QUANTD_CUDA_H_
