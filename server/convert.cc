#include "server/convert.h"

#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "quantd/codec.h"
#include "quantd/flatquant.h"
#include "quantd/status.h"

namespace quantd::server {
namespace {

// The numerics' enums mirror the proto enums value for value; conversion is a cast, so these
// must hold. A new proto value without its C++ twin (or the reverse) fails the build here.
#define QUANTD_MIRRORS(cpp, proto) \
  static_assert(static_cast<int>(cpp) == static_cast<int>(proto), #cpp " must equal " #proto)

QUANTD_MIRRORS(DType::kUnspecified, v1::DTYPE_UNSPECIFIED);
QUANTD_MIRRORS(DType::kF32, v1::DTYPE_F32);
QUANTD_MIRRORS(DType::kF16, v1::DTYPE_F16);
QUANTD_MIRRORS(DType::kBF16, v1::DTYPE_BF16);
QUANTD_MIRRORS(DType::kU8, v1::DTYPE_U8);
QUANTD_MIRRORS(DType::kI8, v1::DTYPE_I8);
QUANTD_MIRRORS(DType::kI32, v1::DTYPE_I32);
static_assert(kNumDTypes == v1::DType_ARRAYSIZE, "quantd::DType must cover quantd.v1.DType");

QUANTD_MIRRORS(Format::kUnspecified, v1::FORMAT_UNSPECIFIED);
QUANTD_MIRRORS(Format::kInt8, v1::FORMAT_INT8);
QUANTD_MIRRORS(Format::kInt4, v1::FORMAT_INT4);
QUANTD_MIRRORS(Format::kUint8, v1::FORMAT_UINT8);
QUANTD_MIRRORS(Format::kUint4, v1::FORMAT_UINT4);
QUANTD_MIRRORS(Format::kFp8E4M3, v1::FORMAT_FP8_E4M3);
QUANTD_MIRRORS(Format::kFp8E5M2, v1::FORMAT_FP8_E5M2);
QUANTD_MIRRORS(Format::kMxfp8E4M3, v1::FORMAT_MXFP8_E4M3);
QUANTD_MIRRORS(Format::kMxfp8E5M2, v1::FORMAT_MXFP8_E5M2);
QUANTD_MIRRORS(Format::kMxfp6E3M2, v1::FORMAT_MXFP6_E3M2);
QUANTD_MIRRORS(Format::kMxfp6E2M3, v1::FORMAT_MXFP6_E2M3);
QUANTD_MIRRORS(Format::kMxfp4, v1::FORMAT_MXFP4);
QUANTD_MIRRORS(Format::kMxint8, v1::FORMAT_MXINT8);
QUANTD_MIRRORS(Format::kNvfp4, v1::FORMAT_NVFP4);
QUANTD_MIRRORS(Format::kHif8, v1::FORMAT_HIF8);
QUANTD_MIRRORS(Format::kNf4, v1::FORMAT_NF4);
QUANTD_MIRRORS(Format::kFlatquantInt4, v1::FORMAT_FLATQUANT_INT4);
static_assert(kNumFormats == v1::Format_ARRAYSIZE,
              "the traits table (quantd::kNumFormats) must have one row per quantd.v1.Format");

QUANTD_MIRRORS(Granularity::kUnspecified, v1::GRANULARITY_UNSPECIFIED);
QUANTD_MIRRORS(Granularity::kNone, v1::GRANULARITY_NONE);
QUANTD_MIRRORS(Granularity::kTensor, v1::GRANULARITY_TENSOR);
QUANTD_MIRRORS(Granularity::kChannel, v1::GRANULARITY_CHANNEL);
QUANTD_MIRRORS(Granularity::kToken, v1::GRANULARITY_TOKEN);
QUANTD_MIRRORS(Granularity::kGroup, v1::GRANULARITY_GROUP);
QUANTD_MIRRORS(Granularity::kBlock, v1::GRANULARITY_BLOCK);
static_assert(kNumGranularities == v1::Granularity_ARRAYSIZE,
              "quantd::Granularity must cover quantd.v1.Granularity");

QUANTD_MIRRORS(Rounding::kUnspecified, v1::ROUNDING_UNSPECIFIED);
QUANTD_MIRRORS(Rounding::kNearestEven, v1::ROUNDING_NEAREST_EVEN);
QUANTD_MIRRORS(Rounding::kStochastic, v1::ROUNDING_STOCHASTIC);
QUANTD_MIRRORS(Rounding::kNearestAway, v1::ROUNDING_NEAREST_AWAY);

QUANTD_MIRRORS(Overflow::kUnspecified, v1::OVERFLOW_UNSPECIFIED);
QUANTD_MIRRORS(Overflow::kSaturate, v1::OVERFLOW_SATURATE);
QUANTD_MIRRORS(Overflow::kNonfinite, v1::OVERFLOW_NONFINITE);

QUANTD_MIRRORS(NanPolicy::kUnspecified, v1::NAN_POLICY_UNSPECIFIED);
QUANTD_MIRRORS(NanPolicy::kReject, v1::NAN_POLICY_REJECT);
QUANTD_MIRRORS(NanPolicy::kZero, v1::NAN_POLICY_ZERO);
QUANTD_MIRRORS(NanPolicy::kPropagate, v1::NAN_POLICY_PROPAGATE);

QUANTD_MIRRORS(Packing::kUnspecified, v1::PACKING_UNSPECIFIED);
QUANTD_MIRRORS(Packing::kBitstream, v1::PACKING_BITSTREAM);
QUANTD_MIRRORS(Packing::kInt32Offset, v1::PACKING_INT32_OFFSET);
QUANTD_MIRRORS(Packing::kHighNibbleFirst, v1::PACKING_HIGH_NIBBLE_FIRST);
QUANTD_MIRRORS(ScaleRounding::kUnspecified, v1::SCALE_RULE_UNSPECIFIED);
QUANTD_MIRRORS(ScaleRounding::kFloor, v1::SCALE_RULE_FLOOR);
QUANTD_MIRRORS(ScaleRounding::kRceil, v1::SCALE_RULE_RCEIL);
QUANTD_MIRRORS(ScaleRounding::kEven, v1::SCALE_RULE_EVEN);
QUANTD_MIRRORS(ScaleRounding::kNearest, v1::SCALE_RULE_NEAREST);

QUANTD_MIRRORS(CalibrationMethod::kUnspecified, v1::CALIBRATION_METHOD_UNSPECIFIED);
QUANTD_MIRRORS(CalibrationMethod::kAmax, v1::CALIBRATION_METHOD_AMAX);
QUANTD_MIRRORS(CalibrationMethod::kPercentile, v1::CALIBRATION_METHOD_PERCENTILE);
QUANTD_MIRRORS(CalibrationMethod::kMse, v1::CALIBRATION_METHOD_MSE);

// absl::StatusCode and grpc::StatusCode share their numbering (ToGrpcStatus is a cast).
QUANTD_MIRRORS(absl::StatusCode::kOk, grpc::StatusCode::OK);
QUANTD_MIRRORS(absl::StatusCode::kCancelled, grpc::StatusCode::CANCELLED);
QUANTD_MIRRORS(absl::StatusCode::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT);
QUANTD_MIRRORS(absl::StatusCode::kDeadlineExceeded, grpc::StatusCode::DEADLINE_EXCEEDED);
QUANTD_MIRRORS(absl::StatusCode::kResourceExhausted, grpc::StatusCode::RESOURCE_EXHAUSTED);
QUANTD_MIRRORS(absl::StatusCode::kFailedPrecondition, grpc::StatusCode::FAILED_PRECONDITION);
QUANTD_MIRRORS(absl::StatusCode::kUnimplemented, grpc::StatusCode::UNIMPLEMENTED);
QUANTD_MIRRORS(absl::StatusCode::kInternal, grpc::StatusCode::INTERNAL);
QUANTD_MIRRORS(absl::StatusCode::kUnavailable, grpc::StatusCode::UNAVAILABLE);
QUANTD_MIRRORS(absl::StatusCode::kUnauthenticated, grpc::StatusCode::UNAUTHENTICATED);

#undef QUANTD_MIRRORS

// Longest message sent back; it travels in the grpc-message trailer.
constexpr size_t kMaxStatusMessageBytes = 4096;

template <typename Enum>
[[nodiscard]] absl::StatusOr<Enum> EnumFromProto(int value, bool (*is_valid)(int),
                                                 const std::string& (*name_of)(int), int last,
                                                 absl::string_view field) {
  if (!is_valid(value)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " has the unknown value ", value, "; this server knows 0 (", name_of(0), ") to ",
        last, " (", name_of(last), "): upgrade the server or send a value it knows"));
  }
  return static_cast<Enum>(value);
}

// The enum descriptors' Name functions take the enum type; adapt them to int.
const std::string& DTypeNameOf(int v) { return v1::DType_Name(static_cast<v1::DType>(v)); }
const std::string& FormatNameOf(int v) { return v1::Format_Name(static_cast<v1::Format>(v)); }
const std::string& GranularityNameOf(int v) {
  return v1::Granularity_Name(static_cast<v1::Granularity>(v));
}
const std::string& RoundingNameOf(int v) { return v1::Rounding_Name(static_cast<v1::Rounding>(v)); }
const std::string& OverflowNameOf(int v) { return v1::Overflow_Name(static_cast<v1::Overflow>(v)); }
const std::string& NanPolicyNameOf(int v) {
  return v1::NanPolicy_Name(static_cast<v1::NanPolicy>(v));
}
const std::string& PackingNameOf(int v) { return v1::Packing_Name(static_cast<v1::Packing>(v)); }
const std::string& ScaleRuleNameOf(int v) {
  return v1::ScaleRule_Name(static_cast<v1::ScaleRule>(v));
}
const std::string& CalibrationMethodNameOf(int v) {
  return v1::CalibrationMethod_Name(static_cast<v1::CalibrationMethod>(v));
}

// Copies a Tensor's bytes into `out` after checking dtype and length. Empty (no shape, no data,
// no dtype) means "not given".
template <typename T>
[[nodiscard]] absl::Status CopyStaticTensor(const v1::Tensor& tensor, DType want,
                                            absl::string_view field, std::vector<T>* out) {
  if (tensor.dtype() == v1::DTYPE_UNSPECIFIED && tensor.shape_size() == 0 &&
      tensor.data().empty()) {
    return absl::OkStatus();
  }
  QUANTD_ASSIGN_OR_RETURN(DType dtype,
                          DTypeFromProto(tensor.dtype(), absl::StrCat(field, ".dtype")));
  if (dtype != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be ", DTypeName(want), ", not ", DTypeName(dtype)));
  }
  const Shape shape(tensor.shape().begin(), tensor.shape().end());
  if (static_cast<int>(shape.size()) > kMaxRank) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " has rank ", shape.size(), "; at most ", kMaxRank, " is accepted"));
  }
  const auto length = static_cast<int64_t>(tensor.data().size());
  if (shape.empty()) {
    // A flat list of values without a shape is fine: only the count matters to ResolveSpec.
    if (length % static_cast<int64_t>(sizeof(T)) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " holds ", length, " bytes, not a whole number of ", DTypeName(want),
                       " values (", sizeof(T), " bytes each)"));
    }
  } else {
    absl::Status status = CheckByteLength(dtype, shape, length);
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat(field, ": ", status.message()));
    }
  }
  out->resize(static_cast<size_t>(length) / sizeof(T));
  if (length > 0) std::memcpy(out->data(), tensor.data().data(), static_cast<size_t>(length));
  return absl::OkStatus();
}

