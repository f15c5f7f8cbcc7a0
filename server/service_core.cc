#include "server/service_core.h"

#include <cmath>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "quantd/cuda.h"
#include "quantd/status.h"
#include "server/convert.h"

#ifndef QUANTD_VERSION
#define QUANTD_VERSION "unknown"
#endif

namespace quantd::server {
namespace {

constexpr double kDefaultPercentile = 99.99;
// Clip ratios 1.00, 0.99, ..., 0.80: llm-compressor's MSE observer grid (0.01 apart, 20% shrink).
constexpr int kDefaultSearchSteps = 21;
constexpr float kDefaultSearchMinRatio = 0.8f;
// Largest group_size / block_rows / block_cols accepted (2^40 elements).
constexpr int64_t kMaxGroupDim = int64_t{1} << 40;

bool IsFloatDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

std::string DimsToString(const google::protobuf::RepeatedField<int64_t>& dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

// Shape, element count and byte size of a tensor, each overflow-checked.
struct Extent {
  Shape shape;
  int64_t numel = 1;
  int64_t bytes = 0;
};

[[nodiscard]] absl::StatusOr<Extent> ExtentOf(absl::string_view field,
                                              const google::protobuf::RepeatedField<int64_t>& dims,
                                              DType dtype, int max_rank) {
  if (dims.size() > max_rank) {
    return absl::InvalidArgumentError(absl::StrCat(field, " has rank ", dims.size(), "; at most ",
                                                   max_rank, " dims are accepted"));
  }
  Extent extent;
  extent.shape.assign(dims.begin(), dims.end());
  for (int i = 0; i < dims.size(); ++i) {
    if (dims[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(field, " ", DimsToString(dims),
                                                     " has the negative dim ", dims[i],
                                                     " at index ", i, "; dims must be >= 0"));
    }
  }
  // A zero dim makes the tensor empty whatever the others say, so check for it before
  // multiplying (an overflowing product of the others is then irrelevant).
  bool empty = false;
  for (int64_t d : dims) empty = empty || d == 0;
  if (empty) {
    extent.numel = 0;
  } else {
    for (int64_t d : dims) {
      if (__builtin_mul_overflow(extent.numel, d, &extent.numel)) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, " ", DimsToString(dims), " has more elements than fit in 64 bits"));
      }
    }
  }
  if (__builtin_mul_overflow(extent.numel, static_cast<int64_t>(DTypeSize(dtype)), &extent.bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(field, " ", DimsToString(dims), " has ",
                                                   extent.numel, " elements; as ", DTypeName(dtype),
                                                   " that is more bytes than fit in 64 bits"));
  }
  return extent;
}

// The bulk bytes of one tensor against what its shape says.
[[nodiscard]] absl::Status CheckData(absl::string_view field, const std::string& data,
                                     int64_t expected, const Shape& shape, int64_t numel,
                                     DType dtype, DataCheck check) {
  const auto have = static_cast<int64_t>(data.size());
  if (check == DataCheck::kExact && have != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": shape ", ShapeToString(shape), " has ", numel, " elements but data holds ", have,
        " bytes; ", DTypeName(dtype), " needs ", expected));
  }
  if (check == DataCheck::kAtMost && have > expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": shape ", ShapeToString(shape), " has ", numel, " elements (", expected,
        " bytes of ", DTypeName(dtype), ") but the header's data already holds ", have, " bytes"));
  }
  return absl::OkStatus();
}

[[nodiscard]] absl::StatusOr<DType> FloatDType(int value, absl::string_view field,
                                               absl::string_view purpose) {
  QUANTD_ASSIGN_OR_RETURN(DType dtype, DTypeFromProto(value, field));
  if (!IsFloatDType(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is ", dtype == DType::kUnspecified ? "not set" : DTypeName(dtype),
                     "; ", purpose, " must be F32, F16 or BF16"));
  }
  return dtype;
}

std::string FormatNames() {
  std::vector<absl::string_view> names;
  for (const FormatTraits& row : kFormatTraits) {
    if (row.format != Format::kUnspecified) names.push_back(row.name);
  }
  return absl::StrJoin(names, ", ");
}

[[nodiscard]] absl::Status WithPrefix(absl::string_view prefix, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

// Buffers are sized from the layout before the backend writes into them, so an inconsistent
// layout (a numerics bug) must stop the request rather than become an out-of-bounds write.
[[nodiscard]] absl::Status CheckLayout(const QuantLayout& layout, const QuantSpec& spec) {
  const ScaleGeometry& g = layout.geometry;
  int64_t scale_count = 1;
  bool overflow = false;
  for (int64_t d : layout.scale_shape) {
    overflow = overflow || d < 0 || __builtin_mul_overflow(scale_count, d, &scale_count);
  }
  const bool sane = !overflow && layout.code_bytes >= 0 && g.num_scales >= 0 &&
                    scale_count == g.num_scales &&
                    (layout.numel == 0 ||
                     (g.num_scales >= 1 && g.num_scales <= layout.numel && g.groups_per_row >= 1));
  if (!sane) {
    return absl::InternalError(
        absl::StrCat("the numerics computed an inconsistent layout for ", SpecToString(spec),
                     " over shape ", ShapeToString(layout.shape), " (", g.num_scales,
                     " scales, scale shape ", ShapeToString(layout.scale_shape), ", ",
                     layout.code_bytes, " code bytes); please report this request"));
  }
  return absl::OkStatus();
}

// A spec from the wire (no format: none given), its sizes checked: sizes this large describe
// no real tensor, and the layout arithmetic (ceil divisions over them) must never see them.
[[nodiscard]] absl::StatusOr<QuantSpec> CheckedSpecFromProto(const v1::QuantSpec& proto,
                                                             absl::string_view field) {
  QUANTD_ASSIGN_OR_RETURN(QuantSpec requested, QuantSpecFromProto(proto, field));
  const std::pair<absl::string_view, int64_t> sizes[] = {{"group_size", requested.group_size},
                                                         {"block_rows", requested.block_rows},
                                                         {"block_cols", requested.block_cols}};
  for (const auto& [name, value] : sizes) {
    if (value > kMaxGroupDim) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".", name, " is ", value, "; at most ",
                                                     kMaxGroupDim,
                                                     " is accepted (a group larger than the "
                                                     "tensor's dim is one ragged group anyway)"));
    }
  }
  return requested;
}

