// GEMM specs, operand checks and the host product (quantd/gemm.h).
#include "quantd/gemm.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "quantd/backend.h"
#include "quantd/status.h"
#include "row_ops.h"

namespace quantd {
namespace {

// "A [2, 3]": an operand's name and shape, for messages.
std::string Described(const char* name, const Shape& shape) {
  return absl::StrCat(name, " ", ShapeToString(shape));
}

absl::Status CheckFloatOperand(const char* name, const TensorView& t) {
  if (!IsFloatInput(t.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("GEMM operand ", name, " must be F32, F16 or ",
                                                   "BF16, not ", DTypeName(t.dtype)));
  }
  if (t.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("GEMM operand ", name, " has no data in host memory"));
  }
  return CheckByteLength(t.dtype, t.shape, t.bytes);
}

bool Given(const TensorView& t) { return t.dtype != DType::kUnspecified; }

// One operand's spec: unquantized stays so; an open granularity becomes per token (rows)
// where the format allows it.
absl::StatusOr<QuantSpec> ResolveOperand(const char* name, QuantSpec spec, const Shape& shape) {
  if (spec.format == Format::kUnspecified) return spec;
  if (spec.granularity == Granularity::kUnspecified &&
      FormatAllows(spec.format, Granularity::kToken)) {
    spec.granularity = Granularity::kToken;
  }
  absl::StatusOr<QuantSpec> resolved = ResolveSpec(spec, shape);
  QUANTD_RETURN_IF_ERROR(GemmOperandError(name, resolved.status()));
  return resolved;
}

// Σ_k a[k]·b[k] in fp64: four interleaved partial sums (k mod 4) added in a fixed order, so
// the result does not depend on how rows are split over threads.
double Dot(const float* a, const float* b, int64_t k) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int64_t i = 0;
  for (; i + 4 <= k; i += 4) {
    s0 += static_cast<double>(a[i]) * b[i];
    s1 += static_cast<double>(a[i + 1]) * b[i + 1];
    s2 += static_cast<double>(a[i + 2]) * b[i + 2];
    s3 += static_cast<double>(a[i + 3]) * b[i + 3];
  }
  for (; i < k; ++i) s0 += static_cast<double>(a[i]) * b[i];
  return (s0 + s1) + (s2 + s3);
}

}  // namespace

absl::Status GemmOperandError(const char* name, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat("GEMM operand ", name, ": ", status.message()));
}

absl::StatusOr<QuantSpec> ResolveGemmOperandSpec(const char* name, const QuantSpec& requested,
                                                 const Shape& shape) {
  return ResolveOperand(name, requested, shape);
}

absl::StatusOr<GemmSpec> ResolveGemmSpec(const GemmSpec& requested, const Shape& a_shape,
                                         const Shape& b_shape) {
  if (!std::isfinite(requested.alpha) || !std::isfinite(requested.beta)) {
    return absl::InvalidArgumentError(absl::StrCat("GEMM alpha and beta must be finite, not ",
                                                   requested.alpha, " and ", requested.beta));
  }
  GemmSpec spec = requested;
  QUANTD_ASSIGN_OR_RETURN(spec.a, ResolveOperand("A", requested.a, a_shape));
  QUANTD_ASSIGN_OR_RETURN(spec.b, ResolveOperand("B", requested.b, b_shape));
  return spec;
}

