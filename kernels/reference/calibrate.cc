// Static-scale calibration on the CPU: amax, percentile and MSE-optimal clip search.
#include "calibrate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "quantd/status.h"
#include "row_ops.h"

namespace quantd::reference {
namespace {

// The finite elements of every scale group, contiguous per group and in flat order within
// it: group g holds values[offsets[g] .. offsets[g + 1]).
struct GroupedValues {
  std::vector<float> values;
  std::vector<int64_t> offsets;
};

GroupedValues GroupFiniteValues(const TensorView& x, const QuantLayout& layout, bool absolute) {
  const ScaleGeometry& g = layout.geometry;
  GroupedValues grouped;
  grouped.offsets.assign(g.num_scales + 1, 0);
  std::vector<float> row_values(g.cols);
  for (int64_t row = 0; row < RowsToVisit(g); ++row) {
    LoadRow(x, row, g.cols, row_values.data());
    ForEachRun(g, row, [&](int64_t c0, int64_t c1, int64_t group) {
      for (int64_t col = c0; col < c1; ++col) {
        grouped.offsets[group + 1] += std::isfinite(row_values[col]) ? 1 : 0;
      }
    });
  }
  for (int64_t i = 0; i < g.num_scales; ++i) grouped.offsets[i + 1] += grouped.offsets[i];
  grouped.values.resize(grouped.offsets.back());
  std::vector<int64_t> cursor(grouped.offsets.begin(), grouped.offsets.end() - 1);
  for (int64_t row = 0; row < RowsToVisit(g); ++row) {
    LoadRow(x, row, g.cols, row_values.data());
    ForEachRun(g, row, [&](int64_t c0, int64_t c1, int64_t group) {
      for (int64_t col = c0; col < c1; ++col) {
        const float v = row_values[col];
        if (std::isfinite(v)) grouped.values[cursor[group]++] = absolute ? std::fabs(v) : v;
      }
    });
  }
  return grouped;
}

// numpy's default ("linear") percentile: with the n values sorted, k = p/100 · (n - 1) and the
// result interpolates a[floor(k)] and a[floor(k) + 1] in fp64, then rounds to fp32. Reorders
// the values. 0 for an empty group.
float Percentile(float* values, int64_t n, double p) {
  if (n == 0) return 0.0f;
  const double k = p / 100.0 * static_cast<double>(n - 1);
  const int64_t f = static_cast<int64_t>(std::floor(k));
  const double t = k - static_cast<double>(f);
  std::nth_element(values, values + f, values + n);
  const double lo = values[f];
  if (t == 0.0 || f + 1 >= n) return static_cast<float>(lo);
  const double hi = *std::min_element(values + f + 1, values + n);
  return static_cast<float>(lo + (hi - lo) * t);
}

// First error reported by parallel workers.
class FirstError {
 public:
  void Offer(absl::Status status) {
    if (status.ok()) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (status_.ok()) status_ = std::move(status);
  }
  absl::Status get() const { return status_; }

 private:
  std::mutex mu_;
  absl::Status status_;
};

}  // namespace

}  // namespace quantd::reference

namespace quantd {

std::vector<float> ClipGrid(int steps, float min_ratio) {
  std::vector<float> grid(steps, 1.0f);
  for (int i = 1; i < steps; ++i) {
    grid[i] = static_cast<float>(1.0 - static_cast<double>(i) * (1.0 - min_ratio) / (steps - 1));
  }
  return grid;
}

}  // namespace quantd