// The layout of a resolved spec over `shape`, checked (CheckLayout).
[[nodiscard]] absl::StatusOr<QuantLayout> CheckedLayout(const QuantSpec& resolved,
                                                        const Shape& shape,
                                                        absl::string_view field) {
  absl::StatusOr<QuantLayout> layout = ComputeLayout(resolved, shape);
  if (!layout.ok()) return WithPrefix(absl::StrCat(field, ": "), layout.status());
  QUANTD_RETURN_IF_ERROR(CheckLayout(*layout, resolved));
  return layout;
}

// A spec from the wire, resolved for `shape`, with its layout.
[[nodiscard]] absl::Status ResolveForShape(const v1::QuantSpec& proto, const Shape& shape,
                                           absl::string_view field, RequestPlan* plan) {
  QUANTD_ASSIGN_OR_RETURN(const QuantSpec requested, CheckedSpecFromProto(proto, field));
  if (requested.format == Format::kUnspecified) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".format (or ", field, ".descriptor_string) is required; formats: ", FormatNames(),
        "; descriptors: ", absl::StrJoin(DescriptorExamples(), ", ")));
  }
  absl::StatusOr<QuantSpec> resolved = ResolveSpec(requested, shape);
  if (!resolved.ok()) return WithPrefix(absl::StrCat(field, ": "), resolved.status());
  QUANTD_ASSIGN_OR_RETURN(plan->layout, CheckedLayout(*resolved, shape, field));
  plan->spec = *std::move(resolved);
  return absl::OkStatus();
}

// Scales travel as F32, except block formats' scales, which travel as their codes (U8): E8M0
// for MX, E4M3 for NVFP4. The backends work with fp32 scales either way (the codes' values).
bool HasScaleCodes(const QuantSpec& spec) {
  const ScaleKind kind = Traits(spec.format).scale_kind;
  return kind == ScaleKind::kE8M0 || kind == ScaleKind::kE4M3 || spec.double_quant;
}

// NF4 double quantization: how many nested scales `num_scales` absmax values have.
int64_t DoubleQuantScaleCount(int64_t num_scales) {
  return (num_scales + kDoubleQuantBlock - 1) / kDoubleQuantBlock;
}

bool HasGlobalScale(const QuantSpec& spec) {
  return Traits(spec.format).scale_kind == ScaleKind::kE4M3;
}

DType WireScaleDType(const QuantSpec& spec) {
  return HasScaleCodes(spec) ? DType::kU8 : DType::kF32;
}

int64_t ScaleBytes(const RequestPlan& plan) {
  return plan.layout.geometry.num_scales * DTypeSize(WireScaleDType(plan.spec));
}

// Runs `fn` (a backend call or a big allocation) and turns the exceptions a request path can
// meet into statuses: nothing on a request path may throw through.
template <typename Fn>
[[nodiscard]] absl::Status Guarded(absl::string_view what, Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": out of memory; retry later or send a smaller tensor"));
  } catch (const std::length_error&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": buffer too large for this host; send a smaller tensor"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": unexpected exception: ", e.what()));
  }
}

void SetTensorHeader(DType dtype, const Shape& shape, v1::Tensor* tensor) {
  tensor->set_dtype(DTypeToProto(dtype));
  tensor->mutable_shape()->Assign(shape.begin(), shape.end());
}

template <typename T>
void SetTensor(DType dtype, const Shape& shape, const std::vector<T>& values, v1::Tensor* tensor) {
  SetTensorHeader(dtype, shape, tensor);
  tensor->set_data(values.data(), values.size() * sizeof(T));
}

template <typename T>
std::vector<T> CopyValues(const std::string& bytes) {
  std::vector<T> values(bytes.size() / sizeof(T));
  if (!values.empty()) std::memcpy(values.data(), bytes.data(), values.size() * sizeof(T));
  return values;
}

void SetScales(const QuantSpec& spec, const Shape& shape, const std::vector<float>& scales,
               v1::Tensor* tensor) {
  if (!HasScaleCodes(spec)) {
    SetTensor(DType::kF32, shape, scales, tensor);
    return;
  }
  const FormatTraits& traits = Traits(spec.format);
  std::vector<uint8_t> codes(scales.size());
  for (size_t i = 0; i < scales.size(); ++i) {
    // Both are exact: the scales are the values of codes.
    codes[i] = static_cast<uint8_t>(traits.scale_kind == ScaleKind::kE8M0
                                        ? E8M0CodeOfScale(scales[i], traits.mx.implicit_exponent)
                                        : MinifloatEncodePortable(E4M3Params(), scales[i],
                                                                  Rounding::kNearestEven, 0u,
                                                                  Overflow::kSaturate));
  }
  SetTensor(DType::kU8, shape, codes, tensor);
}

// The fp32 scales of a quantized tensor's wire scales (checked by PlanDequantize).
std::vector<float> ScalesFromWire(const QuantSpec& spec, const v1::QuantizedTensor& q) {
  const std::string& bytes = q.scales().data();
  if (spec.double_quant) {
    DoubleQuantized double_quant;
    double_quant.codes.assign(bytes.begin(), bytes.end());
    double_quant.scales = CopyValues<float>(q.double_quant_scales().data());
    double_quant.offset = q.double_quant_offset();
    return DoubleDequantize(double_quant);
  }
  if (!HasScaleCodes(spec)) return CopyValues<float>(bytes);
  const FormatTraits& traits = Traits(spec.format);
  std::vector<float> scales(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    const uint8_t code = static_cast<uint8_t>(bytes[i]);
    scales[i] = traits.scale_kind == ScaleKind::kE8M0
                    ? ScaleOfE8M0Code(code, traits.mx.implicit_exponent)
                    : MinifloatDecode(E4M3Params(), code);
  }
  return scales;
}

bool TensorIsEmpty(const v1::Tensor& tensor);

// NF4 double quantization's nested scales and offset: present (F32, one per 256 absmax codes,
// finite and >= 0; a finite offset) exactly when the spec asks for it.
[[nodiscard]] absl::Status CheckDoubleQuantParts(const RequestPlan& plan,
                                                 const v1::QuantizedTensor& q) {
  if (!plan.spec.double_quant) {
    if (!TensorIsEmpty(q.double_quant_scales()) || q.double_quant_offset() != 0.0f) {
      return absl::InvalidArgumentError(
          "quantized.double_quant_scales / double_quant_offset are set but quantized.spec has "
          "no double_quant; leave them unset or set spec.double_quant (nf4)");
    }
    return absl::OkStatus();
  }
  const int64_t want = DoubleQuantScaleCount(plan.layout.geometry.num_scales);
  const v1::Tensor& nested = q.double_quant_scales();
  if (nested.dtype() != v1::DTYPE_F32 || static_cast<int64_t>(nested.data().size()) != want * 4) {
    return absl::InvalidArgumentError(absl::StrCat("quantized.double_quant_scales must hold ", want,
                                                   " F32 values (one per ", kDoubleQuantBlock,
                                                   " absmax codes), got ", nested.data().size(),
                                                   " bytes of ", v1::DType_Name(nested.dtype())));
  }
  const std::vector<float> values = CopyValues<float>(nested.data());
  for (size_t i = 0; i < values.size(); ++i) {
    if (!(std::isfinite(values[i]) && values[i] >= 0.0f)) {
      return absl::InvalidArgumentError(absl::StrCat("quantized.double_quant_scales[", i, "] is ",
                                                     values[i], "; they must be finite and >= 0"));
    }
  }
  if (!std::isfinite(q.double_quant_offset())) {
    return absl::InvalidArgumentError("quantized.double_quant_offset must be finite");
  }
  return absl::OkStatus();
}

