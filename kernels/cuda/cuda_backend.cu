// The CUDA backend: the Backend interface over every visible GPU.
//
// Each call leases one slot (a device and one of its streams; the least-loaded device first),
// takes its device buffers from that device's stream-ordered pool (cudaMallocAsync, capped
// per device), copies the input in, runs the kernels of quantize_kernels.cu, copies the
// results out and synchronizes its own stream only. Running out of device memory, or of the
// cap, is RESOURCE_EXHAUSTED and leaves the device usable for the next call.
#include <cuda_runtime.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cuda_status.h"
#include "kernels.h"
#include "quantd/cuda.h"
#include "quantd/status.h"

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

namespace cuda {
namespace {

// One GPU: its streams, which of them are leased, and its memory accounting.
struct Device {
  int id = 0;
  int max_blocks = 1024;
  int64_t memory_cap = 0;
  std::vector<cudaStream_t> streams;
  std::vector<bool> busy;
  int in_use = 0;
  int64_t bytes_in_use = 0;  // guarded by the backend's mutex
};

class CudaBackend;

// A leased stream; returns it on destruction.
class Lease {
 public:
  Lease(CudaBackend* backend, Device* device, int slot)
      : backend_(backend), device_(device), slot_(slot) {}
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease();

  Device& device() const { return *device_; }
  cudaStream_t stream() const { return device_->streams[slot_]; }

 private:
  CudaBackend* backend_;
  Device* device_;
  int slot_;
};

// Device allocations of one call, freed (stream-ordered) when it ends.
class DeviceArena {
 public:
  DeviceArena(CudaBackend* backend, const Lease& lease) : backend_(backend), lease_(lease) {}
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  ~DeviceArena();

  // `bytes` of device memory, 256-byte aligned; nullptr for 0 bytes.
  [[nodiscard]] absl::StatusOr<void*> Allocate(int64_t bytes);

