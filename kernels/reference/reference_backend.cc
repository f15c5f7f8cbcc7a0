// The CPU backend: the oracle every other backend is compared with.
//
// Scalar and readable on purpose: every element goes through the shared per-element functions
// of codec.h and packing.h, so what this file adds is only the order of passes (statistics →
// scales → codes) and the split over rows (row_ops.h). Rows are the unit of parallelism
// because packed code rows start on byte boundaries.
#include <cstring>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "calibrate.h"
#include "quantd/backend.h"
#include "quantd/flatquant.h"
#include "quantd/packing.h"
#include "quantd/status.h"
#include "row_ops.h"

namespace quantd {
namespace {

// FlatQuant: the rows of `input` transformed (quantd/flatquant.h) into `rows` (F32, as many
// elements), and a view of them; other formats: `input` itself. The transform mixes every
// value into its row, so a non-finite input fails the call (FlatquantInputError), except NaN
// under nan_policy ZERO, which reads as 0. One pass: rows are checked as they are loaded.
// Callers check their output buffers first: the transform is the costly part of the call.
absl::StatusOr<TensorView> TransformedInput(Executor* executor, const TensorView& input,
                                            const QuantSpec& spec, const QuantLayout& layout,
                                            std::vector<float>* rows) {
  if (!Traits(spec.format).kronecker_transform) return input;
  const ScaleGeometry& g = layout.geometry;
  const int64_t n1 = MatrixSide(spec.transform_left.size());
  const int64_t n2 = MatrixSide(spec.transform_right.size());
  const bool nan_to_zero = spec.nan_policy == NanPolicy::kZero;
  reference::FirstNan first_bad;
  rows->resize(static_cast<size_t>(layout.numel));
  executor->ParallelFor(
      reference::RowsToVisit(g), reference::MinRowsPerChunk(g.cols), [&](int64_t r0, int64_t r1) {
        std::vector<float> x(g.cols), t(g.cols);
        for (int64_t row = r0; row < r1; ++row) {
          reference::LoadRow(input, row, g.cols, x.data());
          for (int64_t c = 0; c < g.cols; ++c) {
            if (std::isfinite(x[c])) continue;
            if (std::isnan(x[c]) && nan_to_zero) {
              x[c] = 0.0f;
            } else {
              first_bad.Offer(row * g.cols + c);
            }
          }
          for (int64_t i = 0; i < n1; ++i) {
            for (int64_t j = 0; j < n2; ++j) {
              t[i * n2 + j] = KroneckerRightEntry(x.data(), spec.transform_right.data(), n2, i, j);
            }
          }
          float* y = rows->data() + row * g.cols;
          for (int64_t i = 0; i < n1; ++i) {
            for (int64_t j = 0; j < n2; ++j) {
              y[i * n2 + j] =
                  KroneckerLeftEntry(t.data(), spec.transform_left.data(), n1, n2, i, j);
            }
          }
        }
      });
  if (first_bad.get() >= 0) {
    return FlatquantInputError(spec.format, first_bad.get(),
                               LoadAsFloat(input.dtype, input.data, first_bad.get()));
  }
  TensorView view = input;
  view.dtype = DType::kF32;
  view.data = rows->data();
  view.bytes = layout.numel * static_cast<int64_t>(sizeof(float));
  return view;
}

using reference::ElementPass;
using reference::ForEachRun;
using reference::MakeElementPass;
using reference::Scales;

class ReferenceBackend final : public Backend {
 public:
  explicit ReferenceBackend(Executor* executor)
      : executor_(executor != nullptr ? executor : InlineExecutor()) {}

  absl::string_view name() const override { return "cpu"; }

  absl::Status Quantize(const TensorView& input, const QuantSpec& spec, const QuantizedBuffers& out,
                        ErrorMetrics* metrics) override {
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, LayoutOfFloatInput(input, spec));
    QUANTD_RETURN_IF_ERROR(CheckInHostMemory(input));
    if (out.code_bytes != layout.code_bytes || out.num_scales != layout.geometry.num_scales ||
        (layout.code_bytes > 0 && out.codes == nullptr) ||
        (out.num_scales > 0 && out.scales == nullptr) ||
        (spec.asymmetric && out.num_scales > 0 && out.zero_points == nullptr) ||
        (Traits(spec.format).scale_kind == ScaleKind::kE4M3 && out.global_scale == nullptr) ||
        (spec.double_quant && out.double_quant == nullptr)) {
      return absl::InternalError(absl::StrCat(
          "Quantize output buffers do not match the layout: ", out.code_bytes, " code bytes for ",
          layout.code_bytes, ", ", out.num_scales, " scales for ", layout.geometry.num_scales));
    }
    std::vector<float> transformed;  // FlatQuant's rows, what is quantized
    QUANTD_ASSIGN_OR_RETURN(const TensorView x,
                            TransformedInput(executor_, input, spec, layout, &transformed));
    const ElementPass pass = MakeElementPass(spec);
    QUANTD_ASSIGN_OR_RETURN(const Scales scales,
                            reference::ComputeScales(executor_, x, spec, layout, pass));
    std::copy(scales.scale.begin(), scales.scale.end(), out.scales);
    if (Traits(spec.format).scale_kind == ScaleKind::kE4M3) *out.global_scale = scales.global_scale;
    if (spec.double_quant) *out.double_quant = scales.double_quant;
    if (spec.asymmetric) {
      std::copy(scales.zero_point.begin(), scales.zero_point.end(), out.zero_points);
    }
    const int bits = pass.codec.bits;
    uint8_t* codes = static_cast<uint8_t*>(out.codes);
    // Sub-byte codes are ORed into place, and row padding must read as zero.
    if (bits < 8 && layout.code_bytes > 0) std::memset(codes, 0, layout.code_bytes);
    return reference::RunElementPass(
        executor_, x, layout, pass, scales, metrics, /*need_dequantized=*/false,
        [&](int64_t row, int64_t col, uint32_t code, float) {
          StoreCode(codes + row * layout.code_row_bytes, col, bits, spec.packing, code);
        });
  }