// One of the quantized tensors of a DequantizeRequest against what the layout says.
[[nodiscard]] absl::Status CheckQuantizedPart(absl::string_view field, const v1::Tensor& tensor,
                                              DType want, int64_t expected_bytes,
                                              const Shape& expected_shape, int max_rank,
                                              DataCheck check) {
  QUANTD_ASSIGN_OR_RETURN(DType dtype,
                          DTypeFromProto(tensor.dtype(), absl::StrCat(field, ".dtype")));
  if (dtype != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".dtype is ", dtype == DType::kUnspecified ? "not set" : DTypeName(dtype),
        "; this spec's ", field, " are ", DTypeName(want), " (shape ",
        ShapeToString(expected_shape), ")"));
  }
  if (tensor.shape_size() > 0) {
    QUANTD_ASSIGN_OR_RETURN(
        Extent extent, ExtentOf(absl::StrCat(field, ".shape"), tensor.shape(), dtype, max_rank));
    if (extent.bytes != expected_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".shape ", ShapeToString(extent.shape), " holds ", extent.bytes,
                       " bytes but the spec and shape need ", expected_bytes, " (shape ",
                       ShapeToString(expected_shape), ")"));
    }
  }
  const auto have = static_cast<int64_t>(tensor.data().size());
  if (check == DataCheck::kExact && have != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".data holds ", have, " bytes; the spec and shape need ", expected_bytes,
        " bytes of ", DTypeName(want), " (shape ", ShapeToString(expected_shape), ")"));
  }
  if (check == DataCheck::kAtMost && have > expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".data already holds ", have, " bytes in the header; the spec and shape need only ",
        expected_bytes, " (shape ", ShapeToString(expected_shape), ")"));
  }
  return absl::OkStatus();
}

bool TensorIsEmpty(const v1::Tensor& tensor) {
  return tensor.dtype() == v1::DTYPE_UNSPECIFIED && tensor.shape_size() == 0 &&
         tensor.data().empty();
}

}  // namespace

TensorView ViewOf(const v1::Tensor& tensor, const Shape& shape, DType dtype) {
  TensorView view;
  view.dtype = dtype;
  view.shape = shape;
  view.data = tensor.data().data();
  view.bytes = static_cast<int64_t>(tensor.data().size());
  return view;
}

QuantizerCore::QuantizerCore(Backend* backend, CoreOptions options)
    : backend_(backend), options_(std::move(options)) {
  if (options_.max_rank <= 0 || options_.max_rank > kMaxRank) options_.max_rank = kMaxRank;
  if (options_.max_weight_bytes <= 0) {
    // Registered weights leave half of the devices' memory to calls.
    int64_t device_bytes = 0;
    for (const DeviceTelemetry& device : backend_->Telemetry()) {
      device_bytes += device.memory_cap_bytes;
    }
    options_.max_weight_bytes = device_bytes > 0 ? device_bytes / 2 : int64_t{4} << 30;
  }
  weights_ = std::make_unique<WeightRegistry>(options_.max_weight_bytes);
}

absl::Status QuantizerCore::CheckTensorBytes(absl::string_view field, int64_t bytes) const {
  if (bytes > options_.max_tensor_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " would be ", bytes, " bytes, above this server's limit of ",
        options_.max_tensor_bytes,
        " bytes per tensor (--max-tensor-bytes); split the tensor into smaller pieces"));
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantizerCore::FloatTensor> QuantizerCore::PlanFloatTensor(const v1::Tensor& tensor,
                                                                          absl::string_view field,
                                                                          DataCheck check) const {
  FloatTensor planned;
  QUANTD_ASSIGN_OR_RETURN(planned.dtype,
                          FloatDType(tensor.dtype(), absl::StrCat(field, ".dtype"), field));
  QUANTD_ASSIGN_OR_RETURN(Extent extent, ExtentOf(absl::StrCat(field, ".shape"), tensor.shape(),
                                                  planned.dtype, options_.max_rank));
  QUANTD_RETURN_IF_ERROR(CheckTensorBytes(field, extent.bytes));
  QUANTD_RETURN_IF_ERROR(CheckData(field, tensor.data(), extent.bytes, extent.shape, extent.numel,
                                   planned.dtype, check));
  planned.shape = std::move(extent.shape);
  planned.numel = extent.numel;
  planned.bytes = extent.bytes;
  return planned;
}

absl::StatusOr<RequestPlan> QuantizerCore::PlanFloatInput(const v1::Tensor& input,
                                                          const v1::QuantSpec& spec_proto,
                                                          DataCheck check) const {
  RequestPlan plan;
  QUANTD_ASSIGN_OR_RETURN(const FloatTensor tensor, PlanFloatTensor(input, "input", check));
  plan.input_dtype = tensor.dtype;
  plan.input_bytes = tensor.bytes;
  QUANTD_RETURN_IF_ERROR(ResolveForShape(spec_proto, tensor.shape, "spec", &plan));
  plan.code_bytes = plan.layout.code_bytes;
  plan.scale_bytes = ScaleBytes(plan);
  plan.zero_point_bytes = plan.spec.asymmetric ? plan.scale_bytes : 0;
  QUANTD_RETURN_IF_ERROR(CheckTensorBytes("codes", plan.code_bytes));
  QUANTD_RETURN_IF_ERROR(CheckTensorBytes("scales", plan.scale_bytes));
  plan.output_bytes = plan.code_bytes + plan.scale_bytes + plan.zero_point_bytes;
  return plan;
}

absl::StatusOr<RequestPlan> QuantizerCore::PlanQuantize(const v1::QuantizeRequest& request,
                                                        DataCheck check) const {
  return PlanFloatInput(request.input(), request.spec(), check);
}