absl::StatusOr<GemmDims> CheckGemmOperands(const GemmOperands& operands, const GemmSpec& spec) {
  const Shape& a = operands.a.shape;
  const Shape& b = operands.b.shape;
  if (a.size() != 2 && a.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat("GEMM operand ", Described("A", a),
                                                   " must be [M, K] or [batch, M, K] activations"));
  }
  if (b.size() != 2 && b.size() != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("GEMM operand ", Described("B", b),
                     " must be [N, K] or [batch, N, K] weights (nn.Linear's layout)"));
  }
  if (b.size() == 3 && a.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat("a batched ", Described("B", b),
                                                   " needs a batched A, not ", Described("A", a)));
  }
  QUANTD_RETURN_IF_ERROR(CheckFloatOperand("A", operands.a));
  if (operands.b_stored == nullptr) {
    QUANTD_RETURN_IF_ERROR(CheckFloatOperand("B", operands.b));
  } else if (operands.b.shape != operands.b_stored->shape() ||
             spec.b.format != operands.b_stored->spec().format ||
             spec.b.granularity != operands.b_stored->spec().granularity) {
    return absl::InvalidArgumentError(
        absl::StrCat("GEMM operand B describes ", ShapeToString(operands.b.shape),
                     " but its stored weight is ", ShapeToString(operands.b_stored->shape()),
                     " with its own spec: pass the stored weight's shape and spec"));
  }
  GemmDims dims;
  dims.batch = a.size() == 3 ? a[0] : 1;
  dims.m = a[a.size() - 2];
  dims.k = a.back();
  dims.n = b[b.size() - 2];
  dims.b_batched = b.size() == 3;
  if (b.back() != dims.k) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GEMM operands disagree on K: ", Described("A", a), " has ", dims.k, ", ",
        Described("B", b), " has ", b.back(), " (B is [N, K], nn.Linear's weight layout)"));
  }
  if (dims.b_batched && b[0] != dims.batch) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GEMM operands disagree on the batch: ", Described("A", a), ", ", Described("B", b)));
  }
  dims.out_shape = a.size() == 3 ? Shape{dims.batch, dims.m, dims.n} : Shape{dims.m, dims.n};
  if (Given(operands.bias)) {
    QUANTD_RETURN_IF_ERROR(CheckFloatOperand("bias", operands.bias));
    if (operands.bias.shape != Shape{dims.n}) {
      return absl::InvalidArgumentError(absl::StrCat("GEMM bias must be [N] = [", dims.n, "], not ",
                                                     ShapeToString(operands.bias.shape)));
    }
  }
  if (Given(operands.c)) {
    QUANTD_RETURN_IF_ERROR(CheckFloatOperand("C", operands.c));
    const Shape matrix{dims.m, dims.n};
    dims.c_batched = operands.c.shape == dims.out_shape && a.size() == 3;
    if (operands.c.shape != matrix && !dims.c_batched) {
      return absl::InvalidArgumentError(absl::StrCat(
          "GEMM operand ", Described("C", operands.c.shape), " must be [M, N] = ",
          ShapeToString(matrix), " or the output's shape ", ShapeToString(dims.out_shape)));
    }
  } else if (spec.beta != 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("GEMM beta is ", spec.beta, " but no C is given: send C or leave beta 0"));
  }
  return dims;
}

absl::Status CheckGemmOutput(const GemmDims& dims, const MutableTensorView& out) {
  if (!IsFloatInput(out.dtype) || out.shape != dims.out_shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("a GEMM writes F32, F16 or BF16 shaped ", ShapeToString(dims.out_shape),
                     ", not ", DTypeName(out.dtype), " ", ShapeToString(out.shape)));
  }
  return CheckByteLength(out.dtype, out.shape, out.bytes);
}

void HostGemm(Executor* executor, const GemmDims& dims, const float* a_hat, const float* b_hat,
              const float* a, const float* b, const GemmOperands& operands, const GemmSpec& spec,
              const MutableTensorView& out, ErrorMetrics* metrics) {
  const int64_t rows = dims.batch * dims.m;
  const bool has_bias = Given(operands.bias);
  const bool has_c = Given(operands.c) && spec.beta != 0.0f;
  std::vector<MetricSums> partial(static_cast<size_t>(std::max<int64_t>(rows, 1)));
  // Rows of the output: each thread walks B once per row (B's rows stay in cache for small
  // N·K; large products are the GPU's job).
  executor->ParallelFor(
      rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(dims.n * dims.k, 1)),
      [&](int64_t r0, int64_t r1) {
        for (int64_t row = r0; row < r1; ++row) {
          const int64_t batch = row / dims.m, m = row % dims.m;
          const int64_t b_offset = dims.b_batched ? batch * dims.n * dims.k : 0;
          const int64_t c_row = (dims.c_batched ? row : m) * dims.n;
          MetricSums& sums = partial[static_cast<size_t>(row)];
          for (int64_t n = 0; n < dims.n; ++n) {
            double extra = 0.0;  // β·c + bias, shared by both products
            if (has_c) {
              extra += static_cast<double>(spec.beta) *
                       LoadAsFloat(operands.c.dtype, operands.c.data, c_row + n);
            }
            if (has_bias) {
              extra += LoadAsFloat(operands.bias.dtype, operands.bias.data, n);
            }
            const int64_t b_row = b_offset + n * dims.k;
            const double product =
                spec.alpha * Dot(a_hat + row * dims.k, b_hat + b_row, dims.k) + extra;
            const int64_t i = row * dims.n + n;
            StoreFromFloat(out.dtype, out.data, i, static_cast<float>(product));
            if (metrics != nullptr) {
              const double exact = spec.alpha * Dot(a + row * dims.k, b + b_row, dims.k) + extra;
              sums.Add(static_cast<float>(exact), LoadAsFloat(out.dtype, out.data, i));
            }
          }
        }
      });
  if (metrics != nullptr) {
    MetricSums total;  // merged in row order: the same bits for any thread count
    for (const MetricSums& sums : partial) total.Merge(sums);
    *metrics = FinalizeMetrics(total);
  }
}

namespace {

// StoreWeightOnHost's weight: x̂ in fp32 (QuantDequant's bits) and, when kept or when the
// weight is not quantized, its values in fp32.
class HostStoredWeight final : public StoredWeight {
 public:
  using StoredWeight::StoredWeight;
  int64_t bytes() const override { return 4 * static_cast<int64_t>(hat.size() + original.size()); }
  // What the product reads.
  const float* values() const { return hat.empty() ? original.data() : hat.data(); }

