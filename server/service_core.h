// QuantizerCore: the quantd service without a transport. It validates a request, runs it on a
// Backend and builds the response proto. The gRPC server (server.cc) calls it from its worker
// threads; `quantctl` without --server calls it in-process (the "embedded" mode), which is why
// nothing here depends on gRPC server types, the scheduler or Prometheus.
//
//   std::unique_ptr<quantd::Executor> pool = quantd::CreateThreadPoolExecutor(/*threads=*/0);
//   std::unique_ptr<quantd::Backend> cpu = quantd::CreateReferenceBackend(pool.get());
//   quantd::server::QuantizerCore core(cpu.get(), quantd::server::CoreOptions{});
//   absl::StatusOr<quantd::v1::QuantizeResponse> response = core.Quantize(request);
//
// Validation comes first and touches no bulk bytes beyond reading the (small) scale tensors:
// dtypes, ranks, non-negative dims, overflow-checked sizes, byte lengths equal to shape ×
// dtype, the spec against the format's rules (ResolveSpec), the quantized tensors against
// ComputeLayout. Every refusal is INVALID_ARGUMENT with a message that names the field and says
// what to fix; RESOURCE_EXHAUSTED is kept for conditions a retry may cure (allocation failure).
//
// The Plan* functions are that validation on its own. Streaming handlers call them on the
// header frame with DataCheck::kAtMost (the bulk bytes have not arrived) to learn how many
// bytes to expect before accepting, buffering or allocating anything.
//
// Buffers: requests are read in place (the backend gets views of the request's bytes) and
// responses are written in place (the response's `data` strings are sized once and the backend
// writes into them), so a multi-GB tensor is never copied here. All methods are thread-safe.
#ifndef QUANTD_SERVER_SERVICE_CORE_H_
#define QUANTD_SERVER_SERVICE_CORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "quantd/backend.h"
#include "quantd/format.h"
#include "quantd/spec.h"
#include "quantd/tensor.h"
#include "quantd/v1/quantd.pb.h"
#include "server/weights.h"

namespace quantd::server {

struct CoreOptions {
  // Largest tensor (input or output, in bytes) a request may involve. Checked against the
  // declared shape before anything is allocated.
  int64_t max_tensor_bytes = int64_t{16} << 30;
  // Largest rank accepted (never above quantd::kMaxRank).
  int max_rank = kMaxRank;
  // Calibrate: most grid points an MSE search may ask for.
  int max_search_steps = 1000;
  // What registered weights (RegisterWeight) may hold together, in bytes of the backend's
  // memory; 0: half of the devices' memory cap under a backend with devices (CUDA), 4 GiB of
  // host memory without.
  int64_t max_weight_bytes = 0;

  // Reported by GetCapabilities only; the transport enforces them (0: not applicable).
  int64_t max_message_bytes = 0;
  int64_t max_queue = 0;
  int64_t workers = 0;
  int64_t stream_chunk_bytes = 0;
};

// How much of a request's bulk data the validation expects to be present.
enum class DataCheck {
  kExact,   // every byte (a unary request): lengths must equal what the shapes say
  kAtMost,  // a stream header: whatever is present must not exceed what the shapes say
};

// What validating a request established, before any bulk work.
struct RequestPlan {
  QuantSpec spec;                            // resolved: no field left unspecified
  QuantLayout layout;                        // of `spec` over the logical tensor's shape
  DType input_dtype = DType::kUnspecified;   // the float tensor's (Quantize, QuantDequant, ...)
  DType output_dtype = DType::kUnspecified;  // Dequantize / QuantDequant output
  // Bulk bytes the request carries in total: the input tensor, or for Dequantize codes +
  // scales + zero-points (the three below).
  int64_t input_bytes = 0;
  int64_t code_bytes = 0;
  int64_t scale_bytes = 0;
  int64_t zero_point_bytes = 0;
  // Bulk bytes of the response's tensors (codes + scales + zero-points, or the output tensor).
  int64_t output_bytes = 0;
};

class QuantizerCore {
 public:
  // `backend` must outlive the core.
  QuantizerCore(Backend* backend, CoreOptions options);

  QuantizerCore(const QuantizerCore&) = delete;
  QuantizerCore& operator=(const QuantizerCore&) = delete;