absl::StatusOr<RequestPlan> QuantizerCore::PlanQuantDequant(const v1::QuantDequantRequest& request,
                                                            DataCheck check) const {
  QUANTD_ASSIGN_OR_RETURN(RequestPlan plan, PlanFloatInput(request.input(), request.spec(), check));
  if (request.output_dtype() == v1::DTYPE_UNSPECIFIED) {
    plan.output_dtype = plan.input_dtype;
  } else {
    QUANTD_ASSIGN_OR_RETURN(plan.output_dtype,
                            FloatDType(request.output_dtype(), "output_dtype", "the output"));
  }
  plan.output_bytes = plan.layout.numel * DTypeSize(plan.output_dtype);
  QUANTD_RETURN_IF_ERROR(CheckTensorBytes("output", plan.output_bytes));
  return plan;
}

absl::StatusOr<RequestPlan> QuantizerCore::PlanCalibrate(const v1::CalibrateRequest& request,
                                                         DataCheck check) const {
  QUANTD_RETURN_IF_ERROR(CalibrationMethodFromProto(request.method(), "method").status());
  const double percentile = request.percentile();
  if (percentile != 0.0 && !(percentile > 0.0 && percentile <= 100.0)) {
    return absl::InvalidArgumentError(absl::StrCat("percentile is ", percentile,
                                                   "; it must be in (0, 100] (0 means ",
                                                   kDefaultPercentile, ")"));
  }
  if (request.search_steps() < 0 || request.search_steps() > options_.max_search_steps) {
    return absl::InvalidArgumentError(
        absl::StrCat("search_steps is ", request.search_steps(), "; it must be in [1, ",
                     options_.max_search_steps, "] (0 means ", kDefaultSearchSteps, ")"));
  }
  const float min_ratio = request.search_min_ratio();
  if (min_ratio != 0.0f && !(min_ratio > 0.0f && min_ratio <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("search_min_ratio is ", min_ratio,
                                                   "; it must be in (0, 1] (0 means ",
                                                   kDefaultSearchMinRatio, ")"));
  }
  QUANTD_ASSIGN_OR_RETURN(RequestPlan plan, PlanFloatInput(request.input(), request.spec(), check));
  if (plan.spec.has_static_scales()) {
    return absl::InvalidArgumentError(
        "spec.static_scales is set, but Calibrate computes the scales: leave static_scales and "
        "static_zero_points empty");
  }
  // scales, amax and clip ratios (+ zero-points): four tensors of num_scales values at most.
  plan.output_bytes = plan.scale_bytes * 3 + plan.zero_point_bytes;
  return plan;
}

absl::StatusOr<RequestPlan> QuantizerCore::PlanDequantize(const v1::DequantizeRequest& request,
                                                          DataCheck check) const {
  const v1::QuantizedTensor& q = request.quantized();
  RequestPlan plan;
  if (request.output_dtype() == v1::DTYPE_UNSPECIFIED) {
    plan.output_dtype = DType::kF32;
  } else {
    QUANTD_ASSIGN_OR_RETURN(plan.output_dtype,
                            FloatDType(request.output_dtype(), "output_dtype", "the output"));
  }
  QUANTD_ASSIGN_OR_RETURN(DType source, DTypeFromProto(q.source_dtype(), "quantized.source_dtype"));
  if (source != DType::kUnspecified && !IsFloatDType(source)) {
    return absl::InvalidArgumentError(absl::StrCat("quantized.source_dtype is ", DTypeName(source),
                                                   "; a quantized tensor's source is F32, F16 "
                                                   "or BF16 (or leave it unset)"));
  }
  QUANTD_ASSIGN_OR_RETURN(
      Extent extent, ExtentOf("quantized.shape", q.shape(), plan.output_dtype, options_.max_rank));
  QUANTD_RETURN_IF_ERROR(CheckTensorBytes("output", extent.bytes));
  plan.output_bytes = extent.bytes;
  QUANTD_RETURN_IF_ERROR(ResolveForShape(q.spec(), extent.shape, "quantized.spec", &plan));
  plan.input_dtype = plan.layout.code_dtype;
  plan.code_bytes = plan.layout.code_bytes;
  plan.scale_bytes = ScaleBytes(plan);
  plan.zero_point_bytes = plan.spec.asymmetric ? plan.scale_bytes : 0;
  QUANTD_RETURN_IF_ERROR(CheckTensorBytes("quantized.codes", plan.code_bytes));
  QUANTD_RETURN_IF_ERROR(CheckTensorBytes("quantized.scales", plan.scale_bytes));
  plan.input_bytes = plan.code_bytes + plan.scale_bytes + plan.zero_point_bytes;

  QUANTD_RETURN_IF_ERROR(CheckQuantizedPart("quantized.codes", q.codes(), plan.layout.code_dtype,
                                            plan.code_bytes, plan.layout.code_shape,
                                            options_.max_rank, check));
  QUANTD_RETURN_IF_ERROR(CheckQuantizedPart("quantized.scales", q.scales(),
                                            WireScaleDType(plan.spec), plan.scale_bytes,
                                            plan.layout.scale_shape, options_.max_rank, check));
  if (plan.spec.asymmetric) {
    QUANTD_RETURN_IF_ERROR(CheckQuantizedPart("quantized.zero_points", q.zero_points(), DType::kI32,
                                              plan.zero_point_bytes, plan.layout.scale_shape,
                                              options_.max_rank, check));
  } else if (!TensorIsEmpty(q.zero_points())) {
    return absl::InvalidArgumentError(
        "quantized.zero_points is set but quantized.spec is symmetric: zero-points belong to "
        "asymmetric specs only; leave zero_points empty or set spec.asymmetric");
  }

  if (check == DataCheck::kExact) {
    // Scales from the wire are data, not trusted: a zero, negative or non-finite scale
    // would dequantize to garbage without any error, so refuse it here.
    const std::string& scale_data = q.scales().data();
    const ScaleKind scale_kind = Traits(plan.spec.format).scale_kind;
    // NF4 double quantization: every code of the dynamic map is a value.
    const int64_t checked_scales = plan.spec.double_quant ? 0 : plan.layout.geometry.num_scales;
    // NF4 stores an all-zero block's absmax as 0 (bitsandbytes).
    const bool zero_ok = MakeScaleRule(Traits(plan.spec.format), false).zero_scale_ok;
    for (int64_t i = 0; i < checked_scales; ++i) {
      const uint8_t code = static_cast<uint8_t>(scale_data[i]);
      if (scale_kind == ScaleKind::kE8M0) {
        if (code == 0xFF) {
          return absl::InvalidArgumentError(absl::StrCat(
              "quantized.scales[", i, "] is 0xFF, E8M0's NaN; MX scale codes are 0x00..0xFE"));
        }
        continue;  // every other code is a finite power of two
      }
      if (scale_kind == ScaleKind::kE4M3) {
        // 0x00 is a legitimate block scale (a block too small for E4M3: its codes are 0).
        if (code > 0x7E) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "quantized.scales[%d] is 0x%02X; NVFP4 block scales are non-negative finite E4M3 "
              "codes 0x00..0x7E",
              i, code));
        }
        continue;
      }
      float s;
      std::memcpy(&s, scale_data.data() + i * sizeof(float), sizeof(float));
      if (!std::isfinite(s) || !(s > 0.0f || (zero_ok && s == 0.0f))) {
        return absl::InvalidArgumentError(absl::StrCat("quantized.scales[", i, "] is ", s,
                                                       "; scales must be finite and ",
                                                       zero_ok ? ">= 0" : "> 0"));
      }
    }
    QUANTD_RETURN_IF_ERROR(CheckDoubleQuantParts(plan, q));
    if (HasGlobalScale(plan.spec)) {
      const float global_scale = q.global_scale();
      if (!(std::isfinite(global_scale) && global_scale > 0.0f)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "quantized.global_scale is ", global_scale, "; ", FormatName(plan.spec.format),
            " needs the global scale its quantization returned (finite, > 0)"));
      }
    } else if (q.global_scale() != 0.0f) {
      return absl::InvalidArgumentError(
          absl::StrCat("quantized.global_scale is set but ", FormatName(plan.spec.format),
                       " has no global scale (NVFP4 only); leave it unset"));
    }
    if (plan.spec.asymmetric) {
      const FormatTraits& traits = Traits(plan.spec.format);
      const std::string& zp_data = q.zero_points().data();
      for (int64_t i = 0; i < plan.layout.geometry.num_scales; ++i) {
        int32_t zp;
        std::memcpy(&zp, zp_data.data() + i * sizeof(int32_t), sizeof(int32_t));
        if (zp < traits.qmin || zp > traits.qmax) {
          return absl::InvalidArgumentError(
              absl::StrCat("quantized.zero_points[", i, "] is ", zp, "; ", traits.name,
                           " zero-points must be in [", traits.qmin, ", ", traits.qmax, "]"));
        }
      }
    }
  }
  return plan;
}