template <typename T>
void WriteStaticTensor(const std::vector<T>& values, DType dtype, const Shape& shape,
                       v1::Tensor* tensor) {
  tensor->set_dtype(DTypeToProto(dtype));
  if (shape.empty()) {
    tensor->add_shape(static_cast<int64_t>(values.size()));
  } else {
    for (int64_t d : shape) tensor->add_shape(d);
  }
  tensor->set_data(values.data(), values.size() * sizeof(T));
}

// Whether `spec`'s FlatQuant matrices are the identities of DecomposeDim(n1 · n2) (or absent).
bool IsDefaultTransform(const QuantSpec& spec) {
  const int64_t n1 = MatrixSide(spec.transform_left.size());
  const int64_t n2 = MatrixSide(spec.transform_right.size());
  if (DecomposeDim(n1 * n2) != std::pair<int64_t, int64_t>{n1, n2}) return n1 == 0 && n2 == 0;
  const auto is_identity = [](const std::vector<float>& m, int64_t n) {
    for (int64_t i = 0; i < n * n; ++i) {
      if (m[i] != (i % (n + 1) == 0 ? 1.0f : 0.0f)) return false;
    }
    return true;
  };
  return is_identity(spec.transform_left, n1) && is_identity(spec.transform_right, n2);
}

}  // namespace

