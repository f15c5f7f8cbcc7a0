// Quantized and simulated-format matrix products: OUT = α · Â · B̂ᵀ + β · C + bias, where Â and
// B̂ are A and B quantized as their specs say and dequantized (the exact values the codes and
// scales stand for), A holds activations [M, K] and B weights in nn.Linear's layout [N, K].
// Every backend computes the same Â and B̂ bit for bit (they are QuantDequant's outputs); the
// products then agree to fp32-accumulation error.
//
//   GemmSpec requested;
//   requested.a.format = requested.b.format = Format::kFp8E4M3;  // per token × per channel
//   QUANTD_ASSIGN_OR_RETURN(GemmSpec spec, ResolveGemmSpec(requested, a.shape, b.shape));
//   QUANTD_RETURN_IF_ERROR(backend->Gemm({a, b}, spec, out, &metrics));
#ifndef QUANTD_GEMM_H_
#define QUANTD_GEMM_H_

#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "quantd/executor.h"
#include "quantd/metrics.h"
#include "quantd/spec.h"
#include "quantd/tensor.h"

namespace quantd {

struct GemmSpec {
  // How each operand is quantized before the product. A format of kUnspecified leaves that
  // operand as given (read as fp32); an unspecified granularity means per token (one scale per
  // row: A's tokens, B's output channels) where the format allows it, else the format's own
  // blocks (MX, NVFP4, NF4).
  QuantSpec a;
  QuantSpec b;
  float alpha = 1.0f;
  float beta = 0.0f;  // scales C, which must be given when beta is not 0
};

// A GEMM weight quantized once and kept by the backend that stored it (Backend::StoreWeight)
// for any number of later products (GemmOperands::b_stored): what that backend's products
// read, in device memory on the GPU, in host memory on the CPU. Thread-safe to read from
// concurrent products. The backend must outlive it.
class StoredWeight {
 public:
  StoredWeight(DType dtype, Shape shape, const QuantSpec& spec, bool keeps_original)
      : dtype_(dtype), shape_(std::move(shape)), spec_(spec), keeps_original_(keeps_original) {}
  virtual ~StoredWeight() = default;
  StoredWeight(const StoredWeight&) = delete;
  StoredWeight& operator=(const StoredWeight&) = delete;

  DType dtype() const { return dtype_; }  // the weight's as given
  const Shape& shape() const { return shape_; }
  const QuantSpec& spec() const { return spec_; }  // resolved; kUnspecified: not quantized
  // Whether the unquantized values are kept too: the metrics' reference product then uses them;
  // else it uses the quantized weight (the metrics measure the activations' quantization only).
  bool keeps_original() const { return keeps_original_; }
  // Memory it holds (the device's for a GPU backend).
  virtual int64_t bytes() const = 0;

 private:
  DType dtype_;
  Shape shape_;
  QuantSpec spec_;
  bool keeps_original_;
};

// InvalidArgument unless `shape` is a weight's: [N, K] or [batch, N, K] (nn.Linear's layout).
[[nodiscard]] absl::Status CheckWeightShape(const Shape& shape);
// Whether a stored weight holds its unquantized values: asked for, or it is not quantized (they
// are then what the product reads).
inline bool StoresOriginal(const QuantSpec& spec, bool keep_original) {
  return keep_original || spec.format == Format::kUnspecified;
}

struct GemmOperands {
  TensorView a;  // [M, K] or [batch, M, K]; F32, F16 or BF16
  TensorView b;  // [N, K] or [batch, N, K]; a 2-D B serves every batch
  // When set, B is this stored weight: `b` then describes it (dtype and shape, no data) and
  // GemmSpec::b is its spec. It must be the computing backend's own.
  const StoredWeight* b_stored = nullptr;
  // Optional (dtype kUnspecified: none): bias [N], added to every row; C [M, N] or
  // [batch, M, N] (a 2-D C serves every batch), scaled by beta.
  TensorView bias;
  TensorView c;
};

struct GemmDims {
  int64_t batch = 1;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  bool b_batched = false;  // B holds one matrix per batch (else one for all)
  bool c_batched = false;
  Shape out_shape;  // [M, N], or [batch, M, N] when A has a batch axis
};

// Fills the operands' defaults (see GemmSpec) and resolves each operand's spec for its shape.
// The quantization rules are ResolveSpec's; a GEMM adds none of its own.
[[nodiscard]] absl::StatusOr<GemmSpec> ResolveGemmSpec(const GemmSpec& requested,
                                                       const Shape& a_shape, const Shape& b_shape);

// One operand's spec resolved as ResolveGemmSpec resolves it (`name`: "A" or "B", for messages):
// also what a stored weight (Backend::StoreWeight) is quantized with.
[[nodiscard]] absl::StatusOr<QuantSpec> ResolveGemmOperandSpec(const char* name,
                                                               const QuantSpec& requested,
                                                               const Shape& shape);

// The GEMM's dimensions, after checking every operand: float dtypes, ranks, matching K, batch
// and N, byte lengths in host memory, C given when beta is not 0. Every backend refuses the
// same requests in these words.
[[nodiscard]] absl::StatusOr<GemmDims> CheckGemmOperands(const GemmOperands& operands,
                                                         const GemmSpec& spec);
// That `out` is F32, F16 or BF16 shaped dims.out_shape, with its bytes.
[[nodiscard]] absl::Status CheckGemmOutput(const GemmDims& dims, const MutableTensorView& out);

// `status` with the operand named in front of its message ("GEMM operand B: ..."); OK stays OK.
[[nodiscard]] absl::Status GemmOperandError(const char* name, const absl::Status& status);

// The product on the host from the dequantized operands â ([batch?, M, K] as fp32) and b̂
// ([batch?, N, K]): out = RN(α · Σ_k â·b̂ + β · c + bias), each dot product summed in fp64 in a
// fixed order (so any thread count gives the same bits), then stored as out.dtype. With
// `metrics`, the error of out against the same product of the unquantized operands a and b
// (fp32, same shapes), also in fp64.
void HostGemm(Executor* executor, const GemmDims& dims, const float* a_hat, const float* b_hat,
              const float* a, const float* b, const GemmOperands& operands, const GemmSpec& spec,
              const MutableTensorView& out, ErrorMetrics* metrics);

}  // namespace quantd

#endif  // QUANTD_GEMM_H_