absl::StatusOr<std::unique_ptr<TensorUpload>> QuantizerCore::BeginUpload(
    const RequestPlan& plan) const {
  return backend_->BeginUpload(plan.input_dtype, plan.layout.shape, plan.input_bytes);
}

absl::StatusOr<v1::QuantizeResponse> QuantizerCore::Quantize(const v1::QuantizeRequest& request,
                                                             const TensorUpload* upload) const {
  // With an upload the bytes are there, not in the request.
  QUANTD_ASSIGN_OR_RETURN(
      RequestPlan plan,
      PlanQuantize(request, upload != nullptr ? DataCheck::kAtMost : DataCheck::kExact));
  if (upload != nullptr &&
      (!request.input().data().empty() || upload->received() != plan.input_bytes)) {
    return absl::InternalError(absl::StrCat("an upload of ", upload->received(), " bytes for ",
                                            plan.input_bytes, " bytes of input"));
  }
  const QuantLayout& layout = plan.layout;
  v1::QuantizeResponse response;
  v1::QuantizedTensor* q = response.mutable_quantized();
  std::vector<float> scales;
  std::vector<int32_t> zero_points;
  float global_scale = 0.0f;
  DoubleQuantized double_quant;
  ErrorMetrics metrics;
  QUANTD_RETURN_IF_ERROR(Guarded("Quantize", [&]() -> absl::Status {
    QuantSpecToProto(plan.spec, layout.scale_shape, q->mutable_spec());
    q->mutable_shape()->Assign(layout.shape.begin(), layout.shape.end());
    q->set_source_dtype(DTypeToProto(plan.input_dtype));
    SetTensorHeader(layout.code_dtype, layout.code_shape, q->mutable_codes());
    std::string* codes = q->mutable_codes()->mutable_data();
    codes->resize(static_cast<size_t>(layout.code_bytes));
    scales.resize(static_cast<size_t>(layout.geometry.num_scales));
    if (plan.spec.asymmetric) zero_points.resize(scales.size());
    QuantizedBuffers out;
    out.codes = codes->data();
    out.code_bytes = layout.code_bytes;
    out.scales = scales.data();
    out.num_scales = layout.geometry.num_scales;
    out.zero_points = plan.spec.asymmetric ? zero_points.data() : nullptr;
    out.global_scale = HasGlobalScale(plan.spec) ? &global_scale : nullptr;
    out.double_quant = plan.spec.double_quant ? &double_quant : nullptr;
    TensorView input = ViewOf(request.input(), layout.shape, plan.input_dtype);
    if (upload != nullptr) {
      input.data = nullptr;
      input.bytes = plan.input_bytes;
      input.upload = upload;
    }
    return backend_->Quantize(input, plan.spec, out, request.skip_metrics() ? nullptr : &metrics);
  }));
  if (plan.spec.double_quant) {
    SetTensor(DType::kU8, layout.scale_shape, double_quant.codes, q->mutable_scales());
    SetTensor(DType::kF32, {static_cast<int64_t>(double_quant.scales.size())}, double_quant.scales,
              q->mutable_double_quant_scales());
    q->set_double_quant_offset(double_quant.offset);
  } else {
    SetScales(plan.spec, layout.scale_shape, scales, q->mutable_scales());
  }
  if (HasGlobalScale(plan.spec)) q->set_global_scale(global_scale);
  if (plan.spec.asymmetric) {
    SetTensor(DType::kI32, layout.scale_shape, zero_points, q->mutable_zero_points());
  }
  if (!request.skip_metrics()) ErrorMetricsToProto(metrics, response.mutable_metrics());
  response.set_backend(std::string(backend_->name()));
  return response;
}