 private:
  CudaBackend* backend_;
  const Lease& lease_;
  std::vector<void*> blocks_;
  int64_t bytes_ = 0;
};

class CudaBackend final : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<Backend>> Create(const CudaBackendOptions& options) {
    const int count = CudaDeviceCount();
    if (count == 0) {
      return absl::FailedPreconditionError(
          "--backend=cuda needs a visible CUDA device and none was found (check nvidia-smi and "
          "CUDA_VISIBLE_DEVICES), or use --backend=cpu");
    }
    auto backend = std::unique_ptr<CudaBackend>(new CudaBackend());
    const int streams = std::max(1, options.streams_per_device);
    for (int id = 0; id < count; ++id) {
      auto device = std::make_unique<Device>();
      device->id = id;
      QUANTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(id));
      int sms = 0;
      QUANTD_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, id));
      device->max_blocks = std::max(1, sms * 8);  // 8 blocks of 256 threads fill an SM
      size_t free_bytes = 0, total_bytes = 0;
      QUANTD_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
      device->memory_cap = options.device_memory_cap > 0
                               ? options.device_memory_cap
                               : static_cast<int64_t>(static_cast<double>(free_bytes) * 0.9);
      // Keep freed blocks in the pool: the next call of the same size costs no cudaMalloc.
      cudaMemPool_t pool;
      QUANTD_CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&pool, id));
      uint64_t threshold = ~0ull;
      QUANTD_CUDA_RETURN_IF_ERROR(
          cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
      for (int s = 0; s < streams; ++s) {
        cudaStream_t stream;
        QUANTD_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        device->streams.push_back(stream);
        device->busy.push_back(false);
      }
      backend->devices_.push_back(std::move(device));
    }
    backend->fallback_ = CreateReferenceBackend(nullptr);
    return std::unique_ptr<Backend>(std::move(backend));
  }

  ~CudaBackend() override {
    for (auto& device : devices_) {
      cudaSetDevice(device->id);
      for (cudaStream_t stream : device->streams) cudaStreamDestroy(stream);
    }
  }

  absl::string_view name() const override { return "cuda"; }

  absl::Status Quantize(const TensorView& input, const QuantSpec& spec, const QuantizedBuffers& out,
                        ErrorMetrics* metrics) override {
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, LayoutOfFloatInput(input, spec));
    if (out.code_bytes != layout.code_bytes || out.num_scales != layout.geometry.num_scales) {
      return absl::InternalError("Quantize output buffers do not match the layout");
    }
    std::unique_ptr<Lease> lease = Acquire();
    DeviceArena arena(this, *lease);
    cudaStream_t stream = lease->stream();
    QUANTD_ASSIGN_OR_RETURN(Pass pass, Prepare(input, spec, layout, *lease, arena));
    QUANTD_ASSIGN_OR_RETURN(void* codes, arena.Allocate(layout.code_bytes));
    QUANTD_CUDA_RETURN_IF_ERROR(
        LaunchQuantizePass(pass.params, spec, pass.scales_ready, pass.stats, pass.scales,
                           pass.zero_points, static_cast<uint8_t*>(codes), nullptr, DType::kF32,
                           metrics != nullptr ? pass.partials : nullptr, stream));
    QUANTD_RETURN_IF_ERROR(CopyOut(out.codes, codes, layout.code_bytes, stream));
    QUANTD_RETURN_IF_ERROR(
        CopyOut(out.scales, pass.scales, 4 * layout.geometry.num_scales, stream));
    if (spec.asymmetric) {
      QUANTD_RETURN_IF_ERROR(
          CopyOut(out.zero_points, pass.zero_points, 4 * layout.geometry.num_scales, stream));
    }
    return Finish(spec, pass, metrics, stream);
  }

  absl::Status Dequantize(const ConstQuantizedBuffers& in, const QuantSpec& spec,
                          const MutableTensorView& out) override {
    if (!IsFloatInput(out.dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat("dequantize writes F32, F16 or BF16, not ", DTypeName(out.dtype)));
    }
    QUANTD_RETURN_IF_ERROR(CheckByteLength(out.dtype, out.shape, out.bytes));
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, ComputeLayout(spec, out.shape));
    const int64_t n = layout.geometry.num_scales;
    if (in.code_bytes != layout.code_bytes || in.num_scales != n ||
        (spec.asymmetric && n > 0 && in.zero_points == nullptr)) {
      return absl::InvalidArgumentError("quantized tensor does not match its spec");
    }
    std::unique_ptr<Lease> lease = Acquire();
    DeviceArena arena(this, *lease);
    cudaStream_t stream = lease->stream();
    QUANTD_ASSIGN_OR_RETURN(void* codes, arena.Allocate(layout.code_bytes));
    QUANTD_ASSIGN_OR_RETURN(void* scales, arena.Allocate(4 * n));
    QUANTD_ASSIGN_OR_RETURN(void* zero_points, arena.Allocate(spec.asymmetric ? 4 * n : 0));
    QUANTD_ASSIGN_OR_RETURN(void* output, arena.Allocate(out.bytes));
    QUANTD_RETURN_IF_ERROR(CopyIn(codes, in.codes, layout.code_bytes, stream));
    QUANTD_RETURN_IF_ERROR(CopyIn(scales, in.scales, 4 * n, stream));
    if (spec.asymmetric) QUANTD_RETURN_IF_ERROR(CopyIn(zero_points, in.zero_points, 4 * n, stream));
    const ElementParams params =
        MakeElementParams(spec, layout, nullptr, DType::kF32, lease->device().max_blocks);
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchDequantize(
        params, static_cast<const uint8_t*>(codes), static_cast<const float*>(scales),
        spec.asymmetric ? static_cast<const int32_t*>(zero_points) : nullptr, output, out.dtype,
        stream));
    QUANTD_RETURN_IF_ERROR(CopyOut(out.data, output, out.bytes, stream));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return absl::OkStatus();
  }

  absl::Status QuantDequant(const TensorView& input, const QuantSpec& spec,
                            const MutableTensorView& out, ErrorMetrics* metrics) override {
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, LayoutOfFloatInput(input, spec));
    if (!IsFloatInput(out.dtype) || out.shape != input.shape) {
      return absl::InvalidArgumentError(
          "fake quantization writes F32, F16 or BF16 shaped like the input");
    }
    QUANTD_RETURN_IF_ERROR(CheckByteLength(out.dtype, out.shape, out.bytes));
    std::unique_ptr<Lease> lease = Acquire();
    DeviceArena arena(this, *lease);
    cudaStream_t stream = lease->stream();
    QUANTD_ASSIGN_OR_RETURN(Pass pass, Prepare(input, spec, layout, *lease, arena));
    QUANTD_ASSIGN_OR_RETURN(void* output, arena.Allocate(out.bytes));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchQuantizePass(
        pass.params, spec, pass.scales_ready, pass.stats, pass.scales, pass.zero_points, nullptr,
        output, out.dtype, metrics != nullptr ? pass.partials : nullptr, stream));
    QUANTD_RETURN_IF_ERROR(CopyOut(out.data, output, out.bytes, stream));
    return Finish(spec, pass, metrics, stream);
  }

  absl::Status Calibrate(const TensorView& input, const QuantSpec& spec,
                         const CalibrationOptions& options, CalibrationResult* result) override {
    const CalibrationMethod method = options.method == CalibrationMethod::kUnspecified
                                         ? CalibrationMethod::kAmax
                                         : options.method;
    if (method != CalibrationMethod::kAmax) {
      // Percentile and MSE search run on the CPU backend until their kernels land: the same
      // result, computed where it is defined.
      return fallback_->Calibrate(input, spec, options, result);
    }
    QUANTD_RETURN_IF_ERROR(CheckCalibration(spec, options));
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, LayoutOfFloatInput(input, spec));
    std::unique_ptr<Lease> lease = Acquire();
    DeviceArena arena(this, *lease);
    cudaStream_t stream = lease->stream();
    QUANTD_ASSIGN_OR_RETURN(Pass pass, Prepare(input, spec, layout, *lease, arena));
    // Statistics as their own pass: the amax of each group is part of the answer.
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchGroupStats(pass.params, pass.stats, stream));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchScales(
        MakeScaleRule(Traits(spec.format), spec.asymmetric), spec.clip_ratio, pass.stats,
        layout.geometry.num_scales, pass.scales, pass.zero_points, stream));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchQuantize(pass.params, pass.scales, pass.zero_points, nullptr,
                                               nullptr, DType::kF32, pass.partials,
                                               pass.stats.flags, stream));
    const int64_t n = layout.geometry.num_scales;
    result->scales.resize(n);
    result->zero_points.assign(spec.asymmetric ? n : 0, 0);
    std::vector<int32_t> min_keys(n), max_keys(n);
    QUANTD_RETURN_IF_ERROR(CopyOut(result->scales.data(), pass.scales, 4 * n, stream));
    if (spec.asymmetric) {
      QUANTD_RETURN_IF_ERROR(CopyOut(result->zero_points.data(), pass.zero_points, 4 * n, stream));
    }
    QUANTD_RETURN_IF_ERROR(CopyOut(min_keys.data(), pass.stats.min_keys, 4 * n, stream));
    QUANTD_RETURN_IF_ERROR(CopyOut(max_keys.data(), pass.stats.max_keys, 4 * n, stream));
    QUANTD_RETURN_IF_ERROR(Finish(spec, pass, &result->metrics, stream));
    result->amax.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      const float lo = KeyFloat(min_keys[i]), hi = KeyFloat(max_keys[i]);
      result->amax[i] = lo <= hi ? std::max(hi, -lo) : 0.0f;
    }
    result->clip_ratios.assign(n, spec.clip_ratio);
    return absl::OkStatus();
  }

 private:
  friend class Lease;
  friend class DeviceArena;

  CudaBackend() = default;

  // Device state of one quantization after its scales exist.
  struct Pass {
    ElementParams params;
    StatsBuffers stats;
    MetricPartial* partials = nullptr;
    float* scales = nullptr;
    int32_t* zero_points = nullptr;
    bool scales_ready = false;  // static scales, or 1 for a plain cast, already in place
    MetricPartial total;        // host copy of partials[kMaxMetricBlocks]
    DeviceFlags flags;          // host copy of stats.flags
  };

  // Copies the input in, initializes the statistics and puts static scales (or 1 for a plain
  // cast) in place; dynamic scales are the quantization pass's own first step.
  absl::StatusOr<Pass> Prepare(const TensorView& input, const QuantSpec& spec,
                               const QuantLayout& layout, const Lease& lease, DeviceArena& arena) {
    cudaStream_t stream = lease.stream();
    const int64_t n = layout.geometry.num_scales;
    Pass pass;
    QUANTD_ASSIGN_OR_RETURN(void* d_input, arena.Allocate(input.bytes));
    QUANTD_ASSIGN_OR_RETURN(void* workspace, arena.Allocate(WorkspaceBytes(layout)));
    QUANTD_ASSIGN_OR_RETURN(void* scales, arena.Allocate(4 * n));
    QUANTD_ASSIGN_OR_RETURN(void* zero_points, arena.Allocate(spec.asymmetric ? 4 * n : 0));
    SplitWorkspace(workspace, layout, &pass.stats, &pass.partials);
    pass.scales = static_cast<float*>(scales);
    pass.zero_points = spec.asymmetric ? static_cast<int32_t*>(zero_points) : nullptr;
    pass.params = MakeElementParams(spec, layout, d_input, input.dtype, lease.device().max_blocks);
    QUANTD_RETURN_IF_ERROR(CopyIn(d_input, input.data, input.bytes, stream));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchInitStats(pass.stats, n, stream));
    if (spec.granularity == Granularity::kNone) {
      // A copy from pageable memory has consumed its source when cudaMemcpyAsync returns.
      const float one = 1.0f;
      QUANTD_RETURN_IF_ERROR(CopyIn(pass.scales, &one, 4, stream));
    } else if (spec.has_static_scales()) {
      QUANTD_RETURN_IF_ERROR(CopyIn(pass.scales, spec.static_scales.data(), 4 * n, stream));
      if (spec.asymmetric) {
        QUANTD_RETURN_IF_ERROR(
            CopyIn(pass.zero_points, spec.static_zero_points.data(), 4 * n, stream));
      }
    }
    pass.scales_ready = spec.granularity == Granularity::kNone || spec.has_static_scales();
    return pass;
  }

  // Copies the flags (and metrics) back, waits for the stream, turns flags into statuses.
  absl::Status Finish(const QuantSpec& spec, Pass& pass, ErrorMetrics* metrics,
                      cudaStream_t stream) {
    QUANTD_RETURN_IF_ERROR(CopyOut(&pass.flags, pass.stats.flags, sizeof(DeviceFlags), stream));
    if (metrics != nullptr) {
      QUANTD_RETURN_IF_ERROR(
          CopyOut(&pass.total, pass.partials + kMaxMetricBlocks, sizeof(MetricPartial), stream));
    }
    QUANTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    if (pass.flags.first_nan != kNoNan) {
      return NanRejectedError(spec.format, static_cast<int64_t>(pass.flags.first_nan));
    }
    if (pass.flags.bad_scale_group != kNoBadGroup) {
      return RangeOverflowError(pass.flags.bad_scale_group);
    }
    if (metrics != nullptr) *metrics = MetricsFromPartial(pass.total);
    return absl::OkStatus();
  }

  static absl::Status CopyIn(void* device, const void* host, int64_t bytes, cudaStream_t stream) {
    if (bytes == 0) return absl::OkStatus();
    QUANTD_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream));
    return absl::OkStatus();
  }

  static absl::Status CopyOut(void* host, const void* device, int64_t bytes, cudaStream_t stream) {
    if (bytes == 0) return absl::OkStatus();
    QUANTD_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream));
    return absl::OkStatus();
  }

  // The least-loaded device's first free stream; waits while every stream is busy.
  std::unique_ptr<Lease> Acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      Device* best = nullptr;
      for (auto& device : devices_) {
        if (device->in_use < static_cast<int>(device->streams.size()) &&
            (best == nullptr || device->in_use < best->in_use)) {
          best = device.get();
        }
      }
      if (best != nullptr) {
        const int slot = static_cast<int>(std::find(best->busy.begin(), best->busy.end(), false) -
                                          best->busy.begin());
        best->busy[slot] = true;
        ++best->in_use;
        cudaSetDevice(best->id);
        return std::make_unique<Lease>(this, best, slot);
      }
      slot_freed_.wait(lock);
    }
  }

  void Release(Device* device, int slot) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      device->busy[slot] = false;
      --device->in_use;
    }
    slot_freed_.notify_one();
  }

  absl::Status Reserve(Device& device, int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (device.bytes_in_use + bytes > device.memory_cap) {
      return absl::ResourceExhaustedError(
          absl::StrCat("GPU ", device.id, " would need ", device.bytes_in_use + bytes,
                       " bytes of device memory, above its cap of ", device.memory_cap,
                       "; retry later or send a smaller tensor"));
    }
    device.bytes_in_use += bytes;
    return absl::OkStatus();
  }

  void Unreserve(Device& device, int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    device.bytes_in_use -= bytes;
  }

  std::vector<std::unique_ptr<Device>> devices_;
  std::unique_ptr<Backend> fallback_;  // the CPU backend, for what has no kernel yet
  std::mutex mu_;
  std::condition_variable slot_freed_;
};

