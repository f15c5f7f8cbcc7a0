// The CUDA backend: the Backend interface over every visible GPU.
//
// Each call leases one slot (a device and one of its streams; the least-loaded device first),
// takes its device buffers from that device's stream-ordered pool (cudaMallocAsync, capped
// per device), copies the input in, runs the kernels of quantize_kernels.cu, copies the
// results out and synchronizes its own stream only. Running out of device memory, or of the
// cap, is RESOURCE_EXHAUSTED and leaves the device usable for the next call.
// Tensors of at most CudaBackendOptions::host_max_elements elements are computed by the CPU
// backend on the calling thread instead (same bits, less latency than a GPU round trip).
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cuda_status.h"
#include "gemm_path.h"
#include "kernels.h"
#include "quantd/cuda.h"
#include "quantd/flatquant.h"
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

// How a call's bytes cross PCIe. Measured on the H200 (quantd_copy_bench, PERF_NOTES v8):
// cudaMemcpyAsync from pageable memory moves 10-18 GB/s, from page-locked memory 55 GB/s, a
// host memcpy into page-locked memory ~10 GB/s (one thread), and locking the buffer in place
// (cudaHostRegister + copy + cudaHostUnregister) 16-17 GB/s end to end from 16 MiB up.
//  - Small copies go through the slot's page-locked staging buffer: a host memcpy, then an
//    asynchronous DMA; outputs land there and are copied out once the stream is synchronized.
//    A small call thus queues all of its work without blocking and synchronizes once.
//  - Large ones lock the host buffer's whole pages in place, in chunks, so the next chunk is
//    locked while the previous one moves; the pages are unlocked after the synchronization.
//    Where locking fails (a page already locked by a neighbouring buffer, read-only memory),
//    that chunk is copied from pageable memory instead.
//  - Whatever is left (staging full, a mid-sized copy) is a pageable cudaMemcpyAsync.
inline constexpr int64_t kStagingBytes = int64_t{4} << 20;
inline constexpr int64_t kLockMinBytes = int64_t{16} << 20;
inline constexpr int64_t kLockChunkBytes = int64_t{64} << 20;

// One stream of a device's pool, its page-locked staging buffer, and the events that time the
// phases of the call holding it.
struct Slot {
  cudaStream_t stream = nullptr;
  char* staging = nullptr;  // kStagingBytes, page-locked
  // begin, inputs copied in, kernels done, outputs copied out
  std::array<cudaEvent_t, 4> marks{};
  bool busy = false;
};

// One GPU: its stream pool, its memory accounting and its telemetry. Everything mutable is
// guarded by the backend's mutex.
struct Device {
  int id = 0;
  std::string name;
  int max_blocks = 1024;
  int64_t memory_cap = 0;
  cudaMemPool_t pool = nullptr;
  std::vector<Slot> slots;
  int in_use = 0;
  int64_t bytes_in_use = 0;
  DeviceTelemetry totals;  // the counters; gauges are filled in by Telemetry()
  // Page-locked kStagingBytes buffers of finished uploads, kept for the next ones: allocating
  // page-locked memory is slow and freeing it synchronizes the device.
  std::vector<char*> spare_staging;
  // cuBLASLt for the GEMM (CudaBackend::EngineOf creates it on first use).
  std::unique_ptr<LtEngine> lt;
};

class CudaBackend;

// A leased stream: the call's copies and phase marks go through it; returns the stream to the
// pool on destruction.
class Lease {
 public:
  Lease(CudaBackend* backend, Device* device, int slot);
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease();

  Device& device() const { return *device_; }
  cudaStream_t stream() const { return slot().stream; }

  [[nodiscard]] absl::Status CopyIn(void* device, const void* host, int64_t bytes);
  [[nodiscard]] absl::Status CopyOut(void* host, const void* device, int64_t bytes);
  // Phase marks: after the last input copy, and after the last kernel.
  [[nodiscard]] absl::Status MarkCopiedIn() { return Mark(1); }
  [[nodiscard]] absl::Status MarkComputed() { return Mark(2); }
  // Waits for the stream and completes the copies out (CopyOut's destinations hold their
  // bytes only after this); the call's copy and kernel times then count in the telemetry.
  [[nodiscard]] absl::Status Synchronize();

 private:
  // A staged output: `bytes` at `staged` go to `host` after the synchronization.
  struct StagedOut {
    void* host;
    const char* staged;
    int64_t bytes;
  };

  Slot& slot() const { return device_->slots[slot_]; }
  [[nodiscard]] absl::Status Mark(int phase);
  // `bytes` of the staging buffer, 256-byte aligned; nullptr when it is full.
  char* Stage(int64_t bytes);
  // One direction of a copy (to the device when `to_device`), by the strategy above.
  [[nodiscard]] absl::Status Copy(void* device, void* host, int64_t bytes, bool to_device);
  // The page-locked part of a large copy: pages [locked, locked + bytes) of `host`.
  [[nodiscard]] absl::Status CopyLocked(char* device, char* host, int64_t bytes, bool to_device);
  // After the stream is idle: unlocks what was locked, forgets staged outputs.
  void Reset();

  CudaBackend* backend_;
  Device* device_;
  int slot_;
  int64_t host_to_device_bytes_ = 0;
  int64_t device_to_host_bytes_ = 0;
  int64_t staging_used_ = 0;
  std::vector<StagedOut> staged_out_;
  std::vector<void*> locked_;
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

// A large tensor moving to one device while it arrives (Backend::BeginUpload). The receiving
// thread only hands its pieces over (moved, not copied) and goes back to receiving: the
// transport is what limits a stream, and a copy on its thread slowed one by ~10% (PERF_NOTES
// v8f). The upload's own thread gathers the pieces in page-locked staging buffers and copies
// each full one to the device on the upload's own stream (not a slot's: a slow client must not
// hold a compute stream). The call that computes the tensor waits for the last copy on its
// stream and reads the device copy; the pieces themselves are freed as soon as they are staged.
class CudaUpload final : public TensorUpload {
 public:
  CudaUpload(CudaBackend* backend, Device* device, int64_t bytes)
      : backend_(backend), device_(device), bytes_(bytes) {}
  CudaUpload(const CudaUpload&) = delete;
  CudaUpload& operator=(const CudaUpload&) = delete;
  ~CudaUpload() override;

  // Creates the stream, the events, the device buffer (counted against the cap), takes the
  // staging buffers and starts the thread.
  [[nodiscard]] absl::Status Start();
  [[nodiscard]] absl::Status Append(std::string piece) override;
  int64_t received() const override { return received_.load(); }

  Device* device() const { return device_; }
  bool BelongsTo(const CudaBackend* backend) const { return backend == backend_; }
  int64_t bytes() const { return bytes_; }
  const void* data() const { return device_data_; }
  // Waits until every copy is queued, then orders `stream` after them; the device buffer is
  // later freed in `stream`'s order, after the work the computing call queued there. The
  // upload's error, if its thread met one.
  [[nodiscard]] absl::Status ConsumeOn(cudaStream_t stream) const;

 private:
  static constexpr int kBuffers = 2;
  struct Buffer {
    char* host = nullptr;  // kStagingBytes, page-locked
    int64_t used = 0;
    bool in_flight = false;
    cudaEvent_t started = nullptr, copied = nullptr;
  };
  // The upload's thread: stages and sends the pieces in order until the last byte is queued,
  // then publishes the outcome.
  void Run();
  [[nodiscard]] absl::Status StageAll();
  [[nodiscard]] absl::Status Stage(const std::string& piece);
  // Waits for buffer b's copy, if any, and counts its time.
  [[nodiscard]] absl::Status Reclaim(Buffer& b);
  [[nodiscard]] absl::Status Send(Buffer& b);

  CudaBackend* const backend_;
  Device* const device_;
  const int64_t bytes_;
  std::atomic<int64_t> received_{0};
  cudaStream_t stream_ = nullptr;
  char* device_data_ = nullptr;
  bool reserved_ = false;
  cudaEvent_t done_ = nullptr;  // after the last copy

  mutable std::mutex mu_;
  mutable std::condition_variable changed_;
  std::deque<std::string> pieces_;  // handed over, not staged yet
  bool stopping_ = false;
  bool queued_all_ = false;  // every byte's copy is queued and done_ recorded
  absl::Status status_;      // the thread's first error
  std::thread thread_;
  mutable cudaStream_t consumer_ = nullptr;

  // The thread's own.
  std::array<Buffer, kBuffers> buffers_;
  int current_ = 0;
  int64_t staged_ = 0;
  int64_t sent_ = 0;
  double copy_ms_ = 0.0;
};

// A weight kept on one device for later products (Backend::StoreWeight): its codes, the
// scales x̂ = s · decode(q) uses (d_b for NVFP4, the double-dequantized absmax for NF4 with
// double quantization: what Dequantize takes), its zero-points when asymmetric and, when kept,
// its values in fp32; an unquantized weight is its fp32 values only. Its memory is reserved
// against the device's cap until it is destroyed.
class CudaStoredWeight final : public StoredWeight {
 public:
  CudaStoredWeight(CudaBackend* backend, Device* device, DType dtype, const Shape& shape,
                   const QuantSpec& spec, bool keeps_original, const QuantLayout& layout)
      : StoredWeight(dtype, shape, spec, keeps_original),
        device_(device),
        layout_(layout),
        backend_(backend) {}
  ~CudaStoredWeight() override;

