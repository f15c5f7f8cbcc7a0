#include "test_support.h"

#include <cctype>
#include <cfloat>
#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "oracle.h"

namespace quantd::testing {

bool NearRel(double a, double b, double rel, double abs_tol) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= rel * std::max(std::fabs(a), std::fabs(b)) + abs_tol;
}

void ExpectMetricsNear(const ErrorMetrics& got, double mse, double rmse, double max_abs_err,
                       double sqnr_db, double cosine, double rel_fro_err, int64_t count,
                       int64_t nonfinite_count, double rel) {
  EXPECT_PRED4(NearRel, got.mse, mse, rel, 0.0) << "mse";
  EXPECT_PRED4(NearRel, got.rmse, rmse, rel, 0.0) << "rmse";
  EXPECT_PRED4(NearRel, got.max_abs_err, max_abs_err, rel, 0.0) << "max_abs_err";
  // sqnr and cosine are differences of logs / ratios of sums whose order may differ.
  EXPECT_PRED4(NearRel, got.sqnr_db, sqnr_db, rel, 1e-9) << "sqnr_db";
  EXPECT_PRED4(NearRel, got.cosine, cosine, rel, 1e-12) << "cosine";
  EXPECT_PRED4(NearRel, got.rel_fro_err, rel_fro_err, rel, 0.0) << "rel_fro_err";
  EXPECT_EQ(got.count, count);
  EXPECT_EQ(got.nonfinite_count, nonfinite_count);
}

const char* FillName(FillKind kind) {
  switch (kind) {
    case FillKind::kNormal:
      return "normal";
    case FillKind::kNormalSmall:
      return "normal_small";
    case FillKind::kNormalLarge:
      return "normal_large";
    case FillKind::kZeros:
      return "zeros";
    case FillKind::kSubnormal:
      return "subnormal";
    case FillKind::kMaxNormal:
      return "max_normal";
    case FillKind::kTies:
      return "ties";
    case FillKind::kSpecials:
      return "specials";
    case FillKind::kHuge:
      return "huge";
    case FillKind::kWideRange:
      return "wide_range";
  }
  return "?";
}

std::vector<float> MakeFill(FillKind kind, int64_t n, Format format, bool asymmetric,
                            uint64_t seed) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(kind) + 1);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  auto coin = [&](double p) { return uniform(rng) < p; };
  auto sign = [&]() { return coin(0.5) ? -1.0f : 1.0f; };
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const oracle::FormatInfo* info = oracle::FindFormat(format);
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    float v = 0.0f;
    switch (kind) {
      case FillKind::kNormal:
        v = static_cast<float>(normal(rng));
        break;
      case FillKind::kNormalSmall:
        v = static_cast<float>(1e-3 * normal(rng));
        break;
      case FillKind::kNormalLarge:
        v = static_cast<float>(1e4 * normal(rng));
        break;
      case FillKind::kZeros:
        v = coin(0.3) ? -0.0f : 0.0f;
        break;
      case FillKind::kSubnormal: {
        const double k = std::floor(uniform(rng) * 8388607.0) + 1.0;
        if (coin(0.5)) {
          v = sign() * static_cast<float>(std::ldexp(k, -149));  // fp32 subnormal
        } else {
          v = sign() * static_cast<float>(std::ldexp(std::floor(k / 65536.0), -16));
        }
        break;
      }
      case FillKind::kMaxNormal: {
        static constexpr float kBig[] = {FLT_MAX, 448.0f, 57344.0f, 65504.0f, 3.3895314e38f};
        v = coin(0.25) ? sign() * kBig[static_cast<size_t>(uniform(rng) * 5) % 5]
                       : static_cast<float>(normal(rng));
        break;
      }
      case FillKind::kTies: {
        const bool anchor = i == 0 || coin(0.125);
        if (info == nullptr) {
          v = static_cast<float>(normal(rng));
        } else if (info->is_int) {
          if (asymmetric) {
            if (anchor) {
              v = static_cast<float>(coin(0.5) ? info->qmin : info->qmax);
            } else {
              const int span = info->qmax - info->qmin;
              v = static_cast<float>(info->qmin + static_cast<int>(uniform(rng) * span)) + 0.5f;
            }
          } else if (anchor) {
            v = sign() * static_cast<float>(info->qmax);
          } else {
            v = sign() * (static_cast<float>(static_cast<int>(uniform(rng) * info->qmax)) + 0.5f);
          }
        } else {
          const std::vector<double> mags = oracle::ElementMagnitudes(*info);
          if (anchor) {
            v = sign() * static_cast<float>(mags.back());
          } else if (coin(1.0 / 16)) {
            // The tie between the max finite value and the first value past it.
            v = sign() *
                static_cast<float>(mags.back() + (mags.back() - mags[mags.size() - 2]) / 2);
          } else {
            const size_t k = static_cast<size_t>(uniform(rng) * (mags.size() - 1));
            v = sign() * static_cast<float>((mags[k] + mags[k + 1]) / 2);
          }
        }
        break;
      }
      case FillKind::kSpecials: {
        const double u = uniform(rng);
        if (u < 0.05) {
          v = inf;
        } else if (u < 0.10) {
          v = -inf;
        } else if (u < 0.15) {
          v = nan;
        } else if (u < 0.20) {
          v = -nan;
        } else if (u < 0.25) {
          v = -0.0f;
        } else {
          v = static_cast<float>(normal(rng));
        }
        break;
      }
      case FillKind::kHuge:
        v = i == 0 ? 3e38f
                   : static_cast<float>(std::max(-3e38, std::min(3e38, 1e38 * normal(rng))));
        break;
      case FillKind::kWideRange:
        v = sign() * static_cast<float>(std::exp2(-30.0 + 50.0 * uniform(rng)));
        break;
    }
    x[static_cast<size_t>(i)] = v;
  }
  return x;
}