Lease::~Lease() { backend_->Release(device_, slot_); }

absl::StatusOr<void*> DeviceArena::Allocate(int64_t bytes) {
  if (bytes == 0) return nullptr;
  QUANTD_RETURN_IF_ERROR(backend_->Reserve(lease_.device(), bytes));
  void* block = nullptr;
  const cudaError_t error = cudaMallocAsync(&block, static_cast<size_t>(bytes), lease_.stream());
  if (error != cudaSuccess) {
    (void)cudaGetLastError();  // an allocation failure is not sticky: clear it, keep serving
    backend_->Unreserve(lease_.device(), bytes);
    return CudaError(error, "cudaMallocAsync", __FILE__, __LINE__);
  }
  blocks_.push_back(block);
  bytes_ += bytes;
  return block;
}

DeviceArena::~DeviceArena() {
  // Stream-ordered frees: after whatever the stream still runs. Every call synchronizes its
  // stream before returning, except on an error path, where the frees wait for the kernels.
  for (void* block : blocks_) cudaFreeAsync(block, lease_.stream());
  if (bytes_ > 0) backend_->Unreserve(lease_.device(), bytes_);
}

}  // namespace
}  // namespace cuda

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options) {
  return cuda::CudaBackend::Create(options);
}

}  // namespace quantd