  int64_t bytes() const override { return bytes_; }
  Device* device() const { return device_; }
  const QuantLayout& layout() const { return layout_; }  // quantized weights only

  // `bytes` of device memory held until destruction, allocated in `stream`'s order.
  [[nodiscard]] absl::StatusOr<void*> Allocate(int64_t bytes, cudaStream_t stream);

  uint8_t* codes = nullptr;
  float* scales = nullptr;
  int32_t* zero_points = nullptr;
  float* original = nullptr;

 private:
  Device* device_;
  QuantLayout layout_;
  CudaBackend* backend_;
  std::vector<void*> blocks_;
  int64_t bytes_ = 0;
  cudaStream_t stream_ = nullptr;  // the blocks' (a slot's: slots live as long as the backend)
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
      cudaDeviceProp prop;
      QUANTD_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, id));
      device->name = prop.name;
      size_t free_bytes = 0, total_bytes = 0;
      QUANTD_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
      device->memory_cap = options.device_memory_cap > 0
                               ? options.device_memory_cap
                               : static_cast<int64_t>(static_cast<double>(free_bytes) * 0.9);
      // Keep freed blocks in the pool: the next call of the same size costs no cudaMalloc.
      QUANTD_CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&device->pool, id));
      uint64_t threshold = ~0ull;
      QUANTD_CUDA_RETURN_IF_ERROR(
          cudaMemPoolSetAttribute(device->pool, cudaMemPoolAttrReleaseThreshold, &threshold));
      device->slots.resize(streams);
      for (Slot& slot : device->slots) {
        QUANTD_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&slot.stream, cudaStreamNonBlocking));
        for (cudaEvent_t& mark : slot.marks) QUANTD_CUDA_RETURN_IF_ERROR(cudaEventCreate(&mark));
        QUANTD_CUDA_RETURN_IF_ERROR(cudaMallocHost(&slot.staging, kStagingBytes));
      }
      device->totals.device = id;
      device->totals.name = device->name;
      device->totals.streams = streams;
      device->totals.memory_cap_bytes = device->memory_cap;
      backend->devices_.push_back(std::move(device));
    }
    backend->host_ = CreateReferenceBackend(nullptr);
    backend->host_max_elements_ = std::max<int64_t>(0, options.host_max_elements);
    backend->mse_search_min_pairs_ = std::max<int64_t>(0, options.mse_search_min_pairs);
    backend->upload_min_bytes_ = std::max<int64_t>(0, options.upload_min_bytes);
    backend->gemm_autotune_ = options.gemm_autotune;
    backend->gemm_algorithm_cache_ = options.gemm_algorithm_cache;
    return std::unique_ptr<Backend>(std::move(backend));
  }

  ~CudaBackend() override {
    for (auto& device : devices_) {
      cudaSetDevice(device->id);
      for (Slot& slot : device->slots) {
        if (slot.stream != nullptr) cudaStreamDestroy(slot.stream);
        if (slot.staging != nullptr) cudaFreeHost(slot.staging);
        for (cudaEvent_t mark : slot.marks) {
          if (mark != nullptr) cudaEventDestroy(mark);
        }
      }
      for (char* buffer : device->spare_staging) cudaFreeHost(buffer);
    }
  }

  absl::string_view name() const override { return "cuda"; }

  std::vector<DeviceTelemetry> Telemetry() const override {
    std::vector<DeviceTelemetry> telemetry;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& device : devices_) {
        DeviceTelemetry entry = device->totals;
        entry.streams_busy = device->in_use;
        entry.memory_in_use_bytes = device->bytes_in_use;
        telemetry.push_back(std::move(entry));
      }
    }
    // The pool's size comes from the driver, outside the lock the calls in flight take.
    for (size_t i = 0; i < telemetry.size(); ++i) {
      uint64_t reserved = 0;
      if (cudaMemPoolGetAttribute(devices_[i]->pool, cudaMemPoolAttrReservedMemCurrent,
                                  &reserved) == cudaSuccess) {
        telemetry[i].memory_pool_bytes = static_cast<int64_t>(reserved);
      }
    }
    return telemetry;
  }

  absl::StatusOr<std::unique_ptr<TensorUpload>> BeginUpload(DType /*dtype*/, const Shape& shape,
                                                            int64_t bytes) override {
    if (upload_min_bytes_ == 0 || bytes < upload_min_bytes_ || OnHost(shape)) return nullptr;
    Device* device = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      device = LeastLoaded(/*need_free_slot=*/false);
    }
    QUANTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(device->id));
    auto upload = std::make_unique<CudaUpload>(this, device, bytes);
    QUANTD_RETURN_IF_ERROR(upload->Start());
    return std::unique_ptr<TensorUpload>(std::move(upload));
  }

  absl::Status Quantize(const TensorView& input, const QuantSpec& spec, const QuantizedBuffers& out,
                        ErrorMetrics* metrics) override {
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, LayoutOfFloatInput(input, spec));
    if (out.code_bytes != layout.code_bytes || out.num_scales != layout.geometry.num_scales) {
      return absl::InternalError("Quantize output buffers do not match the layout");
    }
    if (OnHost(input.shape)) {
      std::vector<char> copy;
      QUANTD_ASSIGN_OR_RETURN(const TensorView host_input, InHostMemory(input, &copy));
      return host_->Quantize(host_input, spec, out, metrics);
    }
    std::unique_ptr<Lease> lease = Acquire(UploadOf(input));
    DeviceArena arena(this, *lease);
    cudaStream_t stream = lease->stream();
    if (spec.double_quant && out.double_quant == nullptr) {
      return absl::InternalError("NF4 double quantization needs out.double_quant");
    }
    QUANTD_ASSIGN_OR_RETURN(Pass pass, Prepare(input, spec, layout, *lease, arena));
    QUANTD_ASSIGN_OR_RETURN(void* codes, arena.Allocate(layout.code_bytes));
    DoubleQuantized double_quant;
    std::vector<float> absmax;  // double quantization: the scales, already on the host
    QUANTD_RETURN_IF_ERROR(RunPass(spec, metrics != nullptr, arena, stream, &pass,
                                   static_cast<uint8_t*>(codes), nullptr, DType::kF32, &absmax,
                                   &double_quant));
    QUANTD_RETURN_IF_ERROR(lease->MarkComputed());
    QUANTD_RETURN_IF_ERROR(lease->CopyOut(out.codes, codes, layout.code_bytes));
    if (spec.double_quant) {
      std::copy(absmax.begin(), absmax.end(), out.scales);
    } else {
      QUANTD_RETURN_IF_ERROR(
          lease->CopyOut(out.scales, pass.scales, 4 * layout.geometry.num_scales));
    }
    if (pass.nvfp4.global_scale != nullptr) {
      if (out.global_scale == nullptr) {
        return absl::InternalError("NVFP4 Quantize needs out.global_scale");
      }
      QUANTD_RETURN_IF_ERROR(lease->CopyOut(out.global_scale, pass.nvfp4.global_scale, 4));
    }
    if (spec.double_quant) *out.double_quant = std::move(double_quant);
    if (spec.asymmetric) {
      QUANTD_RETURN_IF_ERROR(
          lease->CopyOut(out.zero_points, pass.zero_points, 4 * layout.geometry.num_scales));
    }
    return Finish(spec, pass, metrics, *lease);
  }

  absl::Status Dequantize(const ConstQuantizedBuffers& in, const QuantSpec& spec,
                          const MutableTensorView& out) override {
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, LayoutOfDequantization(in, spec, out));
    if (OnHost(out.shape)) return host_->Dequantize(in, spec, out);
    const int64_t n = layout.geometry.num_scales;
    std::unique_ptr<Lease> lease = Acquire(nullptr);
    DeviceArena arena(this, *lease);
    cudaStream_t stream = lease->stream();
    QUANTD_ASSIGN_OR_RETURN(void* codes, arena.Allocate(layout.code_bytes));
    QUANTD_ASSIGN_OR_RETURN(void* scales, arena.Allocate(4 * n));
    QUANTD_ASSIGN_OR_RETURN(void* zero_points, arena.Allocate(spec.asymmetric ? 4 * n : 0));
    QUANTD_ASSIGN_OR_RETURN(void* output, arena.Allocate(out.bytes));
    QUANTD_RETURN_IF_ERROR(lease->CopyIn(codes, in.codes, layout.code_bytes));
    // NVFP4 divides by d_b = block scale / global scale: computed here, n divisions.
    const std::vector<float> element_scales = ElementScalesOf(in, spec);
    QUANTD_RETURN_IF_ERROR(
        lease->CopyIn(scales, element_scales.empty() ? in.scales : element_scales.data(), 4 * n));
    if (spec.asymmetric) QUANTD_RETURN_IF_ERROR(lease->CopyIn(zero_points, in.zero_points, 4 * n));
    QUANTD_RETURN_IF_ERROR(lease->MarkCopiedIn());
    const ElementParams params =
        MakeElementParams(spec, layout, nullptr, DType::kF32, lease->device().max_blocks);
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchDequantize(
        params, static_cast<const uint8_t*>(codes), static_cast<const float*>(scales),
        spec.asymmetric ? static_cast<const int32_t*>(zero_points) : nullptr, output, out.dtype,
        stream));
    QUANTD_RETURN_IF_ERROR(lease->MarkComputed());
    QUANTD_RETURN_IF_ERROR(lease->CopyOut(out.data, output, out.bytes));
    return lease->Synchronize();
  }

  absl::Status QuantDequant(const TensorView& input, const QuantSpec& spec,
                            const MutableTensorView& out, ErrorMetrics* metrics) override {
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, LayoutOfFloatInput(input, spec));
    if (!IsFloatInput(out.dtype) || out.shape != input.shape) {
      return absl::InvalidArgumentError(
          "fake quantization writes F32, F16 or BF16 shaped like the input");
    }
    QUANTD_RETURN_IF_ERROR(CheckByteLength(out.dtype, out.shape, out.bytes));
    if (OnHost(input.shape)) {
      std::vector<char> copy;
      QUANTD_ASSIGN_OR_RETURN(const TensorView host_input, InHostMemory(input, &copy));
      return host_->QuantDequant(host_input, spec, out, metrics);
    }
    std::unique_ptr<Lease> lease = Acquire(UploadOf(input));
    DeviceArena arena(this, *lease);
    cudaStream_t stream = lease->stream();
    QUANTD_ASSIGN_OR_RETURN(Pass pass, Prepare(input, spec, layout, *lease, arena));
    QUANTD_ASSIGN_OR_RETURN(void* output, arena.Allocate(out.bytes));
    QUANTD_RETURN_IF_ERROR(
        RunPass(spec, metrics != nullptr, arena, stream, &pass, nullptr, output, out.dtype));
    QUANTD_RETURN_IF_ERROR(lease->MarkComputed());
    QUANTD_RETURN_IF_ERROR(lease->CopyOut(out.data, output, out.bytes));
    return Finish(spec, pass, metrics, *lease);
  }

  // The operands are quantized on the GPU by the passes Quantize runs (the CPU's codes and
  // scales bit for bit), the product runs on cuBLASLt by the path PlanGemmPath picks
  // (gemm_path.h), the epilogue (α, β·C, bias, INT8's scales) in fp32. Products whose operands
  // are both small enough for the host (CudaBackendOptions::host_max_elements) run there.
  absl::Status Gemm(const GemmOperands& operands, const GemmSpec& spec,
                    const MutableTensorView& out, ErrorMetrics* metrics) override {
    QUANTD_ASSIGN_OR_RETURN(const GemmDims dims, CheckGemmOperands(operands, spec));
    QUANTD_RETURN_IF_ERROR(CheckGemmOutput(dims, out));
    const auto* stored = dynamic_cast<const CudaStoredWeight*>(operands.b_stored);
    if (operands.b_stored != nullptr && stored == nullptr) {
      return absl::InvalidArgumentError(
          "GEMM operand B is a weight stored by another backend than the one computing");
    }
    if (stored == nullptr && OnHost(operands.a.shape) && OnHost(operands.b.shape)) {
      return host_->Gemm(operands, spec, out, metrics);
    }
    // A stored weight's product runs on its device.
    std::unique_ptr<Lease> lease = AcquireOn(stored != nullptr ? stored->device() : nullptr);
    DeviceArena arena(this, *lease);
    cudaStream_t stream = lease->stream();
    const int max_blocks = lease->device().max_blocks;
    QUANTD_ASSIGN_OR_RETURN(LtEngine * lt, EngineOf(lease->device()));
    const int64_t rows = dims.batch * dims.m;
    const int64_t out_elements = rows * dims.n;
    const bool exact = metrics != nullptr;

    const bool has_c = operands.c.dtype != DType::kUnspecified && spec.beta != 0.0f;
    const bool has_bias = operands.bias.dtype != DType::kUnspecified;
    const GemmRoute route = RouteGemm(dims, spec, out.dtype, has_c, operands.bias.dtype, *lt);
    const GemmPathPlan& plan = route.plan;
    LtProduct product = route.product;
    QUANTD_ASSIGN_OR_RETURN(GemmOperand a,
                            StageGemmOperand("A", operands.a, spec.a, plan, exact, *lease, arena));
    QUANTD_ASSIGN_OR_RETURN(
        GemmOperand b, stored != nullptr
                           ? StoredGemmOperand(*stored, plan, exact, *lease, arena)
                           : StageGemmOperand("B", operands.b, spec.b, plan, exact, *lease, arena));
    product.a = a.data;
    product.b = b.data;
    if (plan.path == GemmPath::kFp8 && !route.scales_in_epilogue) {
      QUANTD_RETURN_IF_ERROR(PrepareFp8Scales(dims, plan, a, b, arena, stream, &product));
    }

    // Epilogue operands, as given.
    const void* c = nullptr;
    const void* bias = nullptr;
    if (has_c) {
      QUANTD_ASSIGN_OR_RETURN(c, CopyInOperand(operands.c, *lease, arena));
    }
    if (has_bias) {
      QUANTD_ASSIGN_OR_RETURN(bias, CopyInOperand(operands.bias, *lease, arena));
    }
    QUANTD_ASSIGN_OR_RETURN(void* output, arena.Allocate(out.bytes));
    QUANTD_ASSIGN_OR_RETURN(void* workspace, arena.Allocate(lt->workspace_bytes()));

    GemmEpilogue epilogue;
    epilogue.rows = rows;
    epilogue.n = dims.n;
    epilogue.m = dims.m;
    epilogue.alpha = spec.alpha;
    epilogue.beta = spec.beta;
    epilogue.c = c;
    epilogue.c_dtype = operands.c.dtype;
    epilogue.c_batched = dims.c_batched;
    epilogue.bias = bias;
    epilogue.bias_dtype = operands.bias.dtype;
    epilogue.out = output;
    epilogue.out_dtype = out.dtype;
    epilogue.max_blocks = max_blocks;
    void* sums = nullptr;  // fp32 / int32 sums the epilogue finishes (also the metrics')
    if (route.direct) {
      product.d = output;
      product.alpha = spec.alpha;
      product.bias = bias;  // of the output's dtype when product.has_bias (RouteGemm)
      QUANTD_RETURN_IF_ERROR(lt->Run(product, workspace, stream));
    } else {
      QUANTD_ASSIGN_OR_RETURN(sums, arena.Allocate(4 * out_elements));
      product.d = sums;
      QUANTD_RETURN_IF_ERROR(lt->Run(product, workspace, stream));
      epilogue.acc = sums;
      epilogue.acc_int32 = product.d_type == DType::kI32;
      if (route.scales_in_epilogue) {
        epilogue.row_scales = a.scales;
        epilogue.row_stride = plan.a_scales == OperandScales::kRows ? 1 : 0;
        epilogue.col_scales = b.scales;
        const bool per_channel = plan.b_scales == OperandScales::kRows;
        epilogue.col_stride = per_channel ? 1 : 0;
        epilogue.col_batch_stride = per_channel && dims.b_batched ? dims.n : 0;
      }
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchGemmEpilogue(epilogue, stream));
    }

    // The metrics: the same product of the unquantized operands (fp32, no TF32) with the same
    // α, β·C and bias, against the output as stored.
    MetricPartial* partials = nullptr;
    if (exact) {
      // The product's sums are spent once the epilogue (earlier on the stream) has read them.
      if (sums == nullptr) {
        QUANTD_ASSIGN_OR_RETURN(sums, arena.Allocate(4 * out_elements));
      }
      QUANTD_ASSIGN_OR_RETURN(void* reference, arena.Allocate(4 * out_elements));
      QUANTD_ASSIGN_OR_RETURN(void* partial_bytes,
                              arena.Allocate((kMaxMetricBlocks + 1) * sizeof(MetricPartial)));
      LtProduct plain = ProductShape(dims, spec, GemmPathPlan());
      plain.a = a.plain;
      plain.b = b.plain;
      plain.d = sums;
      QUANTD_RETURN_IF_ERROR(lt->Run(plain, workspace, stream));
      GemmEpilogue exact_epilogue = epilogue;
      exact_epilogue.acc = sums;
      exact_epilogue.acc_int32 = false;
      exact_epilogue.row_scales = exact_epilogue.col_scales = nullptr;
      exact_epilogue.out = reference;
      exact_epilogue.out_dtype = DType::kF32;
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchGemmEpilogue(exact_epilogue, stream));
      partials = static_cast<MetricPartial*>(partial_bytes);
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchCompareMetrics(static_cast<const float*>(reference), output,
                                                       out.dtype, out_elements, partials,
                                                       max_blocks, stream));
    }
    QUANTD_RETURN_IF_ERROR(lease->MarkComputed());
    QUANTD_RETURN_IF_ERROR(lease->CopyOut(out.data, output, out.bytes));
    MetricPartial total;
    if (exact) {
      QUANTD_RETURN_IF_ERROR(
          lease->CopyOut(&total, partials + kMaxMetricBlocks, sizeof(MetricPartial)));
    }
    for (GemmOperand* operand : {&a, &b}) {
      if (operand->ran_pass) QUANTD_RETURN_IF_ERROR(QueueFlags(operand->pass, nullptr, *lease));
    }
    QUANTD_RETURN_IF_ERROR(lease->Synchronize());
    for (GemmOperand* operand : {&a, &b}) {
      if (!operand->ran_pass) continue;
      QUANTD_RETURN_IF_ERROR(
          GemmOperandError(operand->name, PassStatus(operand->spec, operand->pass, nullptr)));
    }
    if (exact) *metrics = MetricsFromPartial(total);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++lease->device().totals.gemm_products[static_cast<size_t>(plan.path)];
    }
    return absl::OkStatus();
  }

  absl::Status Calibrate(const TensorView& input, const QuantSpec& spec,
                         const CalibrationOptions& options, CalibrationResult* result) override {
    const CalibrationMethod method = options.method == CalibrationMethod::kUnspecified
                                         ? CalibrationMethod::kAmax
                                         : options.method;
    QUANTD_RETURN_IF_ERROR(CheckCalibration(spec, options));
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, LayoutOfFloatInput(input, spec));
    const int64_t n = layout.geometry.num_scales;
    const int steps = options.search_steps;
    const bool search = method == CalibrationMethod::kMse;
    // A small MSE search is faster on the CPU (CudaBackendOptions::mse_search_min_pairs): the
    // CPU backend computes it, with the same result.
    if (OnHost(input.shape) || (search && n * steps < mse_search_min_pairs_)) {
      std::vector<char> copy;
      QUANTD_ASSIGN_OR_RETURN(const TensorView host_input, InHostMemory(input, &copy));
      return host_->Calibrate(host_input, spec, options, result);
    }
    std::unique_ptr<Lease> lease = Acquire(UploadOf(input));
    DeviceArena arena(this, *lease);
    cudaStream_t stream = lease->stream();
    QUANTD_ASSIGN_OR_RETURN(Pass pass, Prepare(input, spec, layout, *lease, arena));
    // Statistics as their own pass: the amax of each group is part of the answer.
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchGroupStats(pass.params, pass.stats, stream));
    const ScaleRule rule = MakeScaleRule(Traits(spec.format), spec.asymmetric, spec.scale_rounding);
    float* chosen_ratios = nullptr;
    if (search) {
      const std::vector<float> grid = ClipGrid(steps, options.search_min_ratio);
      QUANTD_ASSIGN_OR_RETURN(void* ratios, arena.Allocate(4 * steps));
      QUANTD_ASSIGN_OR_RETURN(void* errors,
                              arena.Allocate(8 * MseSearchChunkGroups(n, steps) * steps));
      QUANTD_ASSIGN_OR_RETURN(void* chosen, arena.Allocate(4 * n));
      QUANTD_RETURN_IF_ERROR(lease->CopyIn(ratios, grid.data(), 4 * steps));
      chosen_ratios = static_cast<float*>(chosen);
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchMseSearch(
          pass.params, rule, pass.stats, static_cast<const float*>(ratios), steps,
          static_cast<double*>(errors), pass.scales, pass.zero_points, chosen_ratios, stream));
    } else if (method == CalibrationMethod::kPercentile) {
      QUANTD_ASSIGN_OR_RETURN(void* workspace, arena.Allocate(PercentileWorkspaceBytes(n)));
      QUANTD_CUDA_RETURN_IF_ERROR(
          LaunchPercentileScales(pass.params, rule, spec.clip_ratio, options.percentile, workspace,
                                 pass.scales, pass.zero_points, pass.stats.flags, stream));
    } else {
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchScales(rule, spec.clip_ratio, pass.stats, n, pass.scales,
                                               pass.zero_points, stream));
    }
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchQuantize(pass.params, pass.scales, pass.zero_points, nullptr,
                                               nullptr, DType::kF32, pass.partials,
                                               pass.stats.flags, stream));
    QUANTD_RETURN_IF_ERROR(lease->MarkComputed());
    result->scales.resize(n);
    result->zero_points.assign(spec.asymmetric ? n : 0, 0);
    std::vector<int32_t> min_keys(n), max_keys(n);
    QUANTD_RETURN_IF_ERROR(lease->CopyOut(result->scales.data(), pass.scales, 4 * n));
    if (spec.asymmetric) {
      QUANTD_RETURN_IF_ERROR(lease->CopyOut(result->zero_points.data(), pass.zero_points, 4 * n));
    }
    QUANTD_RETURN_IF_ERROR(lease->CopyOut(min_keys.data(), pass.stats.min_keys, 4 * n));
    QUANTD_RETURN_IF_ERROR(lease->CopyOut(max_keys.data(), pass.stats.max_keys, 4 * n));
    result->clip_ratios.assign(n, spec.clip_ratio);
    if (search) {
      QUANTD_RETURN_IF_ERROR(lease->CopyOut(result->clip_ratios.data(), chosen_ratios, 4 * n));
    }
    QUANTD_RETURN_IF_ERROR(Finish(spec, pass, &result->metrics, *lease));
    result->amax.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      const float lo = KeyFloat(min_keys[i]), hi = KeyFloat(max_keys[i]);
      result->amax[i] = lo <= hi ? std::max(hi, -lo) : 0.0f;
    }
    return absl::OkStatus();
  }

 private:
  friend class Lease;
  friend class DeviceArena;
  friend class CudaUpload;
  friend class CudaStoredWeight;

  CudaBackend() = default;

  // Whether a tensor is small enough for the host (CudaBackendOptions::host_max_elements).
  bool OnHost(const Shape& shape) const {
    if (host_max_elements_ == 0) return false;
    const absl::StatusOr<int64_t> elements = NumElements(shape);
    return elements.ok() && *elements <= host_max_elements_;
  }

  // Device state of one quantization after its scales exist.
  struct Pass {
    ElementParams params;
    StatsBuffers stats;
    MetricPartial* partials = nullptr;
    float* scales = nullptr;
    int32_t* zero_points = nullptr;
    GlobalScaleBuffers nvfp4;   // NVFP4's element scales and global scale, else null
    bool scales_ready = false;  // static scales, or 1 for a plain cast, already in place
    MetricPartial total;        // host copy of partials[kMaxMetricBlocks]
    DeviceFlags flags;          // host copy of stats.flags
    // The caller's input on the device (FlatQuant's params.input is its transform instead).
    const void* input = nullptr;
    DType input_dtype = DType::kF32;
  };

  // Copies the input in, initializes the statistics and puts static scales (or 1 for a plain
  // cast) in place; dynamic scales are the quantization pass's own first step.
  absl::StatusOr<Pass> Prepare(const TensorView& input, const QuantSpec& spec,
                               const QuantLayout& layout, Lease& lease, DeviceArena& arena) {
    cudaStream_t stream = lease.stream();
    const int64_t n = layout.geometry.num_scales;
    Pass pass;
    const CudaUpload* upload = UploadOf(input);
    const void* d_input = nullptr;
    if (upload == nullptr && input.data == nullptr && input.bytes > 0) {
      return absl::InvalidArgumentError(
          "input.data is null and its upload is incomplete or not this backend's");
    }
    if (upload != nullptr) {
      QUANTD_RETURN_IF_ERROR(upload->ConsumeOn(stream));
      d_input = upload->data();
    } else {
      QUANTD_ASSIGN_OR_RETURN(void* copy, arena.Allocate(input.bytes));
      QUANTD_RETURN_IF_ERROR(lease.CopyIn(copy, input.data, input.bytes));
      d_input = copy;
    }
    QUANTD_ASSIGN_OR_RETURN(void* workspace, arena.Allocate(WorkspaceBytes(layout)));
    QUANTD_ASSIGN_OR_RETURN(void* scales, arena.Allocate(4 * n));
    QUANTD_ASSIGN_OR_RETURN(void* zero_points, arena.Allocate(spec.asymmetric ? 4 * n : 0));
    SplitWorkspace(workspace, layout, &pass.stats, &pass.partials);
    pass.scales = static_cast<float*>(scales);
    pass.zero_points = spec.asymmetric ? static_cast<int32_t*>(zero_points) : nullptr;
    if (Traits(spec.format).scale_kind == ScaleKind::kE4M3) {
      QUANTD_ASSIGN_OR_RETURN(void* element_scales, arena.Allocate(4 * n));
      QUANTD_ASSIGN_OR_RETURN(void* global_scale, arena.Allocate(4));
      pass.nvfp4.element_scales = static_cast<float*>(element_scales);
      pass.nvfp4.global_scale = static_cast<float*>(global_scale);
    }
    pass.params = MakeElementParams(spec, layout, d_input, input.dtype, lease.device().max_blocks);
    pass.input = d_input;
    pass.input_dtype = input.dtype;
    FlatquantTransform transform;
    if (Traits(spec.format).kronecker_transform) {
      QUANTD_ASSIGN_OR_RETURN(transform, PrepareTransform(spec, layout, lease, arena, pass));
    }
    if (spec.granularity == Granularity::kNone) {
      // A copy this small is staged: CopyIn has consumed its source when it returns.
      const float one = 1.0f;
      QUANTD_RETURN_IF_ERROR(lease.CopyIn(pass.scales, &one, 4));
    } else if (spec.has_static_scales()) {
      QUANTD_RETURN_IF_ERROR(lease.CopyIn(pass.scales, spec.static_scales.data(), 4 * n));
      if (spec.asymmetric) {
        QUANTD_RETURN_IF_ERROR(
            lease.CopyIn(pass.zero_points, spec.static_zero_points.data(), 4 * n));
      }
    }
    QUANTD_RETURN_IF_ERROR(lease.MarkCopiedIn());
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchInitStats(pass.stats, n, stream));
    if (transform.output != nullptr) {
      // The quantization reads the transformed rows from here on.
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchFlatquantTransform(transform, stream));
      pass.params.input = transform.output;
      pass.params.input_dtype = DType::kF32;
    }
    pass.scales_ready = spec.granularity == Granularity::kNone || spec.has_static_scales();
    return pass;
  }

  // FlatQuant: P1 and P2 copied in, and the device buffers of the transform of pass.input.
  absl::StatusOr<FlatquantTransform> PrepareTransform(const QuantSpec& spec,
                                                      const QuantLayout& layout, Lease& lease,
                                                      DeviceArena& arena, const Pass& pass) {
    FlatquantTransform t;
    t.input = pass.input;
    t.input_dtype = pass.input_dtype;
    t.n1 = MatrixSide(spec.transform_left.size());
    t.n2 = MatrixSide(spec.transform_right.size());
    t.rows = layout.numel / std::max<int64_t>(1, t.n1 * t.n2);
    t.nan_to_zero = spec.nan_policy == NanPolicy::kZero;
    t.flags = pass.stats.flags;
    t.max_blocks = lease.device().max_blocks;
    const int64_t left_bytes = 4 * t.n1 * t.n1, right_bytes = 4 * t.n2 * t.n2;
    QUANTD_ASSIGN_OR_RETURN(void* left, arena.Allocate(left_bytes));
    QUANTD_ASSIGN_OR_RETURN(void* right, arena.Allocate(right_bytes));
    QUANTD_ASSIGN_OR_RETURN(void* scratch, arena.Allocate(4 * layout.numel));
    QUANTD_ASSIGN_OR_RETURN(void* output, arena.Allocate(4 * layout.numel));
    QUANTD_RETURN_IF_ERROR(lease.CopyIn(left, spec.transform_left.data(), left_bytes));
    QUANTD_RETURN_IF_ERROR(lease.CopyIn(right, spec.transform_right.data(), right_bytes));
    t.left = static_cast<const float*>(left);
    t.right = static_cast<const float*>(right);
    t.scratch = static_cast<float*>(scratch);
    t.output = static_cast<float*>(output);
    return t;
  }

  // Runs a prepared pass to the end: NF4's double quantization first when the spec asks for it
  // (`absmax` / `double_quant`, when given, receive the exact absmax values and their double
  // quantization), then the element pass, writing codes and / or x̂ in `x_hat_dtype`, and the
  // metrics' partial sums `with_metrics`. What every quantizing entry point runs after Prepare.
  absl::Status RunPass(const QuantSpec& spec, bool with_metrics, DeviceArena& arena,
                       cudaStream_t stream, Pass* pass, uint8_t* codes, void* x_hat,
                       DType x_hat_dtype, std::vector<float>* absmax = nullptr,
                       DoubleQuantized* double_quant = nullptr) {
    if (spec.double_quant) {
      std::vector<float> unused_absmax;
      DoubleQuantized unused_double_quant;
      QUANTD_RETURN_IF_ERROR(PrepareDoubleQuant(
          spec, *pass, arena, stream, absmax != nullptr ? absmax : &unused_absmax,
          double_quant != nullptr ? double_quant : &unused_double_quant));
    }
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchQuantizePass(
        pass->params, spec, pass->scales_ready, pass->stats, pass->scales, pass->zero_points,
        pass->nvfp4, codes, x_hat, x_hat_dtype, with_metrics ? pass->partials : nullptr, stream));
    return absl::OkStatus();
  }

  // NF4 with double quantization (double_quant.h): the exact absmax values on the device, their
  // double quantization on the host (one value per block of 32..4096 elements), then the
  // element pass, whose x̂ multiplies by the values DoubleDequantize reconstructs.
  // `absmax` receives the exact absmax values (what Quantize reports as scales).
  absl::Status PrepareDoubleQuant(const QuantSpec& spec, Pass& pass, DeviceArena& arena,
                                  cudaStream_t stream, std::vector<float>* absmax,
                                  DoubleQuantized* double_quant) {
    const int64_t n = pass.params.geometry.num_scales;
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchGroupStats(pass.params, pass.stats, stream));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchScales(MakeScaleRule(Traits(spec.format), false),
                                             spec.clip_ratio, pass.stats, n, pass.scales, nullptr,
                                             stream));
    absmax->resize(n);
    // Plain copies, waited for here: the host needs the values now, and `reconstructed` goes
    // out of scope (the lease's copies complete only at its Synchronize).
    QUANTD_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(absmax->data(), pass.scales, 4 * n, cudaMemcpyDeviceToHost, stream));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    *double_quant = DoubleQuantize(*absmax);
    const std::vector<float> reconstructed = DoubleDequantize(*double_quant);
    QUANTD_ASSIGN_OR_RETURN(void* dequant_scales, arena.Allocate(4 * n));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dequant_scales, reconstructed.data(), 4 * n,
                                                cudaMemcpyHostToDevice, stream));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    pass.params.dequant_scales = static_cast<const float*>(dequant_scales);
    pass.scales_ready = true;
    return absl::OkStatus();
  }

  // One GEMM operand on the device: what the product reads (codes or x̂ / the values in fp32),
  // its scales (codes only) and, for the metrics, its unquantized values in fp32.
  struct GemmOperand {
    const char* name = "";
    QuantSpec spec;
    bool ran_pass = false;  // quantized by this call: `pass` holds flags to check
    Pass pass;              // the quantization's (its flags are checked after the synchronization)
    const void* data = nullptr;  // of the element type RouteGemm's product has for it
    const float* scales = nullptr;
    const float* plain = nullptr;
  };

  absl::StatusOr<GemmOperand> StageGemmOperand(const char* name, const TensorView& t,
                                               const QuantSpec& spec, const GemmPathPlan& plan,
                                               bool want_plain, Lease& lease, DeviceArena& arena) {
    cudaStream_t stream = lease.stream();
    const int max_blocks = lease.device().max_blocks;
    const int64_t numel = t.bytes / DTypeSize(t.dtype);
    GemmOperand operand;
    operand.name = name;
    operand.spec = spec;
    operand.ran_pass = spec.format != Format::kUnspecified;
    const void* input = nullptr;
    if (operand.ran_pass) {
      QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout,
                              LayoutOfFloatInput(t, spec));  // resolved: cannot fail here
      QUANTD_ASSIGN_OR_RETURN(operand.pass, Prepare(t, spec, layout, lease, arena));
      Pass& pass = operand.pass;
      input = pass.input;
      const bool codes = plan.path != GemmPath::kFloat;
      QUANTD_ASSIGN_OR_RETURN(void* buffer, arena.Allocate(codes ? layout.code_bytes : 4 * numel));
      QUANTD_RETURN_IF_ERROR(RunPass(spec, /*with_metrics=*/false, arena, stream, &pass,
                                     codes ? static_cast<uint8_t*>(buffer) : nullptr,
                                     codes ? nullptr : buffer, DType::kF32));
      operand.data = buffer;
      operand.scales = pass.scales;
    } else {
      QUANTD_ASSIGN_OR_RETURN(input, CopyInOperand(t, lease, arena));
    }
    if (!operand.ran_pass || want_plain) {
      if (t.dtype == DType::kF32) {
        operand.plain = static_cast<const float*>(input);
      } else {
        QUANTD_ASSIGN_OR_RETURN(void* plain, arena.Allocate(4 * numel));
        QUANTD_CUDA_RETURN_IF_ERROR(
            LaunchConvert(input, t.dtype, numel, plain, DType::kF32, max_blocks, stream));
        operand.plain = static_cast<const float*>(plain);
      }
      if (!operand.ran_pass) operand.data = operand.plain;
    }
    return operand;
  }

  // A stored weight as the product's B: its codes and scales on the tensor cores' paths, its
  // x̂ (dequantized here, the bits QuantDequant gives) on the fp32 path; for the metrics, its
  // kept values, else its x̂.
  absl::StatusOr<GemmOperand> StoredGemmOperand(const CudaStoredWeight& stored,
                                                const GemmPathPlan& plan, bool want_plain,
                                                Lease& lease, DeviceArena& arena) {
    GemmOperand operand;
    operand.name = "B";
    operand.spec = stored.spec();
    if (stored.spec().format == Format::kUnspecified) {
      operand.data = operand.plain = stored.original;
      return operand;
    }
    operand.scales = stored.scales;
    operand.data = stored.codes;
    const bool want_hat = plan.path == GemmPath::kFloat || (want_plain && !stored.keeps_original());
    float* hat = nullptr;
    if (want_hat) {
      const QuantLayout& layout = stored.layout();
      QUANTD_ASSIGN_OR_RETURN(void* buffer, arena.Allocate(4 * layout.numel));
      hat = static_cast<float*>(buffer);
      const ElementParams params =
          MakeElementParams(stored.spec(), layout, nullptr, DType::kF32, lease.device().max_blocks);
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchDequantize(params, stored.codes, stored.scales,
                                                   stored.zero_points, hat, DType::kF32,
                                                   lease.stream()));
      if (plan.path == GemmPath::kFloat) operand.data = hat;
    }
    if (want_plain) operand.plain = stored.keeps_original() ? stored.original : hat;
    return operand;
  }

  absl::StatusOr<std::unique_ptr<StoredWeight>> StoreWeight(const TensorView& weight,
                                                            const QuantSpec& spec,
                                                            bool keep_original,
                                                            ErrorMetrics* metrics) override {
    QUANTD_RETURN_IF_ERROR(CheckWeightShape(weight.shape));
    const bool quantize = spec.format != Format::kUnspecified;
    QuantLayout layout;
    if (quantize) {
      QUANTD_ASSIGN_OR_RETURN(layout, LayoutOfFloatInput(weight, spec));
    } else if (!IsFloatInput(weight.dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat("a stored weight must be F32, F16 or BF16, not ", DTypeName(weight.dtype)));
    } else {
      QUANTD_RETURN_IF_ERROR(CheckByteLength(weight.dtype, weight.shape, weight.bytes));
    }
    QUANTD_RETURN_IF_ERROR(CheckInHostMemory(weight));
    const int64_t numel = weight.bytes / DTypeSize(weight.dtype);
    std::unique_ptr<Lease> lease = AcquireOn(nullptr);
    DeviceArena arena(this, *lease);
    cudaStream_t stream = lease->stream();
    auto stored =
        std::make_unique<CudaStoredWeight>(this, &lease->device(), weight.dtype, weight.shape, spec,
                                           StoresOriginal(spec, keep_original), layout);
    const void* input = nullptr;
    Pass pass;
    if (quantize) {
      const int64_t n = layout.geometry.num_scales;
      QUANTD_ASSIGN_OR_RETURN(pass, Prepare(weight, spec, layout, *lease, arena));
      input = pass.input;
      QUANTD_ASSIGN_OR_RETURN(void* codes, stored->Allocate(layout.code_bytes, stream));
      QUANTD_ASSIGN_OR_RETURN(void* scales, stored->Allocate(4 * n, stream));
      stored->codes = static_cast<uint8_t*>(codes);
      stored->scales = static_cast<float*>(scales);
      QUANTD_RETURN_IF_ERROR(RunPass(spec, metrics != nullptr, arena, stream, &pass, stored->codes,
                                     nullptr, DType::kF32));
      if (pass.nvfp4.global_scale != nullptr) {
        // d_b from s_b and S_enc, as Dequantize takes them (the one-pass NVFP4 kernel keeps
        // d_b in registers, so it is derived once here).
        QUANTD_CUDA_RETURN_IF_ERROR(
            LaunchNvfp4ElementScales(pass.scales, n, pass.nvfp4.global_scale, stored->scales,
                                     lease->device().max_blocks, stream));
      } else {
        const float* decode_scales =
            spec.double_quant ? pass.params.dequant_scales : static_cast<const float*>(pass.scales);
        QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(stored->scales, decode_scales, 4 * n,
                                                    cudaMemcpyDeviceToDevice, stream));
      }
      if (spec.asymmetric) {
        QUANTD_ASSIGN_OR_RETURN(void* zero_points, stored->Allocate(4 * n, stream));
        stored->zero_points = static_cast<int32_t*>(zero_points);
        QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(stored->zero_points, pass.zero_points, 4 * n,
                                                    cudaMemcpyDeviceToDevice, stream));
      }
    } else {
      QUANTD_ASSIGN_OR_RETURN(input, CopyInOperand(weight, *lease, arena));
    }
    if (stored->keeps_original()) {
      QUANTD_ASSIGN_OR_RETURN(void* original, stored->Allocate(4 * numel, stream));
      stored->original = static_cast<float*>(original);
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchConvert(input, weight.dtype, numel, original, DType::kF32,
                                                lease->device().max_blocks, stream));
    }
    QUANTD_RETURN_IF_ERROR(lease->MarkComputed());
    if (quantize) {
      QUANTD_RETURN_IF_ERROR(Finish(spec, pass, metrics, *lease));
    } else {
      QUANTD_RETURN_IF_ERROR(lease->Synchronize());
    }
    return stored;
  }

  // What StoreWeight allocates: codes, decode scales, zero-points, the original in fp32.
  int64_t StoredWeightBytes(const QuantSpec& spec, const QuantLayout& layout,
                            bool keep_original) const override {
    const int64_t original = StoresOriginal(spec, keep_original) ? 4 * layout.numel : 0;
    if (spec.format == Format::kUnspecified) return original;
    const int64_t n = layout.geometry.num_scales;
    return layout.code_bytes + 4 * n + (spec.asymmetric ? 4 * n : 0) + original;
  }

  // A tensor's bytes on the device.
  absl::StatusOr<const void*> CopyInOperand(const TensorView& t, Lease& lease, DeviceArena& arena) {
    QUANTD_ASSIGN_OR_RETURN(void* copy, arena.Allocate(t.bytes));
    QUANTD_RETURN_IF_ERROR(lease.CopyIn(copy, t.data, t.bytes));
    return static_cast<const void*>(copy);
  }

  // The FP8 scales in the layouts cuBLASLt's modes read (gemm_path.h): a tensor's one scale
  // beside the other operand's vector becomes a vector; block scales are repacked.
  absl::Status PrepareFp8Scales(const GemmDims& dims, const GemmPathPlan& plan,
                                const GemmOperand& a, const GemmOperand& b, DeviceArena& arena,
                                cudaStream_t stream, LtProduct* product) {
    const int64_t rows = dims.batch * dims.m;
    product->a_scale_data = a.scales;
    product->b_scale_data = b.scales;
    product->b_scale_batch_stride =
        plan.b_scales == OperandScales::kRows && dims.b_batched ? dims.n : 0;
    if (plan.a_scales == OperandScales::kBlocks128) {
      const int64_t k_blocks = dims.k / 128;
      QUANTD_ASSIGN_OR_RETURN(void* a_scales, arena.Allocate(4 * rows * k_blocks));
      // A: [rows, K/128] to VEC128_32F's K-block-major layout. B: BLK128x128_32F reads
      // [N/128, K/128] row-major with rows of a multiple of 4 blocks, which quantization's
      // layout already is (PlanGemmPath's block path needs K % 512 == 0).
      QUANTD_CUDA_RETURN_IF_ERROR(LaunchRepackScales(
          a.scales, rows, k_blocks, static_cast<float*>(a_scales), 1, rows, stream));
      product->a_scale_data = static_cast<const float*>(a_scales);
      return absl::OkStatus();
    }
    if (plan.a_scales == plan.b_scales) return absl::OkStatus();
    // One per tensor, one per row: the tensor's scale as a vector (RouteGemm asked cuBLASLt
    // for OUTER_VEC_32F on both).
    const bool a_scalar = plan.a_scales == OperandScales::kTensor;
    const int64_t n = a_scalar ? rows : dims.n;
    QUANTD_ASSIGN_OR_RETURN(void* vector, arena.Allocate(4 * n));
    QUANTD_CUDA_RETURN_IF_ERROR(LaunchBroadcastScale(a_scalar ? a.scales : b.scales, n,
                                                     static_cast<float*>(vector), stream));
    (a_scalar ? product->a_scale_data : product->b_scale_data) = static_cast<const float*>(vector);
    return absl::OkStatus();
  }

  // The device's cuBLASLt engine, created on its first GEMM.
  absl::StatusOr<LtEngine*> EngineOf(Device& device) {
    std::lock_guard<std::mutex> lock(engine_mu_);
    if (device.lt == nullptr) {
      QUANTD_ASSIGN_OR_RETURN(device.lt,
                              CreateLtEngine(device.id, gemm_autotune_, gemm_algorithm_cache_));
    }
    return device.lt.get();
  }

  // Copies the flags (and metrics) back, waits for the stream, turns flags into statuses.
  absl::Status Finish(const QuantSpec& spec, Pass& pass, ErrorMetrics* metrics, Lease& lease) {
    QUANTD_RETURN_IF_ERROR(QueueFlags(pass, metrics, lease));
    QUANTD_RETURN_IF_ERROR(lease.Synchronize());
    return PassStatus(spec, pass, metrics);
  }

  // Queues the copies of a pass's flags (and metric total) to pass.flags (pass.total).
  absl::Status QueueFlags(Pass& pass, const ErrorMetrics* metrics, Lease& lease) {
    QUANTD_RETURN_IF_ERROR(lease.CopyOut(&pass.flags, pass.stats.flags, sizeof(DeviceFlags)));
    if (metrics != nullptr) {
      QUANTD_RETURN_IF_ERROR(
          lease.CopyOut(&pass.total, pass.partials + kMaxMetricBlocks, sizeof(MetricPartial)));
    }
    return absl::OkStatus();
  }

  // After the synchronization: the flags as a status, the metrics.
  absl::Status PassStatus(const QuantSpec& spec, const Pass& pass, ErrorMetrics* metrics) {
    if (Traits(spec.format).kronecker_transform && pass.flags.first_bad_input != kNoNan) {
      // The message says whether it is a NaN or an Inf: one input element comes back.
      const int64_t index = static_cast<int64_t>(pass.flags.first_bad_input);
      const int size = DTypeSize(pass.input_dtype);
      uint32_t bits = 0;
      QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpy(&bits,
                                             static_cast<const char*>(pass.input) + index * size,
                                             size, cudaMemcpyDeviceToHost));
      return FlatquantInputError(spec.format, index, LoadAsFloat(pass.input_dtype, &bits, 0));
    }
    if (pass.flags.first_nan != kNoNan) {
      return NanRejectedError(spec.format, static_cast<int64_t>(pass.flags.first_nan));
    }
    if (pass.flags.bad_scale_group != kNoBadGroup) {
      return RangeOverflowError(pass.flags.bad_scale_group);
    }
    if (metrics != nullptr) *metrics = MetricsFromPartial(pass.total);
    return absl::OkStatus();
  }

  // The device with the fewest busy streams, then the least device memory reserved (uploads
  // hold memory without a stream), among those with a free stream when `need_free_slot`;
  // null when none qualifies. Call with mu_ held.
  Device* LeastLoaded(bool need_free_slot) const {
    Device* best = nullptr;
    for (const auto& device : devices_) {
      if (need_free_slot && device->in_use >= static_cast<int>(device->slots.size())) continue;
      if (best == nullptr || device->in_use < best->in_use ||
          (device->in_use == best->in_use && device->bytes_in_use < best->bytes_in_use)) {
        best = device.get();
      }
    }
    return best;
  }

  // The upload `input` came with, when it is this backend's and holds exactly `input`'s bytes.
  const CudaUpload* UploadOf(const TensorView& input) const {
    const auto* upload = dynamic_cast<const CudaUpload*>(input.upload);
    if (upload == nullptr || !upload->BelongsTo(this) || upload->bytes() != input.bytes ||
        upload->received() != input.bytes) {
      return nullptr;
    }
    return upload;
  }

  // `input` itself when its bytes are in host memory, else a copy of its upload in `storage`:
  // for the CPU backend's share of the work.
  absl::StatusOr<TensorView> InHostMemory(const TensorView& input, std::vector<char>* storage) {
    if (input.data != nullptr || input.bytes == 0) return input;
    const CudaUpload* upload = UploadOf(input);
    if (upload == nullptr) {
      return absl::InvalidArgumentError(
          "input.data is null and its upload is incomplete or not this backend's");
    }
    std::unique_ptr<Lease> lease = Acquire(upload);
    QUANTD_RETURN_IF_ERROR(upload->ConsumeOn(lease->stream()));
    QUANTD_RETURN_IF_ERROR(lease->MarkCopiedIn());
    QUANTD_RETURN_IF_ERROR(lease->MarkComputed());
    storage->resize(static_cast<size_t>(input.bytes));
    QUANTD_RETURN_IF_ERROR(lease->CopyOut(storage->data(), upload->data(), input.bytes));
    QUANTD_RETURN_IF_ERROR(lease->Synchronize());
    TensorView view = input;
    view.data = storage->data();
    view.upload = nullptr;
    return view;
  }

  // A free stream on the upload's device (the input is there), or else on the least-loaded
  // device; waits while every candidate stream is busy.
  std::unique_ptr<Lease> Acquire(const CudaUpload* upload) {
    return AcquireOn(upload != nullptr ? upload->device() : nullptr);
  }

  // A stream of `home` (an upload's or a stored weight's device), or of the least loaded
  // device when it is null; waits for one to be free.
  std::unique_ptr<Lease> AcquireOn(Device* home) {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      Device* best = LeastLoaded(/*need_free_slot=*/true);
      if (home != nullptr) {
        best = home->in_use < static_cast<int>(home->slots.size()) ? home : nullptr;
      }
      if (best != nullptr) {
        const int slot =
            static_cast<int>(std::find_if(best->slots.begin(), best->slots.end(),
                                          [](const Slot& candidate) { return !candidate.busy; }) -
                             best->slots.begin());
        best->slots[slot].busy = true;
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
      device->slots[slot].busy = false;
      --device->in_use;
    }
    slot_freed_.notify_one();
  }

  // `bytes` of device memory from `device`'s stream-ordered pool, reserved against its cap
  // (give both back: cudaFreeAsync, Unreserve); nullptr for 0 bytes.
  [[nodiscard]] absl::StatusOr<void*> AllocateDevice(Device& device, int64_t bytes,
                                                     cudaStream_t stream);

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

  // A completed call's phase times (seconds) and copied bytes, into its device's counters.
  void RecordCall(Device& device, const std::array<float, 3>& phase_ms,
                  int64_t host_to_device_bytes, int64_t device_to_host_bytes) {
    const double kernel_seconds = phase_ms[1] * 1e-3;
    const size_t bucket =
        std::lower_bound(kKernelSecondsBounds.begin(), kKernelSecondsBounds.end(), kernel_seconds) -
        kKernelSecondsBounds.begin();
    std::lock_guard<std::mutex> lock(mu_);
    DeviceTelemetry& totals = device.totals;
    ++totals.calls;
    ++totals.kernel_seconds_buckets[bucket];
    totals.kernel_seconds_sum += kernel_seconds;
    totals.host_to_device_bytes += host_to_device_bytes;
    totals.host_to_device_seconds += phase_ms[0] * 1e-3;
    totals.device_to_host_bytes += device_to_host_bytes;
    totals.device_to_host_seconds += phase_ms[2] * 1e-3;
  }

  // An upload's copies into its device's counters.
  void RecordUpload(Device& device, int64_t bytes, double copy_ms) {
    std::lock_guard<std::mutex> lock(mu_);
    device.totals.host_to_device_bytes += bytes;
    device.totals.host_to_device_seconds += copy_ms * 1e-3;
  }

  // A page-locked staging buffer for an upload, from the device's spares or a new one.
  absl::StatusOr<char*> TakeStaging(Device& device) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!device.spare_staging.empty()) {
        char* buffer = device.spare_staging.back();
        device.spare_staging.pop_back();
        return buffer;
      }
    }
    void* buffer = nullptr;
    QUANTD_CUDA_RETURN_IF_ERROR(cudaMallocHost(&buffer, kStagingBytes));
    return static_cast<char*>(buffer);
  }

  void GiveStaging(Device& device, char* buffer) {
    std::lock_guard<std::mutex> lock(mu_);
    device.spare_staging.push_back(buffer);
  }

  std::vector<std::unique_ptr<Device>> devices_;
  // The CPU backend on the calling thread: tiny tensors and small MSE searches.
  std::unique_ptr<Backend> host_;
  int64_t host_max_elements_ = 0;
  int64_t mse_search_min_pairs_ = 0;
  int64_t upload_min_bytes_ = 0;
  bool gemm_autotune_ = true;
  std::string gemm_algorithm_cache_;
  mutable std::mutex mu_;
  std::condition_variable slot_freed_;
  std::mutex engine_mu_;  // Device::lt's creation
};