absl::StatusOr<DType> DTypeFromProto(int value, absl::string_view field) {
  return EnumFromProto<DType>(value, v1::DType_IsValid, DTypeNameOf, v1::DType_MAX, field);
}
absl::StatusOr<Format> FormatFromProto(int value, absl::string_view field) {
  return EnumFromProto<Format>(value, v1::Format_IsValid, FormatNameOf, v1::Format_MAX, field);
}
absl::StatusOr<Granularity> GranularityFromProto(int value, absl::string_view field) {
  return EnumFromProto<Granularity>(value, v1::Granularity_IsValid, GranularityNameOf,
                                    v1::Granularity_MAX, field);
}
absl::StatusOr<Rounding> RoundingFromProto(int value, absl::string_view field) {
  return EnumFromProto<Rounding>(value, v1::Rounding_IsValid, RoundingNameOf, v1::Rounding_MAX,
                                 field);
}
absl::StatusOr<Overflow> OverflowFromProto(int value, absl::string_view field) {
  return EnumFromProto<Overflow>(value, v1::Overflow_IsValid, OverflowNameOf, v1::Overflow_MAX,
                                 field);
}
absl::StatusOr<NanPolicy> NanPolicyFromProto(int value, absl::string_view field) {
  return EnumFromProto<NanPolicy>(value, v1::NanPolicy_IsValid, NanPolicyNameOf, v1::NanPolicy_MAX,
                                  field);
}
absl::StatusOr<ScaleRounding> ScaleRoundingFromProto(int value, absl::string_view field) {
  return EnumFromProto<ScaleRounding>(value, v1::ScaleRule_IsValid, ScaleRuleNameOf,
                                      v1::ScaleRule_MAX, field);
}

