// Shared helpers of the quantd_unit_test binary: status matchers, input fills, bit-exact float
// comparison and the call sequence that runs one quantization through a Backend.
//
//   EXPECT_THAT(ResolveSpec(spec, shape), StatusIs(absl::StatusCode::kInvalidArgument));
//   std::vector<float> x = MakeFill(FillKind::kTies, 64, Format::kInt8, /*asymmetric=*/false,
//                                   /*seed=*/7);
//   BackendRun run = RunBackend(backend, bytes, DType::kF16, shape, spec);
#ifndef QUANTD_TESTS_UNIT_TEST_SUPPORT_H_
#define QUANTD_TESTS_UNIT_TEST_SUPPORT_H_

#include <cstdint>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quantd/backend.h"
#include "quantd/format.h"
#include "quantd/spec.h"

namespace quantd {
// Readable formats, granularities and specs in gtest messages and CTest names.
inline void PrintTo(Format format, std::ostream* os) { *os << FormatName(format); }
inline void PrintTo(Granularity granularity, std::ostream* os) {
  *os << GranularityName(granularity);
}
inline void PrintTo(const QuantSpec& spec, std::ostream* os) { *os << SpecToString(spec); }
inline void PrintTo(const absl::StatusOr<QuantSpec>& spec, std::ostream* os) {
  if (spec.ok()) {
    *os << SpecToString(*spec);
  } else {
    *os << spec.status();
  }
}
}  // namespace quantd