Lease::Lease(CudaBackend* backend, Device* device, int slot)
    : backend_(backend), device_(device), slot_(slot) {
  // An event that fails to record only costs this call its timing: Synchronize checks.
  (void)cudaEventRecord(this->slot().marks[0], stream());
}

Lease::~Lease() {
  // A call that failed before Synchronize may still have copies in flight from its staging
  // buffer or its locked pages: let them finish before the slot is reused or pages unlocked.
  if (!locked_.empty() || staging_used_ > 0) {
    (void)cudaStreamSynchronize(stream());
    (void)cudaGetLastError();
    Reset();
  }
  backend_->Release(device_, slot_);
}

absl::Status Lease::CopyIn(void* device, const void* host, int64_t bytes) {
  host_to_device_bytes_ += bytes;
  // Nothing writes through `host`: locking a page does not change its contents.
  return Copy(device, const_cast<void*>(host), bytes, /*to_device=*/true);
}

absl::Status Lease::CopyOut(void* host, const void* device, int64_t bytes) {
  device_to_host_bytes_ += bytes;
  return Copy(const_cast<void*>(device), host, bytes, /*to_device=*/false);
}

char* Lease::Stage(int64_t bytes) {
  const int64_t start = (staging_used_ + 255) & ~int64_t{255};
  if (start + bytes > kStagingBytes) return nullptr;
  staging_used_ = start + bytes;
  return slot().staging + start;
}