  absl::Status Dequantize(const ConstQuantizedBuffers& in, const QuantSpec& spec,
                          const MutableTensorView& out) override {
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, LayoutOfDequantization(in, spec, out));
    const ElementCodec codec = MakeElementPass(spec).codec;
    const std::vector<float> element_scales = ElementScalesOf(in, spec);
    const float* scales = element_scales.empty() ? in.scales : element_scales.data();
    const ScaleGeometry& g = layout.geometry;
    const uint8_t* codes = static_cast<const uint8_t*>(in.codes);
    executor_->ParallelFor(
        reference::RowsToVisit(g), reference::MinRowsPerChunk(g.cols), [&](int64_t r0, int64_t r1) {
          for (int64_t row = r0; row < r1; ++row) {
            const uint8_t* code_row = codes + row * layout.code_row_bytes;
            ForEachRun(g, row, [&](int64_t c0, int64_t c1, int64_t group) {
              const float s = scales[group];
              const int32_t zp = spec.asymmetric ? in.zero_points[group] : 0;
              for (int64_t col = c0; col < c1; ++col) {
                const uint32_t code = LoadCode(code_row, col, codec.bits, spec.packing);
                StoreFromFloat(out.dtype, out.data, row * g.cols + col,
                               DequantizeElement(codec, code, s, zp));
              }
            });
          }
        });
    return absl::OkStatus();
  }

  absl::Status QuantDequant(const TensorView& input, const QuantSpec& spec,
                            const MutableTensorView& out, ErrorMetrics* metrics) override {
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, LayoutOfFloatInput(input, spec));
    QUANTD_RETURN_IF_ERROR(CheckInHostMemory(input));
    if (!IsFloatInput(out.dtype) || out.shape != input.shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("fake quantization writes F32, F16 or BF16 shaped like the input ",
                       ShapeToString(input.shape), ", not ", DTypeName(out.dtype), " ",
                       ShapeToString(out.shape)));
    }
    QUANTD_RETURN_IF_ERROR(CheckByteLength(out.dtype, out.shape, out.bytes));
    std::vector<float> transformed;  // FlatQuant's rows, what is quantized
    QUANTD_ASSIGN_OR_RETURN(const TensorView x,
                            TransformedInput(executor_, input, spec, layout, &transformed));
    const ElementPass pass = MakeElementPass(spec);
    QUANTD_ASSIGN_OR_RETURN(const Scales scales,
                            reference::ComputeScales(executor_, x, spec, layout, pass));
    const int64_t cols = layout.geometry.cols;
    return reference::RunElementPass(executor_, x, layout, pass, scales, metrics,
                                     /*need_dequantized=*/true,
                                     [&](int64_t row, int64_t col, uint32_t, float x_hat) {
                                       StoreFromFloat(out.dtype, out.data, row * cols + col, x_hat);
                                     });
  }

  absl::Status Calibrate(const TensorView& input, const QuantSpec& spec,
                         const CalibrationOptions& options, CalibrationResult* result) override {
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, LayoutOfFloatInput(input, spec));
    QUANTD_RETURN_IF_ERROR(CheckInHostMemory(input));
    std::vector<float> transformed;  // FlatQuant's rows, what is quantized
    QUANTD_ASSIGN_OR_RETURN(const TensorView x,
                            TransformedInput(executor_, input, spec, layout, &transformed));
    return reference::Calibrate(executor_, x, spec, layout, options, result);
  }

  absl::Status Gemm(const GemmOperands& operands, const GemmSpec& spec,
                    const MutableTensorView& out, ErrorMetrics* metrics) override {
    return GemmOfFakeQuantized(*this, executor_, operands, spec, out, metrics);
  }

  absl::StatusOr<std::unique_ptr<StoredWeight>> StoreWeight(const TensorView& weight,
                                                            const QuantSpec& spec,
                                                            bool keep_original,
                                                            ErrorMetrics* metrics) override {
    return StoreWeightOnHost(*this, weight, spec, keep_original, metrics);
  }

  int64_t StoredWeightBytes(const QuantSpec& spec, const QuantLayout& layout,
                            bool keep_original) const override {
    return HostStoredWeightBytes(spec, layout, keep_original);
  }

 private:
  Executor* executor_;
};

}  // namespace

std::unique_ptr<Backend> CreateReferenceBackend(Executor* executor) {
  return std::make_unique<ReferenceBackend>(executor);
}

}  // namespace quantd