absl::StatusOr<v1::DequantizeResponse> QuantizerCore::Dequantize(
    const v1::DequantizeRequest& request) const {
  QUANTD_ASSIGN_OR_RETURN(RequestPlan plan, PlanDequantize(request, DataCheck::kExact));
  const QuantLayout& layout = plan.layout;
  const v1::QuantizedTensor& q = request.quantized();
  v1::DequantizeResponse response;
  QUANTD_RETURN_IF_ERROR(Guarded("Dequantize", [&]() -> absl::Status {
    // Scales and zero-points are small; copying them gives the backend aligned arrays.
    const std::vector<float> scales = ScalesFromWire(plan.spec, q);
    const std::vector<int32_t> zero_points = CopyValues<int32_t>(q.zero_points().data());
    v1::Tensor* output = response.mutable_output();
    SetTensorHeader(plan.output_dtype, layout.shape, output);
    std::string* data = output->mutable_data();
    data->resize(static_cast<size_t>(plan.output_bytes));
    ConstQuantizedBuffers in;
    in.codes = q.codes().data().data();
    in.code_bytes = plan.code_bytes;
    in.scales = scales.data();
    in.num_scales = layout.geometry.num_scales;
    in.zero_points = plan.spec.asymmetric ? zero_points.data() : nullptr;
    in.global_scale = q.global_scale();
    MutableTensorView out;
    out.dtype = plan.output_dtype;
    out.shape = layout.shape;
    out.data = data->data();
    out.bytes = plan.output_bytes;
    return backend_->Dequantize(in, plan.spec, out);
  }));
  response.set_backend(std::string(backend_->name()));
  return response;
}

absl::StatusOr<v1::QuantDequantResponse> QuantizerCore::QuantDequant(
    const v1::QuantDequantRequest& request) const {
  QUANTD_ASSIGN_OR_RETURN(RequestPlan plan, PlanQuantDequant(request, DataCheck::kExact));
  const QuantLayout& layout = plan.layout;
  v1::QuantDequantResponse response;
  ErrorMetrics metrics;
  QUANTD_RETURN_IF_ERROR(Guarded("QuantDequant", [&]() -> absl::Status {
    QuantSpecToProto(plan.spec, layout.scale_shape, response.mutable_spec());
    v1::Tensor* output = response.mutable_output();
    SetTensorHeader(plan.output_dtype, layout.shape, output);
    std::string* data = output->mutable_data();
    data->resize(static_cast<size_t>(plan.output_bytes));
    MutableTensorView out;
    out.dtype = plan.output_dtype;
    out.shape = layout.shape;
    out.data = data->data();
    out.bytes = plan.output_bytes;
    return backend_->QuantDequant(ViewOf(request.input(), layout.shape, plan.input_dtype),
                                  plan.spec, out, request.skip_metrics() ? nullptr : &metrics);
  }));
  if (!request.skip_metrics()) ErrorMetricsToProto(metrics, response.mutable_metrics());
  response.set_backend(std::string(backend_->name()));
  return response;
}

// A GEMM request's operands as views, its resolved spec and dimensions.
struct QuantizerCore::GemmPlan {
  GemmOperands operands;
  std::shared_ptr<const StoredWeight> b_weight;  // B when it is a registered weight
  GemmSpec spec;
  GemmDims dims;
  DType output_dtype = DType::kF32;
  int64_t input_bytes = 0;
  int64_t output_bytes = 0;
};

absl::StatusOr<QuantizerCore::GemmPlan> QuantizerCore::PlanGemmOperands(
    const v1::GemmRequest& request, DataCheck check) const {
  GemmPlan plan;
  // One float operand: dtype, shape and bytes checked as any float input's.
  const auto operand = [&](const v1::Tensor& tensor, const char* field,
                           TensorView* view) -> absl::Status {
    QUANTD_ASSIGN_OR_RETURN(const FloatTensor planned, PlanFloatTensor(tensor, field, check));
    *view = ViewOf(tensor, planned.shape, planned.dtype);
    plan.input_bytes += planned.bytes;
    return absl::OkStatus();
  };
  QUANTD_RETURN_IF_ERROR(operand(request.a(), "a", &plan.operands.a));
  const bool registered_b = !request.b_handle().empty();
  if (registered_b) {
    if (!TensorIsEmpty(request.b()) || request.has_b_spec()) {
      return absl::InvalidArgumentError(
          "b_handle names a registered weight, quantized as it was registered: leave b and "
          "b_spec empty (or send b and b_spec without b_handle)");
    }
    QUANTD_ASSIGN_OR_RETURN(const WeightRegistry::Entry entry, weights_->Find(request.b_handle()));
    plan.b_weight = entry.weight;
    plan.operands.b_stored = plan.b_weight.get();
    plan.operands.b.dtype = plan.b_weight->dtype();
    plan.operands.b.shape = plan.b_weight->shape();
  } else {
    QUANTD_RETURN_IF_ERROR(operand(request.b(), "b", &plan.operands.b));
  }
  if (!TensorIsEmpty(request.bias())) {
    QUANTD_RETURN_IF_ERROR(operand(request.bias(), "bias", &plan.operands.bias));
  }
  if (!TensorIsEmpty(request.c())) {
    QUANTD_RETURN_IF_ERROR(operand(request.c(), "c", &plan.operands.c));
  }
  // An operand spec left empty (no format, no descriptor) means "not quantized".
  GemmSpec requested;
  QUANTD_ASSIGN_OR_RETURN(requested.a, CheckedSpecFromProto(request.a_spec(), "a_spec"));
  if (!registered_b) {
    QUANTD_ASSIGN_OR_RETURN(requested.b, CheckedSpecFromProto(request.b_spec(), "b_spec"));
  }
  requested.alpha = request.alpha() == 0.0f && !request.alpha_is_zero() ? 1.0f : request.alpha();
  requested.beta = request.beta();
  QUANTD_ASSIGN_OR_RETURN(plan.spec,
                          ResolveGemmSpec(requested, plan.operands.a.shape, plan.operands.b.shape));
  if (registered_b) {
    plan.spec.b = plan.b_weight->spec();  // resolved (and checked) when it was registered
  } else if (plan.spec.b.format != Format::kUnspecified) {
    QUANTD_RETURN_IF_ERROR(CheckedLayout(plan.spec.b, plan.operands.b.shape, "b_spec").status());
  }
  if (plan.spec.a.format != Format::kUnspecified) {
    QUANTD_RETURN_IF_ERROR(CheckedLayout(plan.spec.a, plan.operands.a.shape, "a_spec").status());
  }
  if (request.output_dtype() != v1::DTYPE_UNSPECIFIED) {
    QUANTD_ASSIGN_OR_RETURN(plan.output_dtype,
                            FloatDType(request.output_dtype(), "output_dtype", "the output"));
  }
  QUANTD_ASSIGN_OR_RETURN(plan.dims, CheckGemmOperands(plan.operands, plan.spec));
  QUANTD_ASSIGN_OR_RETURN(const int64_t out_numel, NumElements(plan.dims.out_shape));
  plan.output_bytes = out_numel * DTypeSize(plan.output_dtype);
  QUANTD_RETURN_IF_ERROR(CheckTensorBytes("output", plan.output_bytes));
  return plan;
}