absl::Status Lease::Copy(void* device, void* host, int64_t bytes, bool to_device) {
  if (bytes == 0) return absl::OkStatus();
  const cudaMemcpyKind kind = to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
  if (bytes < kLockMinBytes) {
    if (char* staged = Stage(bytes); staged != nullptr) {
      if (to_device) {
        std::memcpy(staged, host, bytes);
        QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device, staged, bytes, kind, stream()));
      } else {
        QUANTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(staged, device, bytes, kind, stream()));
        staged_out_.push_back({host, staged, bytes});
      }
      return absl::OkStatus();
    }
  } else {
    // The whole pages inside [host, host + bytes) are locked; the ragged ends go pageable.
    static const int64_t page = sysconf(_SC_PAGESIZE);
    const auto begin = reinterpret_cast<uintptr_t>(host);
    const uintptr_t first = (begin + page - 1) & ~static_cast<uintptr_t>(page - 1);
    const uintptr_t last = (begin + bytes) & ~static_cast<uintptr_t>(page - 1);
    const int64_t head = static_cast<int64_t>(first - begin);
    const int64_t middle = static_cast<int64_t>(last - first);
    char* device_bytes = static_cast<char*>(device);
    char* host_bytes = static_cast<char*>(host);
    QUANTD_RETURN_IF_ERROR(CopyLocked(device_bytes + head, host_bytes + head, middle, to_device));
    const auto pageable = [&](int64_t offset, int64_t n) -> absl::Status {
      if (n == 0) return absl::OkStatus();
      QUANTD_CUDA_RETURN_IF_ERROR(
          to_device
              ? cudaMemcpyAsync(device_bytes + offset, host_bytes + offset, n, kind, stream())
              : cudaMemcpyAsync(host_bytes + offset, device_bytes + offset, n, kind, stream()));
      return absl::OkStatus();
    };
    QUANTD_RETURN_IF_ERROR(pageable(0, head));
    return pageable(head + middle, bytes - head - middle);
  }
  QUANTD_CUDA_RETURN_IF_ERROR(to_device ? cudaMemcpyAsync(device, host, bytes, kind, stream())
                                        : cudaMemcpyAsync(host, device, bytes, kind, stream()));
  return absl::OkStatus();
}

