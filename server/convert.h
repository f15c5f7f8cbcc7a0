// Conversion between the wire contract (quantd.v1 protos) and the numerics' types
// (kernels/include/quantd/*.h), plus the one absl::Status → grpc::Status mapping.
//
// The numerics' enums mirror the proto enums value for value (static_asserts in convert.cc), so
// enum conversion is a cast after a range check. The range check matters: proto3 keeps enum
// values it does not know, so a client can send Format 99; every *FromProto function refuses
// such values with INVALID_ARGUMENT naming the field.
//
//   QUANTD_ASSIGN_OR_RETURN(quantd::QuantSpec requested, QuantSpecFromProto(request.spec()));
//   QUANTD_ASSIGN_OR_RETURN(quantd::QuantSpec spec, quantd::ResolveSpec(requested, shape));
//   QuantSpecToProto(spec, response.mutable_quantized()->mutable_spec());
//   reactor->Finish(ToGrpcStatus(status));
//
// Nothing here depends on gRPC server types, so the in-process ("embedded") quantctl links it.
#ifndef QUANTD_SERVER_CONVERT_H_
#define QUANTD_SERVER_CONVERT_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"
#include "quantd/backend.h"
#include "quantd/format.h"
#include "quantd/metrics.h"
#include "quantd/spec.h"
#include "quantd/tensor.h"
#include "quantd/v1/quantd.pb.h"

namespace quantd::server {

// Longest descriptor string accepted; longer ones are refused before they are parsed (they
// would only end up echoed back in an error message).
inline constexpr size_t kMaxDescriptorLength = 256;

// Enum values from the wire. `field` names the field in the error ("spec.format").
[[nodiscard]] absl::StatusOr<DType> DTypeFromProto(int value, absl::string_view field);
[[nodiscard]] absl::StatusOr<Format> FormatFromProto(int value, absl::string_view field);
[[nodiscard]] absl::StatusOr<Granularity> GranularityFromProto(int value, absl::string_view field);
[[nodiscard]] absl::StatusOr<Rounding> RoundingFromProto(int value, absl::string_view field);
[[nodiscard]] absl::StatusOr<Overflow> OverflowFromProto(int value, absl::string_view field);
[[nodiscard]] absl::StatusOr<NanPolicy> NanPolicyFromProto(int value, absl::string_view field);
[[nodiscard]] absl::StatusOr<Packing> PackingFromProto(int value, absl::string_view field);
[[nodiscard]] absl::StatusOr<ScaleRounding> ScaleRoundingFromProto(int value,
                                                                   absl::string_view field);
[[nodiscard]] absl::StatusOr<CalibrationMethod> CalibrationMethodFromProto(int value,
                                                                           absl::string_view field);

inline v1::DType DTypeToProto(DType dtype) { return static_cast<v1::DType>(dtype); }
inline v1::Format FormatToProto(Format format) { return static_cast<v1::Format>(format); }
inline v1::Granularity GranularityToProto(Granularity g) { return static_cast<v1::Granularity>(g); }

// The requested spec as the numerics see it, not yet resolved: the structured fields, then the
// `descriptor_string` applied on top (ApplyDescriptor refuses a descriptor that contradicts a field
// already set), then the static scales (F32) and zero-points (I32) copied out of their Tensor
// fields after checking dtype and byte length. Every enum is range-checked.
// `field` names the spec in errors ("spec", "quantized.spec").
[[nodiscard]] absl::StatusOr<QuantSpec> QuantSpecFromProto(const v1::QuantSpec& proto,
                                                           absl::string_view field = "spec");

// A resolved spec with every field filled in. `descriptor_string` is left empty: the structured
// fields say everything, and leaving it out keeps the spec re-sendable as is (e.g. to Dequantize).
// Static scales / zero-points are written when the spec has them, shaped as `scale_shape`
// (flat when `scale_shape` is empty).
void QuantSpecToProto(const QuantSpec& spec, const Shape& scale_shape, v1::QuantSpec* proto);

void ErrorMetricsToProto(const ErrorMetrics& metrics, v1::ErrorMetrics* proto);

// absl and gRPC share their code numbering, so this is a cast; messages longer than a few KiB
// are cut (they travel in a header, and a client's header limit is small).
grpc::Status ToGrpcStatus(const absl::Status& status);

// "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", ... (the gRPC spelling, for metric labels).
absl::string_view StatusCodeName(absl::StatusCode code);

}  // namespace quantd::server

#endif  // QUANTD_SERVER_CONVERT_H_