absl::StatusOr<RequestPlan> QuantizerCore::PlanGemm(const v1::GemmRequest& request,
                                                    DataCheck check) const {
  QUANTD_ASSIGN_OR_RETURN(const GemmPlan gemm, PlanGemmOperands(request, check));
  RequestPlan plan;
  plan.spec = gemm.spec.b.format != Format::kUnspecified ? gemm.spec.b : gemm.spec.a;
  plan.input_dtype = gemm.operands.a.dtype;
  plan.output_dtype = gemm.output_dtype;
  plan.input_bytes = gemm.input_bytes;
  plan.output_bytes = gemm.output_bytes;
  return plan;
}

absl::StatusOr<v1::GemmResponse> QuantizerCore::Gemm(const v1::GemmRequest& request) const {
  QUANTD_ASSIGN_OR_RETURN(const GemmPlan plan, PlanGemmOperands(request, DataCheck::kExact));
  v1::GemmResponse response;
  ErrorMetrics metrics;
  QUANTD_RETURN_IF_ERROR(Guarded("Gemm", [&]() -> absl::Status {
    v1::Tensor* output = response.mutable_output();
    SetTensorHeader(plan.output_dtype, plan.dims.out_shape, output);
    std::string* data = output->mutable_data();
    data->resize(static_cast<size_t>(plan.output_bytes));
    MutableTensorView out;
    out.dtype = plan.output_dtype;
    out.shape = plan.dims.out_shape;
    out.data = data->data();
    out.bytes = plan.output_bytes;
    return backend_->Gemm(plan.operands, plan.spec, out,
                          request.skip_metrics() ? nullptr : &metrics);
  }));
  if (plan.spec.a.format != Format::kUnspecified) {
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout,
                            ComputeLayout(plan.spec.a, plan.operands.a.shape));
    QuantSpecToProto(plan.spec.a, layout.scale_shape, response.mutable_a_spec());
  }
  if (plan.spec.b.format != Format::kUnspecified) {
    QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout,
                            ComputeLayout(plan.spec.b, plan.operands.b.shape));
    QuantSpecToProto(plan.spec.b, layout.scale_shape, response.mutable_b_spec());
  }
  if (!request.skip_metrics()) {
    ErrorMetricsToProto(metrics, response.mutable_metrics());
    response.set_metrics_reference(plan.b_weight != nullptr && !plan.b_weight->keeps_original()
                                       ? "unquantized A and the registered (quantized) B"
                                       : "unquantized A and B");
  }
  response.set_backend(std::string(backend_->name()));
  return response;
}

namespace {

void WeightInfoToProto(const WeightRegistry::Entry& entry, absl::string_view backend,
                       v1::WeightInfo* info) {
  const StoredWeight& weight = *entry.weight;
  info->set_handle(entry.handle);
  info->set_name(entry.name);
  info->set_dtype(DTypeToProto(weight.dtype()));
  info->mutable_shape()->Assign(weight.shape().begin(), weight.shape().end());
  if (weight.spec().format != Format::kUnspecified) {
    const absl::StatusOr<QuantLayout> layout = ComputeLayout(weight.spec(), weight.shape());
    if (layout.ok()) QuantSpecToProto(weight.spec(), layout->scale_shape, info->mutable_spec());
  }
  info->set_bytes(weight.bytes());
  info->set_keep_original(weight.keeps_original());
  info->set_backend(std::string(backend));
}

}  // namespace

absl::StatusOr<RequestPlan> QuantizerCore::PlanRegisterWeight(
    const v1::RegisterWeightRequest& request, DataCheck check) const {
  RequestPlan plan;
  QUANTD_ASSIGN_OR_RETURN(const FloatTensor weight,
                          PlanFloatTensor(request.weight(), "weight", check));
  QUANTD_RETURN_IF_ERROR(CheckWeightShape(weight.shape));
  plan.input_dtype = weight.dtype;
  plan.input_bytes = weight.bytes;
  QUANTD_ASSIGN_OR_RETURN(const QuantSpec requested, CheckedSpecFromProto(request.spec(), "spec"));
  QUANTD_ASSIGN_OR_RETURN(plan.spec, ResolveGemmOperandSpec("B", requested, weight.shape));
  plan.layout.shape = weight.shape;
  plan.layout.numel = weight.numel;
  if (plan.spec.format != Format::kUnspecified) {
    QUANTD_ASSIGN_OR_RETURN(plan.layout, CheckedLayout(plan.spec, weight.shape, "spec"));
  }
  return plan;
}

absl::StatusOr<v1::RegisterWeightResponse> QuantizerCore::RegisterWeight(
    const v1::RegisterWeightRequest& request) const {
  QUANTD_ASSIGN_OR_RETURN(const RequestPlan plan, PlanRegisterWeight(request, DataCheck::kExact));
  const bool keep_original = request.keep_original();
  const int64_t bytes = backend_->StoredWeightBytes(plan.spec, plan.layout, keep_original);
  const std::string name = request.name().empty() ? "(unnamed)" : request.name();
  QUANTD_RETURN_IF_ERROR(weights_->Reserve(bytes, name));
  ErrorMetrics metrics;
  std::unique_ptr<StoredWeight> stored;
  const absl::Status status = Guarded("RegisterWeight", [&]() -> absl::Status {
    absl::StatusOr<std::unique_ptr<StoredWeight>> result = backend_->StoreWeight(
        ViewOf(request.weight(), plan.layout.shape, plan.input_dtype), plan.spec, keep_original,
        request.skip_metrics() || plan.spec.format == Format::kUnspecified ? nullptr : &metrics);
    if (!result.ok()) return result.status();
    stored = std::move(*result);
    return absl::OkStatus();
  });
  if (!status.ok()) {
    weights_->Unreserve(bytes);
    return status;
  }
  // Add gives the reservation back if it throws.
  WeightRegistry::Entry entry;
  QUANTD_RETURN_IF_ERROR(Guarded("RegisterWeight", [&]() -> absl::Status {
    entry = weights_->Add(request.name(), std::move(stored), bytes);
    return absl::OkStatus();
  }));
  v1::RegisterWeightResponse response;
  WeightInfoToProto(entry, backend_->name(), response.mutable_weight());
  if (!request.skip_metrics() && plan.spec.format != Format::kUnspecified) {
    ErrorMetricsToProto(metrics, response.mutable_metrics());
  }
  response.set_registered_bytes(weights_->bytes());
  response.set_cap_bytes(weights_->cap_bytes());
  return response;
}