absl::Status Lease::CopyLocked(char* device, char* host, int64_t bytes, bool to_device) {
  const cudaMemcpyKind kind = to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
  for (int64_t offset = 0; offset < bytes; offset += kLockChunkBytes) {
    const int64_t n = std::min(kLockChunkBytes, bytes - offset);
    if (cudaHostRegister(host + offset, n, cudaHostRegisterDefault) == cudaSuccess) {
      locked_.push_back(host + offset);
    } else {
      (void)cudaGetLastError();  // not sticky: this chunk simply moves from pageable memory
    }
    QUANTD_CUDA_RETURN_IF_ERROR(
        to_device ? cudaMemcpyAsync(device + offset, host + offset, n, kind, stream())
                  : cudaMemcpyAsync(host + offset, device + offset, n, kind, stream()));
  }
  return absl::OkStatus();
}

void Lease::Reset() {
  for (void* pages : locked_) (void)cudaHostUnregister(pages);
  locked_.clear();
  staged_out_.clear();
  staging_used_ = 0;
}

absl::Status Lease::Mark(int phase) {
  QUANTD_CUDA_RETURN_IF_ERROR(cudaEventRecord(slot().marks[phase], stream()));
  return absl::OkStatus();
}

absl::Status Lease::Synchronize() {
  QUANTD_RETURN_IF_ERROR(Mark(3));
  QUANTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));
  for (const StagedOut& out : staged_out_) std::memcpy(out.host, out.staged, out.bytes);
  Reset();
  std::array<float, 3> phase_ms{};
  for (int phase = 0; phase < 3; ++phase) {
    QUANTD_CUDA_RETURN_IF_ERROR(
        cudaEventElapsedTime(&phase_ms[phase], slot().marks[phase], slot().marks[phase + 1]));
  }
  backend_->RecordCall(*device_, phase_ms, host_to_device_bytes_, device_to_host_bytes_);
  return absl::OkStatus();
}