absl::StatusOr<Packing> PackingFromProto(int value, absl::string_view field) {
  return EnumFromProto<Packing>(value, v1::Packing_IsValid, PackingNameOf, v1::Packing_MAX, field);
}
absl::StatusOr<CalibrationMethod> CalibrationMethodFromProto(int value, absl::string_view field) {
  return EnumFromProto<CalibrationMethod>(value, v1::CalibrationMethod_IsValid,
                                          CalibrationMethodNameOf, v1::CalibrationMethod_MAX,
                                          field);
}

absl::StatusOr<QuantSpec> QuantSpecFromProto(const v1::QuantSpec& proto, absl::string_view field) {
  auto name = [field](absl::string_view member) { return absl::StrCat(field, ".", member); };
  QuantSpec spec;
  QUANTD_ASSIGN_OR_RETURN(spec.format, FormatFromProto(proto.format(), name("format")));
  QUANTD_ASSIGN_OR_RETURN(spec.granularity,
                          GranularityFromProto(proto.granularity(), name("granularity")));
  QUANTD_ASSIGN_OR_RETURN(spec.rounding, RoundingFromProto(proto.rounding(), name("rounding")));
  QUANTD_ASSIGN_OR_RETURN(spec.overflow, OverflowFromProto(proto.overflow(), name("overflow")));
  QUANTD_ASSIGN_OR_RETURN(spec.nan_policy,
                          NanPolicyFromProto(proto.nan_policy(), name("nan_policy")));
  QUANTD_ASSIGN_OR_RETURN(spec.packing, PackingFromProto(proto.packing(), name("packing")));
  QUANTD_ASSIGN_OR_RETURN(spec.scale_rounding,
                          ScaleRoundingFromProto(proto.scale_rule(), name("scale_rule")));
  spec.axis = proto.axis();
  spec.group_size = proto.group_size();
  spec.block_rows = proto.block_rows();
  spec.block_cols = proto.block_cols();
  spec.asymmetric = proto.asymmetric();
  spec.double_quant = proto.double_quant();
  spec.static_global_scale = proto.static_global_scale();
  spec.seed = proto.seed();
  spec.clip_ratio = proto.clip_ratio();
  if (!proto.descriptor_string().empty()) {
    if (proto.descriptor_string().size() > kMaxDescriptorLength) {
      return absl::InvalidArgumentError(
          absl::StrCat(name("descriptor_string"), " is ", proto.descriptor_string().size(),
                       " characters long; descriptors are short names like \"int4-g128\" (at most ",
                       kMaxDescriptorLength, " characters)"));
    }
    absl::Status status = ApplyDescriptor(proto.descriptor_string(), &spec);
    if (!status.ok()) {
      return absl::Status(status.code(),
                          absl::StrCat(name("descriptor_string"), ": ", status.message()));
    }
  }
  QUANTD_RETURN_IF_ERROR(CopyStaticTensor(proto.static_scales(), DType::kF32, name("static_scales"),
                                          &spec.static_scales));
  QUANTD_RETURN_IF_ERROR(CopyStaticTensor(proto.static_zero_points(), DType::kI32,
                                          name("static_zero_points"), &spec.static_zero_points));
  QUANTD_RETURN_IF_ERROR(CopyStaticTensor(proto.flatquant_left(), DType::kF32,
                                          name("flatquant_left"), &spec.transform_left));
  QUANTD_RETURN_IF_ERROR(CopyStaticTensor(proto.flatquant_right(), DType::kF32,
                                          name("flatquant_right"), &spec.transform_right));
  if (!spec.static_zero_points.empty() && spec.static_scales.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name("static_zero_points"), " is set but ", name("static_scales"),
                     " is not: static zero-points go with static scales"));
  }
  return spec;
}