namespace quantd::testing {

inline const absl::Status& GetStatus(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

MATCHER_P(StatusIs, code,
          std::string(negation ? "is not " : "is ") + absl::StatusCodeToString(code)) {
  const absl::Status& status = GetStatus(arg);
  *result_listener << "status " << status;
  return status.code() == code;
}

MATCHER_P2(StatusIs, code, message_matcher, "") {
  const absl::Status& status = GetStatus(arg);
  *result_listener << "status " << status;
  return status.code() == code &&
         ::testing::ExplainMatchResult(message_matcher, std::string(status.message()),
                                       result_listener);
}

MATCHER(IsOk, "is OK") {
  const absl::Status& status = GetStatus(arg);
  *result_listener << "status " << status;
  return status.ok();
}

// Same bits, or both NaN (NaN payloads are not part of the contract; NaN *codes* are, and are
// compared as bytes).
inline bool SameFloat(float a, float b) {
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y || (a != a && b != b);
}

inline uint32_t Bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}

// |a - b| <= rel · max(|a|, |b|) + abs_tol, with NaN == NaN and equal infinities.
bool NearRel(double a, double b, double rel, double abs_tol = 0.0);

void ExpectMetricsNear(const ErrorMetrics& got, double mse, double rmse, double max_abs_err,
                       double sqnr_db, double cosine, double rel_fro_err, int64_t count,
                       int64_t nonfinite_count, double rel);

enum class FillKind {
  kNormal,       // N(0, 1)
  kNormalSmall,  // N(0, 1e-3)
  kNormalLarge,  // N(0, 1e4)
  kZeros,        // +0 and -0
  kSubnormal,    // fp32 subnormals, plus values in the minifloat subnormal ranges
  kMaxNormal,    // ±FLT_MAX, ±448, ±57344, ±65504 among normal values
  kTies,         // exact rounding ties once scaled (see MakeFill)
  kSpecials,     // ±Inf, ±NaN and -0 mixed into N(0, 1)
  kHuge,         // magnitudes up to 3e38
  kWideRange,    // log-uniform over 2^-30 .. 2^20, both signs: every binade of every format
};
inline constexpr FillKind kAllFills[] = {
    FillKind::kNormal,    FillKind::kNormalSmall, FillKind::kNormalLarge, FillKind::kZeros,
    FillKind::kSubnormal, FillKind::kMaxNormal,   FillKind::kTies,        FillKind::kSpecials,
    FillKind::kHuge,      FillKind::kWideRange};
const char* FillName(FillKind kind);

// `n` fp32 values. kTies makes values that are exact ties after division by the scale the data
// produce in every group that holds an anchor (int sym: ±qmax anchors and half-integers;
// asym: qmin and qmax anchors; minifloats: ±max anchors and midpoints of adjacent values).
std::vector<float> MakeFill(FillKind kind, int64_t n, Format format, bool asymmetric,
                            uint64_t seed);

// "Int8", "Fp8E4m3", ... for test names.
std::string CamelName(absl::string_view name);

// Test names of format-parameterized suites: "Int8", "Fp8E4m3", "Mxfp4".
inline std::string FormatParamName(const ::testing::TestParamInfo<Format>& info) {
  return CamelName(FormatName(info.param));
}

// The formats whose scales are free fp32 values (not MX's E8M0 powers of two): what can be
// calibrated or given static scales.
inline std::vector<Format> FormatsWithFreeScales() {
  std::vector<Format> formats;
  for (Format format : AllFormats()) {
    if (Traits(format).block.size == 0) formats.push_back(format);
  }
  return formats;
}
// The formats whose x̂ approximates the input itself: all but FlatQuant, which quantizes (and
// reconstructs) each row's transform (flatquant_test.cc has its properties).
inline std::vector<Format> FormatsQuantizingTheirInput() {
  std::vector<Format> formats;
  for (Format format : AllFormats()) {
    if (!Traits(format).kronecker_transform) formats.push_back(format);
  }
  return formats;
}
std::string ShapeName(const Shape& shape);

// The rounding a test asks for, or the format's only one where it has just one (HiF8: ties
// away from zero; NF4: its decision tree, spelled RNE; ResolveSpec refuses the others).
inline Rounding RoundingFor(Format format, Rounding wanted) {
  switch (Traits(format).kind) {
    case ElementKind::kHif8:
      return Rounding::kNearestAway;
    case ElementKind::kNf4:
      return Rounding::kNearestEven;
    default:
      return wanted;
  }
}

struct BackendRun {
  absl::Status status;
  QuantLayout layout;
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  std::vector<int32_t> zero_points;
  float global_scale = 0.0f;     // NVFP4
  DoubleQuantized double_quant;  // NF4 with double quantization
  ErrorMetrics metrics;
};

// ResolveSpec + ComputeLayout + Backend::Quantize of `bytes` (dtype, shape).
BackendRun RunQuantize(Backend& backend, const std::vector<uint8_t>& bytes, DType dtype,
                       const Shape& shape, const QuantSpec& requested);

// Backend::Dequantize into an `out_dtype` tensor; returns its bytes.
absl::StatusOr<std::vector<uint8_t>> RunDequantize(Backend& backend, const QuantSpec& resolved,
                                                   const Shape& shape, const BackendRun& run,
                                                   DType out_dtype);

// Backend::QuantDequant into an `out_dtype` tensor.
absl::StatusOr<std::vector<uint8_t>> RunQuantDequant(Backend& backend,
                                                     const std::vector<uint8_t>& bytes, DType dtype,
                                                     const Shape& shape, const QuantSpec& resolved,
                                                     DType out_dtype, ErrorMetrics* metrics);

std::vector<float> AsFloats(const std::vector<uint8_t>& bytes);
std::vector<uint8_t> FloatBytes(const std::vector<float>& values);

// Quantize + Dequantize of F32 values on a fresh CPU backend over `executor` (inline when
// null). `status` is the first error; `x_hat` is Dequantize's F32 output.
struct Quantized {
  absl::Status status;
  QuantSpec spec;  // resolved
  BackendRun run;
  std::vector<float> x_hat;
};
Quantized QuantizeFloats(const std::vector<float>& x, const Shape& shape,
                         const QuantSpec& requested, Executor* executor = nullptr);

}  // namespace quantd::testing

#endif  // QUANTD_TESTS_UNIT_TEST_SUPPORT_H_
