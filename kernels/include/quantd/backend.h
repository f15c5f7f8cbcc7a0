// Backend: the one interface through which the server reaches the numerics. The CPU backend
// (reference/) is the oracle; the CUDA backend (cuda/) must match its codes and scales bit for
// bit.
//
//   std::unique_ptr<Backend> cpu = CreateReferenceBackend(executor);   // executor outlives it
//   QUANTD_ASSIGN_OR_RETURN(QuantSpec spec, ResolveSpec(requested, x.shape));
//   QUANTD_ASSIGN_OR_RETURN(QuantLayout layout, ComputeLayout(spec, x.shape));
//   std::string codes(layout.code_bytes, '\0');
//   std::vector<float> scales(layout.geometry.num_scales);
//   ErrorMetrics metrics;
//   QUANTD_RETURN_IF_ERROR(cpu->Quantize(x, spec, {codes.data(), ..., scales.data(), ...},
//                                        &metrics));
//
// All buffers are host memory owned by the caller; a backend that computes elsewhere stages
// them itself. Every method is thread-safe and synchronous.
#ifndef QUANTD_BACKEND_H_
#define QUANTD_BACKEND_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "quantd/double_quant.h"
#include "quantd/executor.h"
#include "quantd/gemm.h"
#include "quantd/metrics.h"
#include "quantd/spec.h"
#include "quantd/tensor.h"

namespace quantd {

// Output buffers of a quantization, sized by ComputeLayout.
struct QuantizedBuffers {
  void* codes = nullptr;
  int64_t code_bytes = 0;
  float* scales = nullptr;
  int64_t num_scales = 0;
  int32_t* zero_points = nullptr;  // num_scales of them when asymmetric, else null
  // NVFP4 (ScaleKind::kE4M3): `scales` are the E4M3 block scales' values and this receives the
  // tensor's global scale S_enc; null for every other format.
  float* global_scale = nullptr;
  // NF4 with spec.double_quant: receives the absmax values' double quantization; `scales` still
  // receive the exact absmax values the codes were computed with, and the metrics are those of
  // dequantizing with DoubleDequantize's values. Null otherwise.
  DoubleQuantized* double_quant = nullptr;
};

// Input buffers of a dequantization.
struct ConstQuantizedBuffers {
  const void* codes = nullptr;
  int64_t code_bytes = 0;
  const float* scales = nullptr;
  int64_t num_scales = 0;
  const int32_t* zero_points = nullptr;
  float global_scale = 0.0f;  // NVFP4: S_enc (finite, > 0); `scales` hold the block scales' values
};

enum class CalibrationMethod : int32_t {
  kUnspecified = 0,
  kAmax = 1,
  kPercentile = 2,  // numpy's linear-interpolation percentile of |x| (or of x for min / max)
  kMse = 3,         // per scale group, the clip ratio of a grid minimizing Σ(x - x̂)²
};

struct CalibrationOptions {
  CalibrationMethod method = CalibrationMethod::kAmax;
  double percentile = 99.99;  // kPercentile, in (0, 100]
  int search_steps = 21;      // kMse: ratios evenly spaced from 1 down to search_min_ratio
  float search_min_ratio = 0.8f;
};

// The clip ratios a kMse search tries, in order: `steps` ratios evenly spaced from 1 down to
// `min_ratio`, both included. Every backend searches this grid.
std::vector<float> ClipGrid(int steps, float min_ratio);

// What a static quantization should use, one entry per scale group.
struct CalibrationResult {
  std::vector<float> scales;
  std::vector<int32_t> zero_points;  // asymmetric only
  std::vector<float> amax;           // observed max |x| over the group's finite elements
  std::vector<float> clip_ratios;    // chosen ratio (kMse), else the spec's clip ratio
  ErrorMetrics metrics;              // of quantizing the input with `scales`
};

// Upper bounds (seconds) of the kernel-time histogram in DeviceTelemetry: 5 µs to 10 s, about
// three per decade, so a dashboard sees both a 4 KiB request's kernels and a 2 GB tensor's.
inline constexpr std::array<double, 19> kKernelSecondsBounds = {
    5e-6, 1e-5,   2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
    1e-2, 2.5e-2, 5e-2,   0.1,  0.25, 0.5,    1.0,  2.5,  10.0};

// What a backend that drives accelerators knows about each of them (the CPU backend: nothing).
// Counters are cumulative since the backend started; the server exports them as metrics.
struct DeviceTelemetry {
  int device = 0;
  std::string name;  // "NVIDIA H200"
  // The stream pool: its size and how many streams calls in flight hold.
  int streams = 0;
  int streams_busy = 0;
  // Device memory: the cap, what calls in flight have reserved against it, and what the
  // device's memory pool holds (freed blocks stay there for the next call of the same size).
  int64_t memory_cap_bytes = 0;
  int64_t memory_in_use_bytes = 0;
  int64_t memory_pool_bytes = 0;
  // Completed calls; kernel time per call (CUDA events around the call's kernels) as a
  // histogram over kKernelSecondsBounds (counts per bucket, not cumulative; the last entry
  // counts what lies above every bound) and a sum.
  int64_t calls = 0;
  std::array<int64_t, kKernelSecondsBounds.size() + 1> kernel_seconds_buckets{};
  double kernel_seconds_sum = 0.0;
  // Host <-> device copies: bytes, and seconds of the copy phases (CUDA events).
  int64_t host_to_device_bytes = 0;
  double host_to_device_seconds = 0.0;
  int64_t device_to_host_bytes = 0;
  double device_to_host_seconds = 0.0;
  // GEMM products by the path that ran them (kGemmPathNames): FP8 or INT8 tensor cores, or
  // the operands' x̂ in fp32 (simulated formats, and shapes the tensor cores refuse).
  std::array<int64_t, 3> gemm_products{};
};
inline constexpr std::array<const char*, 3> kGemmPathNames = {"fp8", "int8", "fp32"};

// A tensor arriving in pieces (a client stream), handed to the backend as it arrives so that
// moving it to the device overlaps with receiving it. The upload then holds the only copy: the
// call that computes the tensor gets a TensorView with `upload` set and `data` null, and the
// upload must outlive that call. Destroying an upload releases what it holds.
class TensorUpload {
 public:
  virtual ~TensorUpload() = default;
  // The next bytes of the tensor, taken over (moved, not copied). An error once the upload
  // has failed (its pieces are then lost: the call fails with it) or when the pieces would
  // exceed the declared size.
  [[nodiscard]] virtual absl::Status Append(std::string piece) = 0;
  // Bytes handed over so far.
  virtual int64_t received() const = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // A TensorUpload for a float tensor of `bytes` bytes about to arrive in pieces, or null
  // where this backend gains nothing from one (the CPU backend computes from host memory; the
  // CUDA backend takes large tensors only). An error means no upload; the call can still be
  // computed from host memory.
  [[nodiscard]] virtual absl::StatusOr<std::unique_ptr<TensorUpload>> BeginUpload(
      DType /*dtype*/, const Shape& /*shape*/, int64_t /*bytes*/) {
    return nullptr;
  }