absl::Status CudaUpload::Start() {
  QUANTD_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  QUANTD_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  for (Buffer& b : buffers_) {
    QUANTD_ASSIGN_OR_RETURN(b.host, backend_->TakeStaging(*device_));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaEventCreate(&b.started));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaEventCreate(&b.copied));
  }
  QUANTD_RETURN_IF_ERROR(backend_->Reserve(*device_, bytes_));
  reserved_ = true;
  void* data = nullptr;
  const cudaError_t error = cudaMallocAsync(&data, static_cast<size_t>(bytes_), stream_);
  if (error != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky: the call goes on from host memory
    return CudaError(error, "cudaMallocAsync", __FILE__, __LINE__);
  }
  device_data_ = static_cast<char*>(data);
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

absl::Status CudaUpload::Append(std::string piece) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    QUANTD_RETURN_IF_ERROR(status_);
    const int64_t size = static_cast<int64_t>(piece.size());
    if (size > bytes_ - received_.load()) {
      return absl::InvalidArgumentError(
          absl::StrCat("an upload of ", bytes_, " bytes was handed ", received_.load() + size));
    }
    received_ += size;
    if (size > 0) pieces_.push_back(std::move(piece));
  }
  changed_.notify_all();
  return absl::OkStatus();
}

void CudaUpload::Run() {
  const absl::Status status = StageAll();
  {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    queued_all_ = status.ok();
    pieces_.clear();
  }
  changed_.notify_all();
}

