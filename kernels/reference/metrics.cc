// Error metrics from fp64 sums (FORMATS.md "Error metrics").
#include "quantd/metrics.h"

#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace quantd {

ErrorMetrics FinalizeMetrics(const MetricSums& sums) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  ErrorMetrics m;
  m.count = sums.count;
  m.nonfinite_count = sums.nonfinite_count;
  if (sums.count == 0) return m;  // nothing measured: the defaults (exact)
  m.mse = sums.sum_err2 / static_cast<double>(sums.count);
  m.rmse = std::sqrt(m.mse);
  m.max_abs_err = sums.nan_error ? std::numeric_limits<double>::quiet_NaN() : sums.max_abs_err;
  if (sums.sum_err2 == 0.0) {
    m.sqnr_db = kInf;
    m.rel_fro_err = 0.0;
  } else if (sums.sum_x2 == 0.0) {
    m.sqnr_db = -kInf;
    m.rel_fro_err = kInf;
  } else {
    m.sqnr_db = 10.0 * std::log10(sums.sum_x2 / sums.sum_err2);
    m.rel_fro_err = std::sqrt(sums.sum_err2 / sums.sum_x2);
  }
  if (sums.sum_x2 == 0.0 && sums.sum_y2 == 0.0) {
    m.cosine = 1.0;
  } else if (sums.sum_x2 == 0.0 || sums.sum_y2 == 0.0) {
    m.cosine = 0.0;
  } else {
    m.cosine = sums.sum_xy / (std::sqrt(sums.sum_x2) * std::sqrt(sums.sum_y2));
  }
  return m;
}

absl::StatusOr<ErrorMetrics> CompareTensors(const TensorView& reference, const TensorView& approx) {
  if (reference.shape != approx.shape) {
    return absl::InvalidArgumentError(absl::StrCat("cannot compare shapes ",
                                                   ShapeToString(reference.shape), " and ",
                                                   ShapeToString(approx.shape)));
  }
  if (!IsFloatInput(reference.dtype) || !IsFloatInput(approx.dtype)) {
    return absl::InvalidArgumentError("metrics compare F32, F16 or BF16 tensors");
  }
  absl::StatusOr<int64_t> numel = NumElements(reference.shape);
  if (!numel.ok()) return numel.status();
  if (absl::Status s = CheckByteLength(reference.dtype, reference.shape, reference.bytes);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckByteLength(approx.dtype, approx.shape, approx.bytes); !s.ok()) {
    return s;
  }
  MetricSums sums;
  for (int64_t i = 0; i < *numel; ++i) {
    sums.Add(LoadAsFloat(reference.dtype, reference.data, i),
             LoadAsFloat(approx.dtype, approx.data, i));
  }
  return FinalizeMetrics(sums);
}

}  // namespace quantd