  virtual absl::string_view name() const = 0;

  // One entry per device the backend drives; empty for a backend without devices.
  virtual std::vector<DeviceTelemetry> Telemetry() const { return {}; }

  // Quantizes `input` (F32, F16 or BF16) with `spec`, resolved for input.shape. Fills codes,
  // scales and (asymmetric) zero-points; fills `metrics` when it is not null. input.data may
  // be null when input.upload, one of this backend's, holds all input.bytes.
  // InvalidArgument when the input holds NaN and the format has none (nan_policy REJECT).
  [[nodiscard]] virtual absl::Status Quantize(const TensorView& input, const QuantSpec& spec,
                                              const QuantizedBuffers& out,
                                              ErrorMetrics* metrics) = 0;

  // x̂ = s · decode(q) into `out` (F32, F16 or BF16, shaped as the original tensor). NF4 with
  // double quantization takes DoubleDequantize's absmax values as its scales.
  [[nodiscard]] virtual absl::Status Dequantize(const ConstQuantizedBuffers& in,
                                                const QuantSpec& spec,
                                                const MutableTensorView& out) = 0;

  // Quantize then dequantize in one pass (fake quantization), without materializing codes.
  [[nodiscard]] virtual absl::Status QuantDequant(const TensorView& input, const QuantSpec& spec,
                                                  const MutableTensorView& out,
                                                  ErrorMetrics* metrics) = 0;

  // The scales (and zero-points) a static quantization of `input` should use.
  [[nodiscard]] virtual absl::Status Calibrate(const TensorView& input, const QuantSpec& spec,
                                               const CalibrationOptions& options,
                                               CalibrationResult* result) = 0;

