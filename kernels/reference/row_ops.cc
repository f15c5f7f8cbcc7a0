// The CPU backend's shared passes: group statistics and scales from ranges.
#include "row_ops.h"

#include <cmath>
#include <limits>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace quantd::reference {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Whether groups of this granularity span several parallel chunks of rows, so that each chunk
// must reduce into private arrays that are merged afterwards.
bool GroupsSpanChunks(Granularity granularity) {
  return granularity == Granularity::kTensor || granularity == Granularity::kNone ||
         granularity == Granularity::kChannel;
}

}  // namespace

GroupStats ComputeGroupStats(Executor* executor, const TensorView& x, const QuantLayout& layout) {
  const ScaleGeometry& g = layout.geometry;
  GroupStats stats;
  stats.min.assign(g.num_scales, kInf);
  stats.max.assign(g.num_scales, -kInf);
  const bool private_arrays = GroupsSpanChunks(g.granularity);
  // Block rows move together so that no block straddles two chunks.
  const int64_t rows_per_unit = g.granularity == Granularity::kBlock ? g.group_rows : 1;
  const int64_t rows = RowsToVisit(g);
  const int64_t units = rows / rows_per_unit + (rows % rows_per_unit != 0 ? 1 : 0);
  FirstNan first_nan;
  std::mutex merge_mu;
  executor->ParallelFor(units, std::max<int64_t>(1, MinRowsPerChunk(g.cols) / rows_per_unit),
                        [&](int64_t u0, int64_t u1) {
                          std::vector<float> local_min, local_max;
                          if (private_arrays) {
                            local_min.assign(g.num_scales, kInf);
                            local_max.assign(g.num_scales, -kInf);
                          }
                          float* mins = private_arrays ? local_min.data() : stats.min.data();
                          float* maxs = private_arrays ? local_max.data() : stats.max.data();
                          std::vector<float> row_values(g.cols);
                          const int64_t row_end = std::min(rows, u1 * rows_per_unit);
                          for (int64_t row = u0 * rows_per_unit; row < row_end; ++row) {
                            LoadRow(x, row, g.cols, row_values.data());
                            ForEachRun(g, row, [&](int64_t c0, int64_t c1, int64_t group) {
                              float lo = mins[group], hi = maxs[group];
                              for (int64_t col = c0; col < c1; ++col) {
                                // + 0.0f turns -0 into +0: min / max (and amax) must not depend on
                                // which zero a reduction met first, since the GPU reduces in
                                // another order.
                                const float v = row_values[col] + 0.0f;
                                if (std::isnan(v)) {
                                  first_nan.Offer(row * g.cols + col);
                                } else if (std::isfinite(v)) {
                                  lo = std::min(lo, v);
                                  hi = std::max(hi, v);
                                }
                              }
                              mins[group] = lo;
                              maxs[group] = hi;
                            });
                          }
                          if (private_arrays) {
                            std::lock_guard<std::mutex> lock(merge_mu);
                            for (int64_t i = 0; i < g.num_scales; ++i) {
                              stats.min[i] = std::min(stats.min[i], local_min[i]);
                              stats.max[i] = std::max(stats.max[i], local_max[i]);
                            }
                          }
                        });
  stats.first_nan = first_nan.get();
  return stats;
}

absl::Status GroupScale(const QuantSpec& spec, int64_t group, float lo, float hi, float clip,
                        float* scale, int32_t* zero_point) {
  int32_t unused_zero_point = 0;
  if (!ScaleFromRange(MakeScaleRule(Traits(spec.format), spec.asymmetric, spec.scale_rounding), lo,
                      hi, clip, scale, zero_point != nullptr ? zero_point : &unused_zero_point)) {
    return RangeOverflowError(group);
  }
  return absl::OkStatus();
}

ElementPass MakeElementPass(const QuantSpec& spec) {
  ElementPass pass;
  pass.format = spec.format;
  pass.codec = MakeElementCodec(Traits(spec.format), spec.rounding, spec.overflow,
                                /*nan_to_zero=*/spec.nan_policy == NanPolicy::kZero);
  pass.stochastic = spec.rounding == Rounding::kStochastic;
  pass.seed = spec.seed;
  pass.reject_nan = spec.nan_policy == NanPolicy::kReject;
  return pass;
}

}  // namespace quantd::reference

namespace quantd::reference {

absl::StatusOr<Scales> ComputeScales(Executor* executor, const TensorView& x, const QuantSpec& spec,
                                     const QuantLayout& layout, const ElementPass& pass) {
  Scales scales;
  if (spec.granularity == Granularity::kNone) {
    scales.scale.assign(1, 1.0f);
    return scales;  // NaN rejection, if asked, happens in the element pass
  }
  if (spec.has_static_scales()) {
    scales.scale = spec.static_scales;
    scales.zero_point = spec.static_zero_points;
    return scales;
  }
  const GroupStats stats = ComputeGroupStats(executor, x, layout);
  if (pass.reject_nan && stats.first_nan >= 0)
    return NanRejectedError(spec.format, stats.first_nan);
  const int64_t n = layout.geometry.num_scales;
  scales.scale.resize(n);
  if (Traits(spec.format).scale_kind == ScaleKind::kE4M3) {
    if (spec.static_global_scale != 0.0f) {
      scales.global_scale = spec.static_global_scale;
    } else {
      float tensor_amax = 0.0f;
      for (int64_t i = 0; i < n; ++i) tensor_amax = std::max(tensor_amax, stats.amax(i));
      scales.global_scale = Nvfp4GlobalScale(tensor_amax);
    }
    scales.element.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      scales.scale[i] = Nvfp4BlockScale(stats.amax(i), scales.global_scale);
      scales.element[i] = Nvfp4ElementScale(scales.scale[i], scales.global_scale);
    }
    return scales;
  }
  if (spec.asymmetric) scales.zero_point.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    absl::Status status =
        GroupScale(spec, i, stats.min[i], stats.max[i], spec.clip_ratio, &scales.scale[i],
                   spec.asymmetric ? &scales.zero_point[i] : nullptr);
    if (!status.ok()) return status;
  }
  if (spec.double_quant) {
    scales.double_quant = DoubleQuantize(scales.scale);
    scales.dequant = DoubleDequantize(scales.double_quant);
  }
  return scales;
}

}  // namespace quantd::reference