  std::vector<float> hat;
  std::vector<float> original;
};

// An operand as the product sees it: fake-quantized by `backend` as `spec` says, into
// `quantized`, or its fp32 conversion `plain` when it is not quantized. `plain` is filled
// whenever it is needed: unquantized, or for the metrics' exact product (`want_plain`).
absl::StatusOr<const float*> OperandForProduct(Backend& backend, const char* name,
                                               const TensorView& t, const QuantSpec& spec,
                                               bool want_plain, std::vector<float>* plain,
                                               std::vector<float>* quantized) {
  const int64_t numel = t.bytes / DTypeSize(t.dtype);
  const bool quantize = spec.format != Format::kUnspecified;
  if (want_plain || !quantize) {
    plain->resize(static_cast<size_t>(numel));
    reference::LoadRow(t, 0, numel, plain->data());
  }
  if (!quantize) return plain->data();
  quantized->resize(static_cast<size_t>(numel));
  QUANTD_RETURN_IF_ERROR(GemmOperandError(
      name, backend.QuantDequant(t, spec, {DType::kF32, t.shape, quantized->data(), numel * 4},
                                 nullptr)));
  return quantized->data();
}

}  // namespace

absl::Status GemmOfFakeQuantized(Backend& backend, Executor* executor, const GemmOperands& operands,
                                 const GemmSpec& spec, const MutableTensorView& out,
                                 ErrorMetrics* metrics) {
  QUANTD_ASSIGN_OR_RETURN(const GemmDims dims, CheckGemmOperands(operands, spec));
  QUANTD_RETURN_IF_ERROR(CheckGemmOutput(dims, out));
  const bool exact = metrics != nullptr;
  std::vector<float> a, a_quantized, b, b_quantized;
  QUANTD_ASSIGN_OR_RETURN(const float* a_hat, OperandForProduct(backend, "A", operands.a, spec.a,
                                                                exact, &a, &a_quantized));
  if (operands.b_stored != nullptr) {
    const auto* stored = dynamic_cast<const HostStoredWeight*>(operands.b_stored);
    if (stored == nullptr) {
      return absl::InvalidArgumentError(
          "GEMM operand B is a weight stored by another backend than the one computing");
    }
    // Without its original, the reference product multiplies the quantized weight.
    const float* b_hat = stored->values();
    const float* b_plain = stored->keeps_original() ? stored->original.data() : b_hat;
    HostGemm(executor, dims, a_hat, b_hat, a.data(), b_plain, operands, spec, out, metrics);
    return absl::OkStatus();
  }
  QUANTD_ASSIGN_OR_RETURN(const float* b_hat, OperandForProduct(backend, "B", operands.b, spec.b,
                                                                exact, &b, &b_quantized));
  HostGemm(executor, dims, a_hat, b_hat, a.data(), b.data(), operands, spec, out, metrics);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StoredWeight>> StoreWeightOnHost(Backend& backend,
                                                                const TensorView& weight,
                                                                const QuantSpec& spec,
                                                                bool keep_original,
                                                                ErrorMetrics* metrics) {
  QUANTD_RETURN_IF_ERROR(CheckWeightShape(weight.shape));
  QUANTD_RETURN_IF_ERROR(CheckFloatOperand("B", weight));
  const bool quantize = spec.format != Format::kUnspecified;
  auto stored = std::make_unique<HostStoredWeight>(weight.dtype, weight.shape, spec,
                                                   StoresOriginal(spec, keep_original));
  const int64_t numel = weight.bytes / DTypeSize(weight.dtype);
  if (stored->keeps_original()) {
    stored->original.resize(static_cast<size_t>(numel));
    reference::LoadRow(weight, 0, numel, stored->original.data());
  }
  if (quantize) {
    stored->hat.resize(static_cast<size_t>(numel));
    QUANTD_RETURN_IF_ERROR(GemmOperandError(
        "B",
        backend.QuantDequant(weight, spec,
                             {DType::kF32, weight.shape, stored->hat.data(), numel * 4}, metrics)));
  }
  return stored;
}

int64_t HostStoredWeightBytes(const QuantSpec& spec, const QuantLayout& layout,
                              bool keep_original) {
  const bool quantize = spec.format != Format::kUnspecified;
  return 4 * layout.numel * ((quantize ? 1 : 0) + (StoresOriginal(spec, keep_original) ? 1 : 0));
}

absl::Status CheckWeightShape(const Shape& shape) {
  if (shape.size() == 2 || shape.size() == 3) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "a weight is [N, K] or [batch, N, K] (nn.Linear's layout), not ", ShapeToString(shape)));
}

}  // namespace quantd