  // OUT = α · Â · B̂ᵀ + β · C + bias (quantd/gemm.h), `spec` resolved by ResolveGemmSpec for
  // the operands' shapes; fills `metrics` (out against the product of the unquantized
  // operands) when it is not null.
  [[nodiscard]] virtual absl::Status Gemm(const GemmOperands& operands, const GemmSpec& spec,
                                          const MutableTensorView& out, ErrorMetrics* metrics) = 0;

  // Quantizes `weight` ([N, K] or [batch, N, K], F32 / F16 / BF16 in host memory) with `spec`
  // (resolved for its shape; kUnspecified keeps it unquantized) once, and keeps what this
  // backend's products read (GemmOperands::b_stored); with `keep_original`, its unquantized
  // values too. Fills `metrics` (the weight's quantization error) when it is not null.
  // ResourceExhausted when the backend's memory cannot hold it.
  [[nodiscard]] virtual absl::StatusOr<std::unique_ptr<StoredWeight>> StoreWeight(
      const TensorView& weight, const QuantSpec& spec, bool keep_original,
      ErrorMetrics* metrics) = 0;
  // The bytes StoreWeight would hold for a weight of `layout` (its shape and numel; for a
  // quantized `spec`, that spec's ComputeLayout), so that a caller can refuse one above its
  // budget before any work.
  virtual int64_t StoredWeightBytes(const QuantSpec& spec, const QuantLayout& layout,
                                    bool keep_original) const = 0;
};

// ---- Shared by every backend, so that each refuses the same requests in the same words. ----

// The layout of quantizing `input` with `spec`, after checking that the input is F32, F16 or
// BF16 and holds as many bytes as its shape says (in host memory, or in an upload).
[[nodiscard]] absl::StatusOr<QuantLayout> LayoutOfFloatInput(const TensorView& input,
                                                             const QuantSpec& spec);
// InvalidArgument when input.data is null (its bytes only in an upload): for a backend that
// computes from host memory.
[[nodiscard]] absl::Status CheckInHostMemory(const TensorView& input);
// The layout of dequantizing `in` into `out`, after checking that `out` is F32, F16 or BF16
// of the right byte length and that `in` holds what the layout needs.
[[nodiscard]] absl::StatusOr<QuantLayout> LayoutOfDequantization(const ConstQuantizedBuffers& in,
                                                                 const QuantSpec& spec,
                                                                 const MutableTensorView& out);
// NVFP4's element scales d_b = fp32(block_scale / global_scale) of `in`, one per scale
// group; empty for formats whose element scales are `in.scales` themselves.
std::vector<float> ElementScalesOf(const ConstQuantizedBuffers& in, const QuantSpec& spec);
// Whether `spec` and `options` describe a calibration that can run.
[[nodiscard]] absl::Status CheckCalibration(const QuantSpec& spec,
                                            const CalibrationOptions& options);
// InvalidArgument for flat input element `index` being NaN where the spec rejects NaN.
absl::Status NanRejectedError(Format format, int64_t index);

// A GEMM through `backend`'s own fake quantization: Â and B̂ from backend.QuantDequant (so
// every backend's are the same bits), then HostGemm on `executor`.
[[nodiscard]] absl::Status GemmOfFakeQuantized(Backend& backend, Executor* executor,
                                               const GemmOperands& operands, const GemmSpec& spec,
                                               const MutableTensorView& out, ErrorMetrics* metrics);
// StoreWeight for a backend whose products read host memory: the weight's x̂ in fp32 from
// backend.QuantDequant (and its fp32 values with `keep_original`), which GemmOfFakeQuantized
// multiplies as it would an inline B's.
[[nodiscard]] absl::StatusOr<std::unique_ptr<StoredWeight>> StoreWeightOnHost(
    Backend& backend, const TensorView& weight, const QuantSpec& spec, bool keep_original,
    ErrorMetrics* metrics);
int64_t HostStoredWeightBytes(const QuantSpec& spec, const QuantLayout& layout, bool keep_original);
// InvalidArgument for FlatQuant input element `index` (value `v`): NaN (unless nan_policy is
// ZERO) or ±Inf, which its transform would spread over the element's row.
absl::Status FlatquantInputError(Format format, int64_t index, float v);
// InvalidArgument for an asymmetric range (max - min) of scale group `group` overflowing fp32.
absl::Status RangeOverflowError(int64_t group);

// The CPU backend. Runs its loops on `executor` (InlineExecutor() when null), which must
// outlive it.
std::unique_ptr<Backend> CreateReferenceBackend(Executor* executor);

}  // namespace quantd

#endif  // QUANTD_BACKEND_H_