absl::Status CudaUpload::StageAll() {
  QUANTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_->id));
  while (staged_ < bytes_) {
    std::string piece;
    {
      std::unique_lock<std::mutex> lock(mu_);
      changed_.wait(lock, [&] { return stopping_ || !pieces_.empty(); });
      if (pieces_.empty()) return absl::CancelledError("the upload ended before its last byte");
      piece = std::move(pieces_.front());
      pieces_.pop_front();
    }
    QUANTD_RETURN_IF_ERROR(Stage(piece));
  }
  QUANTD_CUDA_RETURN_IF_ERROR(cudaEventRecord(done_, stream_));
  return absl::OkStatus();
}

absl::Status CudaUpload::Stage(const std::string& piece) {
  const char* bytes = piece.data();
  int64_t size = static_cast<int64_t>(piece.size());
  while (size > 0) {
    Buffer& b = buffers_[current_];
    QUANTD_RETURN_IF_ERROR(Reclaim(b));
    const int64_t n = std::min(size, kStagingBytes - b.used);
    std::memcpy(b.host + b.used, bytes, n);
    b.used += n;
    staged_ += n;
    bytes += n;
    size -= n;
    if (b.used == kStagingBytes || staged_ == bytes_) QUANTD_RETURN_IF_ERROR(Send(b));
  }
  return absl::OkStatus();
}

