// The refusals every backend shares, so that a request gets the same answer on each.
#include <cmath>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "quantd/backend.h"
#include "quantd/status.h"

namespace quantd {

absl::StatusOr<QuantLayout> LayoutOfFloatInput(const TensorView& input, const QuantSpec& spec) {
  if (!IsFloatInput(input.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("input dtype ", DTypeName(input.dtype),
                                                   " cannot be quantized; send F32, F16 or BF16"));
  }
  QUANTD_RETURN_IF_ERROR(CheckByteLength(input.dtype, input.shape, input.bytes));
  if (input.data == nullptr && input.bytes > 0 && input.upload == nullptr) {
    return absl::InvalidArgumentError("input.data is null and no upload holds the input's bytes");
  }
  return ComputeLayout(spec, input.shape);
}

absl::Status CheckInHostMemory(const TensorView& input) {
  if (input.data == nullptr && input.bytes > 0) {
    return absl::InvalidArgumentError(
        "input.data is null: this backend reads the input from host memory, not from an upload");
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantLayout> LayoutOfDequantization(const ConstQuantizedBuffers& in,
                                                   const QuantSpec& spec,
                                                   const MutableTensorView& out) {
  if (!IsFloatInput(out.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dequantize writes F32, F16 or BF16, not ", DTypeName(out.dtype)));
  }
  QUANTD_RETURN_IF_ERROR(CheckByteLength(out.dtype, out.shape, out.bytes));
  QUANTD_ASSIGN_OR_RETURN(QuantLayout layout, ComputeLayout(spec, out.shape));
  if (in.code_bytes != layout.code_bytes || in.num_scales != layout.geometry.num_scales ||
      (layout.code_bytes > 0 && in.codes == nullptr) ||
      (in.num_scales > 0 && in.scales == nullptr) ||
      (spec.asymmetric && in.num_scales > 0 && in.zero_points == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantized tensor does not match its spec: ", in.code_bytes,
                     " code bytes where ", layout.code_bytes, " are needed, ", in.num_scales,
                     " scales where ", layout.geometry.num_scales, " are needed"));
  }
  if (Traits(spec.format).scale_kind == ScaleKind::kE4M3 &&
      !(std::isfinite(in.global_scale) && in.global_scale > 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s needs its global_scale (finite, > 0) to dequantize, got %g",
                        FormatName(spec.format), in.global_scale));
  }
  return layout;
}

absl::Status FlatquantInputError(Format format, int64_t index, float v) {
  if (std::isnan(v)) return NanRejectedError(format, index);
  return absl::InvalidArgumentError(absl::StrCat(
      "input element ", index, " is infinite; ", FormatName(format),
      " transforms each row as a whole (one Inf would spread over its row): send finite values"));
}

std::vector<float> ElementScalesOf(const ConstQuantizedBuffers& in, const QuantSpec& spec) {
  std::vector<float> element_scales;
  if (Traits(spec.format).scale_kind != ScaleKind::kE4M3) return element_scales;
  element_scales.resize(in.num_scales);
  for (int64_t i = 0; i < in.num_scales; ++i) {
    element_scales[i] = Nvfp4ElementScale(in.scales[i], in.global_scale);
  }
  return element_scales;
}

absl::Status CheckCalibration(const QuantSpec& spec, const CalibrationOptions& options) {
  auto invalid = [](std::string message) { return absl::InvalidArgumentError(message); };
  if (spec.granularity == Granularity::kNone) {
    return invalid(
        "granularity none is a plain cast with no scale to calibrate; use tensor, channel, "
        "token, group or block");
  }
  if (spec.has_static_scales()) return invalid("calibrate computes scales; drop static_scales");
  if (Traits(spec.format).block.size > 0) {
    return invalid(absl::StrCat(FormatName(spec.format),
                                " scales are computed from each block when it is quantized "
                                "(they cannot be given as static scales): nothing to calibrate"));
  }
  switch (options.method) {
    case CalibrationMethod::kUnspecified:
    case CalibrationMethod::kAmax:
      return absl::OkStatus();
    case CalibrationMethod::kPercentile:
      if (!(options.percentile > 0.0 && options.percentile <= 100.0)) {
        return invalid(
            absl::StrFormat("percentile must be in (0, 100], got %g", options.percentile));
      }
      return absl::OkStatus();
    case CalibrationMethod::kMse:
      if (options.search_steps < 1 || options.search_steps > 1000) {
        return invalid(
            absl::StrCat("search_steps must be in [1, 1000], got ", options.search_steps));
      }
      if (!(options.search_min_ratio > 0.0f && options.search_min_ratio <= 1.0f)) {
        return invalid(absl::StrFormat("search_min_ratio must be in (0, 1], got %g",
                                       options.search_min_ratio));
      }
      if (spec.clip_ratio != 1.0f) {
        return invalid("MSE calibration searches for the clip ratio; leave clip_ratio unset");
      }
      return absl::OkStatus();
  }
  return invalid(absl::StrCat("unknown calibration method ", static_cast<int>(options.method)));
}

absl::Status NanRejectedError(Format format, int64_t index) {
  return absl::InvalidArgumentError(absl::StrCat(
      "input element ", index, " is NaN and ", FormatName(format),
      Traits(format).has_nan ? " was asked to reject NaN (nan_policy reject)" : " has no NaN",
      "; clean the input or set nan_policy zero to quantize NaN as 0"));
}

absl::Status RangeOverflowError(int64_t group) {
  return absl::InvalidArgumentError(absl::StrCat("the asymmetric range max - min of scale group ",
                                                 group,
                                                 " overflows float32; use symmetric quantization"));
}

}  // namespace quantd
