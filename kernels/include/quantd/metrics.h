// Quantization error metrics (FORMATS.md "Error metrics"): mse, rmse, max_abs_err, sqnr_db,
// cosine, rel_fro_err, measured over the finite elements of the reference x.
//
//   MetricSums sums;                  // one per thread, fp64
//   for (...) sums.Add(x[i], x_hat[i]);
//   total.Merge(sums);
//   ErrorMetrics m = FinalizeMetrics(total);
//
// Non-finite reference values (NaN, ±Inf) are counted in nonfinite_count and left out of the
// sums: an Inf input says nothing about quantization error and would make every metric Inf.
// A finite x whose x̂ is Inf or NaN (NONFINITE overflow) does count, and shows as Inf / NaN.
#ifndef QUANTD_METRICS_H_
#define QUANTD_METRICS_H_

#include <cmath>
#include <cstdint>

#include "absl/status/statusor.h"
#include "quantd/tensor.h"

namespace quantd {

struct ErrorMetrics {
  double mse = 0.0;
  double rmse = 0.0;
  double max_abs_err = 0.0;
  double sqnr_db = INFINITY;
  double cosine = 1.0;
  double rel_fro_err = 0.0;
  int64_t count = 0;
  int64_t nonfinite_count = 0;
};

// Running fp64 sums from which the metrics follow; Merge is associative, so threads may keep
// their own and combine them in any order (the last bits then depend on the order).
struct MetricSums {
  double sum_x2 = 0.0;    // Σ x²
  double sum_y2 = 0.0;    // Σ x̂²
  double sum_xy = 0.0;    // Σ x·x̂
  double sum_err2 = 0.0;  // Σ (x - x̂)²
  double max_abs_err = 0.0;
  bool nan_error = false;  // some finite x had a NaN x̂
  int64_t count = 0;
  int64_t nonfinite_count = 0;

  void Add(float x, float x_hat) {
    if (!std::isfinite(x)) {
      ++nonfinite_count;
      return;
    }
    const double xd = x, yd = x_hat, d = xd - yd;
    sum_x2 += xd * xd;
    sum_y2 += yd * yd;
    sum_xy += xd * yd;
    sum_err2 += d * d;
    const double abs_d = std::fabs(d);
    if (std::isnan(abs_d)) {
      nan_error = true;
    } else if (abs_d > max_abs_err) {
      max_abs_err = abs_d;
    }
    ++count;
  }

  void Merge(const MetricSums& other) {
    sum_x2 += other.sum_x2;
    sum_y2 += other.sum_y2;
    sum_xy += other.sum_xy;
    sum_err2 += other.sum_err2;
    if (other.max_abs_err > max_abs_err) max_abs_err = other.max_abs_err;
    nan_error = nan_error || other.nan_error;
    count += other.count;
    nonfinite_count += other.nonfinite_count;
  }
};

// sqnr_db = 10·log10(Σx² / Σ(x-x̂)²), +inf when exact (-inf when x is all zero and x̂ is not);
// cosine = Σxx̂ / (‖x‖‖x̂‖), 1 when both are zero, 0 when one is; rel_fro_err = ‖x-x̂‖/‖x‖,
// 0 when exact, +inf when x is zero and x̂ is not. With no finite element: mse 0, sqnr +inf.
ErrorMetrics FinalizeMetrics(const MetricSums& sums);

// Metrics of `approx` against `reference`: same shape, each F32, F16 or BF16.
[[nodiscard]] absl::StatusOr<ErrorMetrics> CompareTensors(const TensorView& reference,
                                                          const TensorView& approx);

}  // namespace quantd

#endif  // QUANTD_METRICS_H_