absl::Status CudaUpload::Reclaim(Buffer& b) {
  if (!b.in_flight) return absl::OkStatus();
  QUANTD_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(b.copied));
  float ms = 0.0f;
  if (cudaEventElapsedTime(&ms, b.started, b.copied) == cudaSuccess) copy_ms_ += ms;
  b.in_flight = false;
  b.used = 0;
  return absl::OkStatus();
}

absl::Status CudaUpload::Send(Buffer& b) {
  QUANTD_CUDA_RETURN_IF_ERROR(cudaEventRecord(b.started, stream_));
  QUANTD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(device_data_ + sent_, b.host, b.used, cudaMemcpyHostToDevice, stream_));
  QUANTD_CUDA_RETURN_IF_ERROR(cudaEventRecord(b.copied, stream_));
  sent_ += b.used;
  b.in_flight = true;
  current_ = (current_ + 1) % kBuffers;
  return absl::OkStatus();
}

absl::Status CudaUpload::ConsumeOn(cudaStream_t stream) const {
  {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [&] { return queued_all_ || !status_.ok(); });
    QUANTD_RETURN_IF_ERROR(status_);
  }
  QUANTD_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream, done_, 0));
  consumer_ = stream;
  return absl::OkStatus();
}

CudaUpload::~CudaUpload() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
  (void)cudaSetDevice(device_->id);
  // Every copy out of the staging buffers ends before another upload reuses them.
  for (Buffer& b : buffers_) (void)Reclaim(b);
  if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
  (void)cudaGetLastError();
  if (device_data_ != nullptr) (void)cudaFreeAsync(device_data_, consumer_ ? consumer_ : stream_);
  if (reserved_) backend_->Unreserve(*device_, bytes_);
  for (Buffer& b : buffers_) {
    if (b.host != nullptr) backend_->GiveStaging(*device_, b.host);
    if (b.started != nullptr) (void)cudaEventDestroy(b.started);
    if (b.copied != nullptr) (void)cudaEventDestroy(b.copied);
  }
  if (done_ != nullptr) (void)cudaEventDestroy(done_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  if (sent_ > 0) backend_->RecordUpload(*device_, sent_, copy_ms_);
}

absl::StatusOr<void*> CudaBackend::AllocateDevice(Device& device, int64_t bytes,
                                                  cudaStream_t stream) {
  if (bytes == 0) return nullptr;
  QUANTD_RETURN_IF_ERROR(Reserve(device, bytes));
  void* block = nullptr;
  const cudaError_t error = cudaMallocAsync(&block, static_cast<size_t>(bytes), stream);
  if (error != cudaSuccess) {
    (void)cudaGetLastError();  // an allocation failure is not sticky: clear it, keep serving
    Unreserve(device, bytes);
    return CudaError(error, "cudaMallocAsync", __FILE__, __LINE__);
  }
  return block;
}

absl::StatusOr<void*> CudaStoredWeight::Allocate(int64_t bytes, cudaStream_t stream) {
  QUANTD_ASSIGN_OR_RETURN(void* block, backend_->AllocateDevice(*device_, bytes, stream));
  if (block != nullptr) blocks_.push_back(block);
  bytes_ += bytes;
  stream_ = stream;
  return block;
}

CudaStoredWeight::~CudaStoredWeight() {
  // Stream-ordered frees on the stream that allocated (and, when StoreWeight failed midway,
  // may still write) the blocks; a product that read them synchronized its own stream before
  // letting go. Nothing here waits for the device: a DropWeight on gRPC's thread must not block
  // behind other calls' kernels.
  (void)cudaSetDevice(device_->id);
  for (void* block : blocks_) (void)cudaFreeAsync(block, stream_);
  if (bytes_ > 0) backend_->Unreserve(*device_, bytes_);
}

absl::StatusOr<void*> DeviceArena::Allocate(int64_t bytes) {
  QUANTD_ASSIGN_OR_RETURN(void* block,
                          backend_->AllocateDevice(lease_.device(), bytes, lease_.stream()));
  if (block != nullptr) blocks_.push_back(block);
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