void QuantSpecToProto(const QuantSpec& spec, const Shape& scale_shape, v1::QuantSpec* proto) {
  proto->Clear();
  proto->set_format(FormatToProto(spec.format));
  proto->set_granularity(GranularityToProto(spec.granularity));
  proto->set_axis(spec.axis);
  proto->set_group_size(spec.group_size);
  proto->set_block_rows(spec.block_rows);
  proto->set_block_cols(spec.block_cols);
  proto->set_asymmetric(spec.asymmetric);
  proto->set_rounding(static_cast<v1::Rounding>(spec.rounding));
  proto->set_seed(spec.seed);
  proto->set_overflow(static_cast<v1::Overflow>(spec.overflow));
  proto->set_clip_ratio(spec.clip_ratio);
  proto->set_nan_policy(static_cast<v1::NanPolicy>(spec.nan_policy));
  proto->set_packing(static_cast<v1::Packing>(spec.packing));
  proto->set_scale_rule(static_cast<v1::ScaleRule>(spec.scale_rounding));
  proto->set_double_quant(spec.double_quant);
  proto->set_static_global_scale(spec.static_global_scale);
  if (!spec.static_scales.empty()) {
    WriteStaticTensor(spec.static_scales, DType::kF32, scale_shape, proto->mutable_static_scales());
  }
  // FlatQuant's matrices, unless they are the identities ResolveSpec fills in by default (a
  // hidden of 28672 would otherwise add 266 KB of them to every response).
  if (!IsDefaultTransform(spec)) {
    for (const auto& [matrix, tensor] :
         {std::pair{&spec.transform_left, proto->mutable_flatquant_left()},
          std::pair{&spec.transform_right, proto->mutable_flatquant_right()}}) {
      const int64_t n = MatrixSide(matrix->size());
      if (n > 0) WriteStaticTensor(*matrix, DType::kF32, {n, n}, tensor);
    }
  }
  if (!spec.static_zero_points.empty()) {
    WriteStaticTensor(spec.static_zero_points, DType::kI32, scale_shape,
                      proto->mutable_static_zero_points());
  }
}

void ErrorMetricsToProto(const ErrorMetrics& metrics, v1::ErrorMetrics* proto) {
  proto->set_mse(metrics.mse);
  proto->set_rmse(metrics.rmse);
  proto->set_max_abs_err(metrics.max_abs_err);
  proto->set_sqnr_db(metrics.sqnr_db);
  proto->set_cosine(metrics.cosine);
  proto->set_rel_fro_err(metrics.rel_fro_err);
  proto->set_count(metrics.count);
  proto->set_nonfinite_count(metrics.nonfinite_count);
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::string message(status.message());
  if (message.size() > kMaxStatusMessageBytes) {
    message.resize(kMaxStatusMessageBytes);
    message += " [...]";
  }
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::move(message));
}

absl::string_view StatusCodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return "OK";
    case absl::StatusCode::kCancelled:
      return "CANCELLED";
    case absl::StatusCode::kUnknown:
      return "UNKNOWN";
    case absl::StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound:
      return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted:
      return "ABORTED";
    case absl::StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal:
      return "INTERNAL";
    case absl::StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss:
      return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

}  // namespace quantd::server