v1::ListWeightsResponse QuantizerCore::ListWeights() const {
  v1::ListWeightsResponse response;
  for (const WeightRegistry::Entry& entry : weights_->List()) {
    WeightInfoToProto(entry, backend_->name(), response.add_weights());
  }
  response.set_registered_bytes(weights_->bytes());
  response.set_cap_bytes(weights_->cap_bytes());
  return response;
}

absl::StatusOr<v1::DropWeightResponse> QuantizerCore::DropWeight(
    const v1::DropWeightRequest& request) const {
  if (request.handle().empty()) {
    return absl::InvalidArgumentError("handle is required: the one RegisterWeight returned");
  }
  QUANTD_ASSIGN_OR_RETURN(const int64_t freed, weights_->Drop(request.handle()));
  v1::DropWeightResponse response;
  response.set_freed_bytes(freed);
  return response;
}

std::pair<int64_t, int64_t> QuantizerCore::RegisteredWeights() const {
  const WeightRegistry::Stats stats = weights_->stats();
  return {stats.count, stats.bytes};
}

absl::StatusOr<v1::CalibrateResponse> QuantizerCore::Calibrate(
    const v1::CalibrateRequest& request) const {
  QUANTD_ASSIGN_OR_RETURN(RequestPlan plan, PlanCalibrate(request, DataCheck::kExact));
  const QuantLayout& layout = plan.layout;
  CalibrationOptions options;
  options.method = request.method() == v1::CALIBRATION_METHOD_UNSPECIFIED
                       ? CalibrationMethod::kAmax
                       : static_cast<CalibrationMethod>(request.method());
  options.percentile = request.percentile() == 0.0 ? kDefaultPercentile : request.percentile();
  options.search_steps = request.search_steps() == 0 ? kDefaultSearchSteps : request.search_steps();
  options.search_min_ratio =
      request.search_min_ratio() == 0.0f ? kDefaultSearchMinRatio : request.search_min_ratio();
  CalibrationResult result;
  QUANTD_RETURN_IF_ERROR(Guarded("Calibrate", [&]() -> absl::Status {
    return backend_->Calibrate(ViewOf(request.input(), layout.shape, plan.input_dtype), plan.spec,
                               options, &result);
  }));
  const auto num_scales = static_cast<size_t>(layout.geometry.num_scales);
  if (result.scales.size() != num_scales || result.amax.size() != num_scales ||
      result.clip_ratios.size() != num_scales ||
      (plan.spec.asymmetric && result.zero_points.size() != num_scales)) {
    return absl::InternalError(absl::StrCat(
        "backend ", backend_->name(), " calibrated ", result.scales.size(), " scales, ",
        result.amax.size(), " amax values, ", result.clip_ratios.size(), " clip ratios and ",
        result.zero_points.size(), " zero-points; the layout has ", num_scales, " scale groups"));
  }
  v1::CalibrateResponse response;
  QuantSpec calibrated = plan.spec;
  calibrated.static_scales = result.scales;
  if (plan.spec.asymmetric) calibrated.static_zero_points = result.zero_points;
  QuantSpecToProto(calibrated, layout.scale_shape, response.mutable_spec());
  SetTensor(DType::kF32, layout.scale_shape, result.scales, response.mutable_scales());
  if (plan.spec.asymmetric) {
    SetTensor(DType::kI32, layout.scale_shape, result.zero_points, response.mutable_zero_points());
  }
  SetTensor(DType::kF32, layout.scale_shape, result.amax, response.mutable_amax());
  SetTensor(DType::kF32, layout.scale_shape, result.clip_ratios, response.mutable_clip_ratios());
  ErrorMetricsToProto(result.metrics, response.mutable_metrics());
  response.set_backend(std::string(backend_->name()));
  return response;
}

v1::GetCapabilitiesResponse QuantizerCore::GetCapabilities() const {
  v1::GetCapabilitiesResponse response;
  response.set_version(QUANTD_VERSION);
  const std::vector<std::string> descriptors = DescriptorExamples();
  for (const FormatTraits& row : kFormatTraits) {
    if (row.format == Format::kUnspecified) continue;
    v1::FormatInfo* info = response.add_formats();
    info->set_format(FormatToProto(row.format));
    info->set_name(std::string(row.name));
    info->set_bits(row.bits);
    switch (row.kind) {
      case ElementKind::kInt:
        info->set_element_kind("int");
        info->set_max_finite(static_cast<double>(row.qmax));
        break;
      case ElementKind::kNf4:
        info->set_element_kind("nf4");
        info->set_max_finite(static_cast<double>(Nf4Value(15)));
        break;
      case ElementKind::kHif8:
        info->set_element_kind("hif8");
        info->set_max_finite(static_cast<double>(Hif8Decode(kHif8Max)));
        break;
      default:
        info->set_element_kind("minifloat");
        info->set_max_finite(
            static_cast<double>(MinifloatDecode(row.minifloat, row.minifloat.max_code)));
        break;
    }
    for (int g = 1; g < kNumGranularities; ++g) {
      if (FormatAllows(row.format, static_cast<Granularity>(g))) {
        info->add_granularities(static_cast<v1::Granularity>(g));
      }
    }
    info->set_supports_asymmetric(row.asymmetric_ok);
    info->set_has_nan(row.has_nan);
    info->set_has_inf(row.has_inf);
    for (const std::string& descriptor : descriptors) {
      QuantSpec spec;
      if (ApplyDescriptor(descriptor, &spec).ok() && spec.format == row.format) {
        info->add_descriptors(descriptor);
      }
    }
  }
  for (int g = 1; g < kNumGranularities; ++g) {
    response.add_granularities(static_cast<v1::Granularity>(g));
  }
  response.add_backends("cpu");
  if (CudaBackendBuilt()) response.add_backends("cuda");
  response.set_active_backend(std::string(backend_->name()));
  v1::Limits* limits = response.mutable_limits();
  limits->set_max_message_bytes(options_.max_message_bytes);
  limits->set_max_tensor_bytes(options_.max_tensor_bytes);
  limits->set_max_queue(options_.max_queue);
  limits->set_workers(options_.workers);
  limits->set_stream_chunk_bytes(options_.stream_chunk_bytes);
  limits->set_max_rank(options_.max_rank);
  for (const std::string& descriptor : descriptors) response.add_descriptors(descriptor);
  return response;
}

}  // namespace quantd::server