namespace quantd::reference {

absl::Status Calibrate(Executor* executor, const TensorView& input, const QuantSpec& spec,
                       const QuantLayout& layout, const CalibrationOptions& options,
                       CalibrationResult* result) {
  QUANTD_RETURN_IF_ERROR(CheckCalibration(spec, options));
  const CalibrationMethod method =
      options.method == CalibrationMethod::kUnspecified ? CalibrationMethod::kAmax : options.method;

  const ElementPass pass = MakeElementPass(spec);
  const GroupStats stats = ComputeGroupStats(executor, input, layout);
  if (pass.reject_nan && stats.first_nan >= 0)
    return NanRejectedError(spec.format, stats.first_nan);

  const int64_t n = layout.geometry.num_scales;
  Scales scales;
  scales.scale.assign(n, 1.0f);
  if (spec.asymmetric) scales.zero_point.assign(n, 0);
  result->amax.resize(n);
  for (int64_t i = 0; i < n; ++i) result->amax[i] = stats.amax(i);
  result->clip_ratios.assign(n, spec.clip_ratio);
  auto zero_point = [&](int64_t i) { return spec.asymmetric ? &scales.zero_point[i] : nullptr; };

  FirstError first_error;
  switch (method) {
    case CalibrationMethod::kAmax:
      for (int64_t i = 0; i < n; ++i) {
        first_error.Offer(GroupScale(spec, i, stats.min[i], stats.max[i], spec.clip_ratio,
                                     &scales.scale[i], zero_point(i)));
      }
      break;
    case CalibrationMethod::kPercentile: {
      GroupedValues grouped = GroupFiniteValues(input, layout, /*absolute=*/!spec.asymmetric);
      executor->ParallelFor(n, 1, [&](int64_t g0, int64_t g1) {
        for (int64_t i = g0; i < g1; ++i) {
          float* values = grouped.values.data() + grouped.offsets[i];
          const int64_t count = grouped.offsets[i + 1] - grouped.offsets[i];
          // Asymmetric ranges take the p-th and (100 - p)-th percentiles of x, whichever order
          // p puts them in (p = 0.01 means the same range as p = 99.99).
          const float upper = Percentile(values, count, options.percentile);
          const float lower =
              spec.asymmetric ? Percentile(values, count, 100.0 - options.percentile) : -upper;
          const float lo = std::min(lower, upper), hi = std::max(lower, upper);
          first_error.Offer(
              GroupScale(spec, i, lo, hi, spec.clip_ratio, &scales.scale[i], zero_point(i)));
        }
      });
      break;
    }
    case CalibrationMethod::kMse: {
      const GroupedValues grouped = GroupFiniteValues(input, layout, /*absolute=*/false);
      const std::vector<float> grid = ClipGrid(options.search_steps, options.search_min_ratio);
      // Candidates are scored by their error under round-to-nearest-even: stochastic
      // rounding's expected error is what the choice should follow, not one draw.
      ElementCodec codec = pass.codec;
      if (codec.rounding == Rounding::kStochastic) codec.rounding = Rounding::kNearestEven;
      executor->ParallelFor(n, 1, [&](int64_t g0, int64_t g1) {
        for (int64_t i = g0; i < g1; ++i) {
          const float* values = grouped.values.data() + grouped.offsets[i];
          const int64_t count = grouped.offsets[i + 1] - grouped.offsets[i];
          double best_error = std::numeric_limits<double>::infinity();
          for (const float ratio : grid) {
            float s = 1.0f;
            int32_t zp = 0;
            absl::Status status = GroupScale(spec, i, stats.min[i], stats.max[i], ratio, &s, &zp);
            if (!status.ok()) {
              first_error.Offer(std::move(status));
              return;
            }
            double error = 0.0;
            for (int64_t k = 0; k < count; ++k) {
              const uint32_t code = QuantizeElement(codec, values[k], s, zp, 0u);
              const double d =
                  static_cast<double>(values[k]) - DequantizeElement(codec, code, s, zp);
              error += d * d;
            }
            // Strictly smaller: ties keep the larger ratio (less clipping).
            if (error < best_error) {
              best_error = error;
              scales.scale[i] = s;
              if (spec.asymmetric) scales.zero_point[i] = zp;
              result->clip_ratios[i] = ratio;
            }
          }
        }
      });
      break;
    }
    default:
      break;
  }
  if (absl::Status status = first_error.get(); !status.ok()) return status;

  absl::Status status =
      RunElementPass(executor, input, layout, pass, scales, &result->metrics,
                     /*need_dequantized=*/true, [](int64_t, int64_t, uint32_t, float) {});
  if (!status.ok()) return status;
  result->scales = std::move(scales.scale);
  result->zero_points = std::move(scales.zero_point);
  return absl::OkStatus();
}

}  // namespace quantd::reference
