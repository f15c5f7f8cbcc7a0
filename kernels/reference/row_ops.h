// Internal to the CPU backend: the row-wise building blocks its passes share (which columns of
// a row share a scale, loading a row as fp32, per-group statistics, scales from a range).
#ifndef QUANTD_KERNELS_REFERENCE_ROW_OPS_H_
#define QUANTD_KERNELS_REFERENCE_ROW_OPS_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "quantd/backend.h"
#include "quantd/codec.h"
#include "quantd/double_quant.h"
#include "quantd/executor.h"
#include "quantd/metrics.h"
#include "quantd/spec.h"
#include "quantd/tensor.h"

namespace quantd::reference {

// Rows per parallel chunk so that a chunk holds at least ~32K elements.
inline int64_t MinRowsPerChunk(int64_t cols) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(cols, 1));
}

// Rows that hold elements. An empty tensor can still have 2^62 rows of zero columns: visiting
// them would take forever, so every row loop runs to this bound instead of g.rows.
inline int64_t RowsToVisit(const ScaleGeometry& g) { return g.cols == 0 ? 0 : g.rows; }

// Calls fn(col_begin, col_end, scale_index) over the runs of columns of `row` that share one
// scale, in column order.
template <typename Fn>
void ForEachRun(const ScaleGeometry& g, int64_t row, Fn&& fn) {
  switch (g.granularity) {
    case Granularity::kGroup:
    case Granularity::kBlock: {
      const int64_t base =
          (g.granularity == Granularity::kBlock ? row / g.group_rows : row) * g.groups_per_row;
      for (int64_t c0 = 0, k = 0; c0 < g.cols; c0 += g.group_cols, ++k) {
        fn(c0, std::min(g.cols, c0 + g.group_cols), base + k);
      }
      return;
    }
    case Granularity::kChannel:
      if (g.channel_is_last) {
        for (int64_t c = 0; c < g.cols; ++c) fn(c, c + 1, c);
      } else {
        fn(0, g.cols, (row / g.rows_per_channel) % g.channels);
      }
      return;
    case Granularity::kToken:
      fn(0, g.cols, row);
      return;
    default:
      fn(0, g.cols, 0);
      return;
  }
}

// Row `row` of the 2-D view as fp32, into `out` (cols floats).
inline void LoadRow(const TensorView& x, int64_t row, int64_t cols, float* out) {
  if (cols == 0) return;  // an empty tensor may come with null data
  const int64_t base = row * cols;
  if (x.dtype == DType::kF32) {
    std::memcpy(out, static_cast<const float*>(x.data) + base, cols * sizeof(float));
    return;
  }
  for (int64_t c = 0; c < cols; ++c) out[c] = LoadAsFloat(x.dtype, x.data, base + c);
}

// Flat index of the first NaN seen, an atomic minimum across threads (-1: none).
class FirstNan {
 public:
  void Offer(int64_t index) {
    int64_t current = first_.load();
    while ((current < 0 || index < current) && !first_.compare_exchange_weak(current, index)) {
    }
  }
  int64_t get() const { return first_.load(); }

 private:
  std::atomic<int64_t> first_{-1};
};

// Per scale group: min and max over the group's finite elements (+inf / -inf when it has
// none). Inf and NaN never enter a scale: one bad value must not flatten its whole group.
struct GroupStats {
  std::vector<float> min;
  std::vector<float> max;
  int64_t first_nan = -1;

  // max |x| over the group's finite elements, 0 when it has none.
  float amax(int64_t group) const {
    return min[group] <= max[group] ? std::max(max[group], -min[group]) : 0.0f;
  }
};

GroupStats ComputeGroupStats(Executor* executor, const TensorView& x, const QuantLayout& layout);

// ScaleFromRange (codec.h) for scale group `group` of `spec`, with the overflow of an
// asymmetric range as InvalidArgument naming the group.
absl::Status GroupScale(const QuantSpec& spec, int64_t group, float lo, float hi, float clip,
                        float* scale, int32_t* zero_point);