std::string CamelName(absl::string_view name) {
  std::string out;
  bool upper = true;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) {
      upper = true;
      continue;
    }
    out += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
    upper = false;
  }
  return out;
}

std::string ShapeName(const Shape& shape) {
  if (shape.empty()) return "Scalar";
  return absl::StrJoin(shape, "x");
}

BackendRun RunQuantize(Backend& backend, const std::vector<uint8_t>& bytes, DType dtype,
                       const Shape& shape, const QuantSpec& requested) {
  BackendRun run;
  absl::StatusOr<QuantSpec> spec = ResolveSpec(requested, shape);
  if (!spec.ok()) {
    run.status = spec.status();
    return run;
  }
  absl::StatusOr<QuantLayout> layout = ComputeLayout(*spec, shape);
  if (!layout.ok()) {
    run.status = layout.status();
    return run;
  }
  run.layout = *layout;
  // Poison the outputs: every byte must be written. Never-null buffers even when empty (the
  // backend's handling of null empty buffers has its own test).
  run.codes.reserve(1);
  run.scales.reserve(1);
  run.codes.assign(static_cast<size_t>(layout->code_bytes), 0xA5);
  run.scales.assign(static_cast<size_t>(layout->geometry.num_scales), -7.0f);
  if (spec->asymmetric) {
    run.zero_points.reserve(1);
    run.zero_points.assign(run.scales.size(), 12345);
  }
  QuantizedBuffers out;
  out.codes = run.codes.data();
  out.code_bytes = layout->code_bytes;
  out.scales = run.scales.data();
  out.num_scales = layout->geometry.num_scales;
  out.zero_points = spec->asymmetric ? run.zero_points.data() : nullptr;
  out.global_scale = &run.global_scale;
  out.double_quant = spec->double_quant ? &run.double_quant : nullptr;
  TensorView x{dtype, shape, bytes.data(), static_cast<int64_t>(bytes.size())};
  run.status = backend.Quantize(x, *spec, out, &run.metrics);
  return run;
}

absl::StatusOr<std::vector<uint8_t>> RunDequantize(Backend& backend, const QuantSpec& resolved,
                                                   const Shape& shape, const BackendRun& run,
                                                   DType out_dtype) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  std::vector<uint8_t> out(static_cast<size_t>(numel * DTypeSize(out_dtype)), 0x5A);
  ConstQuantizedBuffers in;
  in.codes = run.codes.data();
  in.code_bytes = static_cast<int64_t>(run.codes.size());
  // NF4 with double quantization dequantizes with the absmax values it reconstructs.
  const std::vector<float> reconstructed =
      resolved.double_quant ? DoubleDequantize(run.double_quant) : std::vector<float>();
  in.scales = resolved.double_quant ? reconstructed.data() : run.scales.data();
  in.num_scales = static_cast<int64_t>(run.scales.size());
  in.zero_points = resolved.asymmetric ? run.zero_points.data() : nullptr;
  in.global_scale = run.global_scale;
  MutableTensorView view{out_dtype, shape, out.data(), static_cast<int64_t>(out.size())};
  absl::Status status = backend.Dequantize(in, resolved, view);
  if (!status.ok()) return status;
  return out;
}

absl::StatusOr<std::vector<uint8_t>> RunQuantDequant(Backend& backend,
                                                     const std::vector<uint8_t>& bytes, DType dtype,
                                                     const Shape& shape, const QuantSpec& resolved,
                                                     DType out_dtype, ErrorMetrics* metrics) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  std::vector<uint8_t> out(static_cast<size_t>(numel * DTypeSize(out_dtype)), 0x5A);
  TensorView x{dtype, shape, bytes.data(), static_cast<int64_t>(bytes.size())};
  MutableTensorView view{out_dtype, shape, out.data(), static_cast<int64_t>(out.size())};
  absl::Status status = backend.QuantDequant(x, resolved, view, metrics);
  if (!status.ok()) return status;
  return out;
}

std::vector<float> AsFloats(const std::vector<uint8_t>& bytes) {
  std::vector<float> out(bytes.size() / 4);
  if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}

std::vector<uint8_t> FloatBytes(const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * 4);
  if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

Quantized QuantizeFloats(const std::vector<float>& x, const Shape& shape,
                         const QuantSpec& requested, Executor* executor) {
  Quantized q;
  std::unique_ptr<Backend> backend = CreateReferenceBackend(executor);
  absl::StatusOr<QuantSpec> spec = ResolveSpec(requested, shape);
  if (!spec.ok()) {
    q.status = spec.status();
    return q;
  }
  q.spec = *spec;
  q.run = RunQuantize(*backend, FloatBytes(x), DType::kF32, shape, requested);
  if (!q.run.status.ok()) {
    q.status = q.run.status;
    return q;
  }
  absl::StatusOr<std::vector<uint8_t>> out =
      RunDequantize(*backend, q.spec, shape, q.run, DType::kF32);
  if (!out.ok()) {
    q.status = out.status();
    return q;
  }
  q.x_hat = AsFloats(*out);
  return q;
}

}  // namespace quantd::testing