  [[nodiscard]] absl::StatusOr<v1::QuantizeResponse> Quantize(
      const v1::QuantizeRequest& request) const {
    return Quantize(request, nullptr);
  }
  // `upload`, when set, holds all of the input's bytes (BeginUpload) and request.input.data
  // none.
  [[nodiscard]] absl::StatusOr<v1::QuantizeResponse> Quantize(const v1::QuantizeRequest& request,
                                                              const TensorUpload* upload) const;
  [[nodiscard]] absl::StatusOr<v1::DequantizeResponse> Dequantize(
      const v1::DequantizeRequest& request) const;
  [[nodiscard]] absl::StatusOr<v1::QuantDequantResponse> QuantDequant(
      const v1::QuantDequantRequest& request) const;
  [[nodiscard]] absl::StatusOr<v1::CalibrateResponse> Calibrate(
      const v1::CalibrateRequest& request) const;
  [[nodiscard]] absl::StatusOr<v1::GemmResponse> Gemm(const v1::GemmRequest& request) const;
  // Registered weights (server/weights.h): RESOURCE_EXHAUSTED above CoreOptions::
  // max_weight_bytes, NOT_FOUND for an unknown handle.
  [[nodiscard]] absl::StatusOr<v1::RegisterWeightResponse> RegisterWeight(
      const v1::RegisterWeightRequest& request) const;
  v1::ListWeightsResponse ListWeights() const;
  [[nodiscard]] absl::StatusOr<v1::DropWeightResponse> DropWeight(
      const v1::DropWeightRequest& request) const;
  // How many weights are registered and the bytes counted against the cap (for the gauges).
  std::pair<int64_t, int64_t> RegisteredWeights() const;
  v1::GetCapabilitiesResponse GetCapabilities() const;

  // The backend's TensorUpload for the float input of a planned streamed request (null where
  // the backend has no use for one).
  [[nodiscard]] absl::StatusOr<std::unique_ptr<TensorUpload>> BeginUpload(
      const RequestPlan& plan) const;

  // Validation only (see the file comment). With kExact these check everything the methods
  // above check before computing, including that static / dequantize scales are finite and
  // positive; with kAtMost, everything that does not need the bulk bytes.
  [[nodiscard]] absl::StatusOr<RequestPlan> PlanQuantize(const v1::QuantizeRequest& request,
                                                         DataCheck check) const;
  [[nodiscard]] absl::StatusOr<RequestPlan> PlanDequantize(const v1::DequantizeRequest& request,
                                                           DataCheck check) const;
  [[nodiscard]] absl::StatusOr<RequestPlan> PlanQuantDequant(const v1::QuantDequantRequest& request,
                                                             DataCheck check) const;
  [[nodiscard]] absl::StatusOr<RequestPlan> PlanCalibrate(const v1::CalibrateRequest& request,
                                                          DataCheck check) const;
  // GEMM: `spec` is B's (the weights' format labels the call; A's when B is not quantized),
  // input_bytes every operand's, output_bytes the product's.
  [[nodiscard]] absl::StatusOr<RequestPlan> PlanGemm(const v1::GemmRequest& request,
                                                     DataCheck check) const;
  // RegisterWeight: `spec` the weight's (unspecified: kept unquantized), input_bytes the
  // weight's; output_bytes 0 (the response carries no tensor).
  [[nodiscard]] absl::StatusOr<RequestPlan> PlanRegisterWeight(
      const v1::RegisterWeightRequest& request, DataCheck check) const;

  absl::string_view backend_name() const { return backend_->name(); }
  const CoreOptions& options() const { return options_; }

 private:
  // A float tensor as every method checks one: its dtype, shape (overflow-checked, at most
  // max_rank), bytes within max_tensor_bytes, and data as `check` says; `field` names it.
  struct FloatTensor {
    DType dtype = DType::kUnspecified;
    Shape shape;
    int64_t numel = 0;
    int64_t bytes = 0;
  };
  [[nodiscard]] absl::StatusOr<FloatTensor> PlanFloatTensor(const v1::Tensor& tensor,
                                                            absl::string_view field,
                                                            DataCheck check) const;
  // The float tensor of Quantize / QuantDequant / Calibrate and its spec.
  [[nodiscard]] absl::StatusOr<RequestPlan> PlanFloatInput(const v1::Tensor& input,
                                                           const v1::QuantSpec& spec_proto,
                                                           DataCheck check) const;
  [[nodiscard]] absl::Status CheckTensorBytes(absl::string_view field, int64_t bytes) const;
  struct GemmPlan;
  [[nodiscard]] absl::StatusOr<GemmPlan> PlanGemmOperands(const v1::GemmRequest& request,
                                                          DataCheck check) const;

  Backend* backend_;
  CoreOptions options_;
  std::unique_ptr<WeightRegistry> weights_;
};

// Views a float tensor proto's bytes (no copy). The proto must outlive the view.
TensorView ViewOf(const v1::Tensor& tensor, const Shape& shape, DType dtype);

}  // namespace quantd::server

#endif  // QUANTD_SERVER_SERVICE_CORE_H_