// How the element pass treats one element: the codec plus the stochastic-rounding key.
struct ElementPass {
  Format format = Format::kUnspecified;
  ElementCodec codec;
  bool stochastic = false;
  uint64_t seed = 0;
  bool reject_nan = false;

  uint32_t RandomBits(int64_t index) const {
    return stochastic ? StochasticBits(seed, static_cast<uint64_t>(index)) : 0u;
  }
};

ElementPass MakeElementPass(const QuantSpec& spec);

// Scales (and zero-points) of one quantization, one per scale group.
struct Scales {
  std::vector<float> scale;         // what Quantize reports
  std::vector<int32_t> zero_point;  // empty when symmetric
  // NVFP4: the element scales d_b (scale holds the E4M3 block scales' values) and S_enc.
  std::vector<float> element;
  float global_scale = 0.0f;
  // NF4 with double quantization: the absmax values x̂ multiplies by (DoubleDequantize), and
  // the double quantization itself.
  std::vector<float> dequant;
  DoubleQuantized double_quant;

  // What the elements of group `group` are divided by.
  float ElementScale(int64_t group) const {
    return element.empty() ? scale[group] : element[group];
  }
  // What x̂ of group `group` multiplies by.
  float DequantScale(int64_t group) const {
    return dequant.empty() ? ElementScale(group) : dequant[group];
  }
};

}  // namespace quantd::reference

namespace quantd::reference {

// The element pass: quantizes every element with its group's scale, hands (row, col, code,
// x̂) to `sink` (x̂ is 0 unless need_dequantized), and fills `metrics` when it is not null.
// InvalidArgument when the spec rejects NaN and the input holds one.
template <typename Sink>
absl::Status RunElementPass(Executor* executor, const TensorView& x, const QuantLayout& layout,
                            const ElementPass& pass, const Scales& scales, ErrorMetrics* metrics,
                            bool need_dequantized, Sink&& sink) {
  const ScaleGeometry& g = layout.geometry;
  const bool asymmetric = !scales.zero_point.empty();
  need_dequantized = need_dequantized || metrics != nullptr;
  MetricSums total;
  std::mutex merge_mu;
  FirstNan first_nan;
  executor->ParallelFor(RowsToVisit(g), MinRowsPerChunk(g.cols), [&](int64_t r0, int64_t r1) {
    MetricSums sums;
    std::vector<float> row_values(g.cols);
    for (int64_t row = r0; row < r1; ++row) {
      LoadRow(x, row, g.cols, row_values.data());
      ForEachRun(g, row, [&](int64_t c0, int64_t c1, int64_t group) {
        const float s = scales.ElementScale(group);
        const float s_hat = scales.DequantScale(group);
        const int32_t zp = asymmetric ? scales.zero_point[group] : 0;
        for (int64_t col = c0; col < c1; ++col) {
          const int64_t index = row * g.cols + col;
          const float v = row_values[col];
          if (pass.reject_nan && std::isnan(v)) first_nan.Offer(index);
          const uint32_t code = QuantizeElement(pass.codec, v, s, zp, pass.RandomBits(index));
          float x_hat = 0.0f;
          if (need_dequantized) {
            x_hat = DequantizeElement(pass.codec, code, s_hat, zp);
            if (metrics != nullptr) sums.Add(v, x_hat);
          }
          sink(row, col, code, x_hat);
        }
      });
    }
    if (metrics != nullptr) {
      std::lock_guard<std::mutex> lock(merge_mu);
      total.Merge(sums);
    }
  });
  if (first_nan.get() >= 0) return NanRejectedError(pass.format, first_nan.get());
  if (metrics != nullptr) *metrics = FinalizeMetrics(total);
  return absl::OkStatus();
}

// The scales a quantization of `x` with `spec` uses: static ones as given, 1 for a plain cast,
// else from the group statistics. Rejects NaN up front when it runs a statistics pass.
absl::StatusOr<Scales> ComputeScales(Executor* executor, const TensorView& x, const QuantSpec& spec,
                                     const QuantLayout& layout, const ElementPass& pass);

}  // namespace quantd::reference

#endif  // QUANTD_KERNELS_REFERENCE_ROW_OPS_H_
