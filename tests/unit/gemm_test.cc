// GEMM semantics (quantd/gemm.h) on the CPU backend against products computed here from the
// oracle's quantization: per-token INT8 and FP8 operands, every simulated format (MX, NVFP4,
// NF4, HiF8, INT4), batches, bias, α / β with C, output dtypes, thread-count independence, and
// the refusals' messages.
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "oracle.h"
#include "quantd/backend.h"
#include "quantd/gemm.h"
#include "quantd/status.h"
#include "test_support.h"

namespace quantd {
namespace {

using ::testing::HasSubstr;

// FORMATS.md per-row symmetric quantization, done here: s = fp32(amax / divisor), codes by
// `encode` of fp32(x / s), x̂ = fp32(s · value(code)). Rows of `cols` values.
template <typename Encode>
std::vector<float> FakeQuantRows(const std::vector<float>& x, int64_t cols, float divisor,
                                 Encode encode) {
  std::vector<float> out(x.size());
  for (size_t r = 0; r * cols < x.size(); ++r) {
    float amax = 0.0f;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(x[r * cols + c]));
    float s = amax / divisor;
    if (s == 0.0f) s = 1.0f;
    for (int64_t c = 0; c < cols; ++c) {
      out[r * cols + c] = s * static_cast<float>(encode(x[r * cols + c] / s));
    }
  }
  return out;
}

double Int8Value(float v) { return std::nearbyint(std::min(127.0f, std::max(-127.0f, v))); }

double E4M3Value(float v) {
  return oracle::MinifloatValue(
      oracle::kE4M3,
      oracle::EncodeMinifloat(oracle::kE4M3, v, Rounding::kNearestEven, 0, Overflow::kSaturate));
}

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

GemmOperands Ops(TensorView a, TensorView b, TensorView bias = {}, TensorView c = {}) {
  GemmOperands operands;
  operands.a = std::move(a);
  operands.b = std::move(b);
  operands.bias = std::move(bias);
  operands.c = std::move(c);
  return operands;
}

TensorView View(const std::vector<float>& v, Shape shape) {
  return {DType::kF32, std::move(shape), v.data(), static_cast<int64_t>(v.size() * 4)};
}

class GemmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pool_ = CreateThreadPoolExecutor(3);
    backend_ = CreateReferenceBackend(pool_.get());
  }

  // out = α·Â·B̂ᵀ (+ β·C + bias) through the backend, as F32.
  absl::StatusOr<std::vector<float>> Run(const GemmOperands& operands, const GemmSpec& requested,
                                         ErrorMetrics* metrics = nullptr) {
    QUANTD_ASSIGN_OR_RETURN(const GemmSpec spec,
                            ResolveGemmSpec(requested, operands.a.shape, operands.b.shape));
    QUANTD_ASSIGN_OR_RETURN(const GemmDims dims, CheckGemmOperands(operands, spec));
    std::vector<float> out(static_cast<size_t>(dims.batch * dims.m * dims.n));
    QUANTD_RETURN_IF_ERROR(backend_->Gemm(
        operands, spec,
        {DType::kF32, dims.out_shape, out.data(), static_cast<int64_t>(out.size() * 4)}, metrics));
    return out;
  }

  std::unique_ptr<Executor> pool_;
  std::unique_ptr<Backend> backend_;
};

// Â·B̂ᵀ[m, n] summed in fp64 here, naively; the backend's four-way sum differs only in the
// last bits of an fp64, so the fp32 results agree to one ulp.
void ExpectProduct(const std::vector<float>& out, const std::vector<float>& a_hat,
                   const std::vector<float>& b_hat, int64_t m, int64_t n, int64_t k) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t t = 0; t < k; ++t)
        sum += static_cast<double>(a_hat[i * k + t]) * b_hat[j * k + t];
      const float want = static_cast<float>(sum);
      EXPECT_NEAR(out[i * n + j], want, std::fabs(want) * 1.2e-7 + 1e-30) << i << ", " << j;
    }
  }
}

TEST_F(GemmTest, Int8PerTokenTimesPerChannelIsTheProductOfTheDequantizedOperands) {
  const int64_t m = 5, n = 7, k = 37;  // K not a multiple of anything
  const std::vector<float> a = Random(m * k, 1), b = Random(n * k, 2);
  GemmSpec spec;
  spec.a.format = spec.b.format = Format::kInt8;
  ErrorMetrics metrics;
  const absl::StatusOr<std::vector<float>> out =
      Run(Ops(View(a, {m, k}), View(b, {n, k})), spec, &metrics);
  ASSERT_TRUE(out.ok()) << out.status();
  ExpectProduct(*out, FakeQuantRows(a, k, 127.0f, Int8Value),
                FakeQuantRows(b, k, 127.0f, Int8Value), m, n, k);
  EXPECT_EQ(metrics.count, m * n);
  EXPECT_GT(metrics.sqnr_db, 25.0);  // INT8 per token: ~35 dB on normal data
  EXPECT_LT(metrics.sqnr_db, 60.0);  // but not exact: the error is measured
}

TEST_F(GemmTest, Fp8E4M3ActivationsWithUnquantizedWeights) {
  const int64_t m = 3, n = 4, k = 64;
  const std::vector<float> a = Random(m * k, 3), b = Random(n * k, 4);
  GemmSpec spec;
  spec.a.format = Format::kFp8E4M3;  // B left as given
  const absl::StatusOr<std::vector<float>> out = Run(Ops(View(a, {m, k}), View(b, {n, k})), spec);
  ASSERT_TRUE(out.ok()) << out.status();
  ExpectProduct(*out, FakeQuantRows(a, k, 448.0f, E4M3Value), b, m, n, k);
}

TEST_F(GemmTest, UnquantizedIntegerOperandsAreExact) {
  // Small integers: every product and sum is exact, in any order, and so is the metric.
  const int64_t batch = 2, m = 3, n = 5, k = 9;
  std::vector<float> a(batch * m * k), b(n * k), bias(n), c(m * n);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(static_cast<int>(i % 7) - 3);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(static_cast<int>(i % 5) - 2);
  for (size_t i = 0; i < bias.size(); ++i) bias[i] = static_cast<float>(i);
  for (size_t i = 0; i < c.size(); ++i) c[i] = static_cast<float>(i % 3);
  GemmSpec spec;
  spec.alpha = 2.0f;
  spec.beta = -1.0f;
  GemmOperands operands =
      Ops(View(a, {batch, m, k}), View(b, {n, k}), View(bias, {n}), View(c, {m, n}));
  ErrorMetrics metrics;
  const absl::StatusOr<std::vector<float>> out = Run(operands, spec, &metrics);
  ASSERT_TRUE(out.ok()) << out.status();
  for (int64_t p = 0; p < batch; ++p) {
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double sum = 0.0;
        for (int64_t t = 0; t < k; ++t) sum += a[(p * m + i) * k + t] * b[j * k + t];
        EXPECT_EQ((*out)[(p * m + i) * n + j], 2.0 * sum - c[i * n + j] + bias[j]);
      }
    }
  }
  EXPECT_EQ(metrics.mse, 0.0);
  EXPECT_TRUE(std::isinf(metrics.sqnr_db));
}

TEST_F(GemmTest, BatchedWeightsAndBatchedC) {
  const int64_t batch = 3, m = 2, n = 3, k = 16;
  const std::vector<float> a = Random(batch * m * k, 5), b = Random(batch * n * k, 6),
                           c = Random(batch * m * n, 7);
  GemmSpec spec;
  spec.a.format = spec.b.format = Format::kInt8;
  spec.beta = 0.5f;
  const absl::StatusOr<std::vector<float>> out =
      Run(Ops(View(a, {batch, m, k}), View(b, {batch, n, k}), {}, View(c, {batch, m, n})), spec);
  ASSERT_TRUE(out.ok()) << out.status();
  const std::vector<float> a_hat = FakeQuantRows(a, k, 127.0f, Int8Value);
  const std::vector<float> b_hat = FakeQuantRows(b, k, 127.0f, Int8Value);
  for (int64_t p = 0; p < batch; ++p) {
    std::vector<float> slice(m * n);
    for (int64_t i = 0; i < m * n; ++i) slice[i] = (*out)[p * m * n + i] - 0.5f * c[p * m * n + i];
    // β·c is added in fp64 before the one rounding: subtracting it in fp32 costs an ulp or two.
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double sum = 0.0;
        for (int64_t t = 0; t < k; ++t) {
          sum += static_cast<double>(a_hat[(p * m + i) * k + t]) * b_hat[(p * n + j) * k + t];
        }
        EXPECT_NEAR(slice[i * n + j], sum, 1e-5 * (1.0 + std::fabs(sum)));
      }
    }
  }
}

// The simulated formats: the product is that of the oracle's (tests/unit/oracle.h, an
// implementation of FORMATS.md independent of the backend's codec) dequantized operands, with
// blocks along K for the block formats and the default per-row scales elsewhere.
TEST_F(GemmTest, SimulatedFormatsAreTheProductOfTheOraclesDequantizedOperands) {
  const int64_t m = 5, n = 6, k = 96;
  const std::vector<float> a = Random(m * k, 8), b = Random(n * k, 9);
  const Format formats[] = {Format::kMxfp4,     Format::kMxfp6E3M2, Format::kMxfp6E2M3,
                            Format::kMxfp8E4M3, Format::kMxfp8E5M2, Format::kMxint8,
                            Format::kNvfp4,     Format::kNf4,       Format::kHif8,
                            Format::kInt4,      Format::kUint4,     Format::kFp8E5M2};
  for (Format format : formats) {
    SCOPED_TRACE(FormatName(format));
    GemmSpec requested;
    requested.a.format = requested.b.format = format;
    const absl::StatusOr<GemmSpec> spec = ResolveGemmSpec(requested, {m, k}, {n, k});
    ASSERT_TRUE(spec.ok()) << spec.status();
    const oracle::Result a_oracle = oracle::Quantize(a, {m, k}, spec->a);
    const oracle::Result b_oracle = oracle::Quantize(b, {n, k}, spec->b);
    ASSERT_TRUE(a_oracle.status.ok()) << a_oracle.status;
    ASSERT_TRUE(b_oracle.status.ok()) << b_oracle.status;
    if (const BlockParams& block = Traits(format).block; block.size > 0) {
      EXPECT_EQ(spec->a.granularity, Granularity::kGroup);
      // Blocks along K, ragged at a row's end; NF4's run over the flattened tensor (bitsandbytes).
      const int64_t blocks = block.flattened ? (m * k + block.size - 1) / block.size
                                             : m * ((k + block.size - 1) / block.size);
      EXPECT_EQ(a_oracle.grouping.num_scales, blocks);
    }
    const absl::StatusOr<std::vector<float>> out =
        Run(Ops(View(a, {m, k}), View(b, {n, k})), requested);
    ASSERT_TRUE(out.ok()) << out.status();
    ExpectProduct(*out, a_oracle.x_hat, b_oracle.x_hat, m, n, k);
  }
}

TEST_F(GemmTest, AnyThreadCountGivesTheSameBitsAndF16OutputRoundsTheF32Result) {
  const int64_t m = 33, n = 17, k = 129;
  const std::vector<float> a = Random(m * k, 10), b = Random(n * k, 11);
  GemmSpec requested;
  requested.a.format = requested.b.format = Format::kFp8E5M2;
  const GemmSpec spec = *ResolveGemmSpec(requested, {m, k}, {n, k});
  const GemmOperands operands = Ops(View(a, {m, k}), View(b, {n, k}));
  std::vector<float> threaded(m * n), inline_out(m * n);
  std::vector<uint16_t> half(m * n);
  ErrorMetrics threaded_metrics, inline_metrics;
  ASSERT_TRUE(backend_
                  ->Gemm(operands, spec, {DType::kF32, {m, n}, threaded.data(), m * n * 4},
                         &threaded_metrics)
                  .ok());
  std::unique_ptr<Backend> single = CreateReferenceBackend(nullptr);
  ASSERT_TRUE(single
                  ->Gemm(operands, spec, {DType::kF32, {m, n}, inline_out.data(), m * n * 4},
                         &inline_metrics)
                  .ok());
  ASSERT_TRUE(
      single->Gemm(operands, spec, {DType::kF16, {m, n}, half.data(), m * n * 2}, nullptr).ok());
  for (int64_t i = 0; i < m * n; ++i) {
    ASSERT_EQ(testing::Bits(threaded[i]), testing::Bits(inline_out[i])) << i;
    ASSERT_EQ(half[i], oracle::FloatToHalfBits(threaded[i])) << i;
  }
  EXPECT_EQ(threaded_metrics.mse, inline_metrics.mse);
  EXPECT_EQ(threaded_metrics.sqnr_db, inline_metrics.sqnr_db);
}

TEST_F(GemmTest, RefusalsSayWhatToFix) {
  const std::vector<float> a(6 * 4), b(5 * 3), bias(4), c(6);
  // Only the spec is resolved here: the backend's own checks must refuse the operands.
  const auto refusal = [&](const GemmOperands& operands, const GemmSpec& requested) {
    const absl::StatusOr<GemmSpec> spec =
        ResolveGemmSpec(requested, operands.a.shape, operands.b.shape);
    absl::Status status = spec.status();
    if (spec.ok()) {
      float out = 0.0f;
      status = backend_->Gemm(operands, *spec, {DType::kF32, {1}, &out, 4}, nullptr);
    }
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    return std::string(status.message());
  };
  EXPECT_THAT(refusal(Ops(View(a, {6, 4}), View(b, {5, 3})), {}), HasSubstr("disagree on K"));
  EXPECT_THAT(refusal(Ops(View(a, {24}), View(b, {5, 3})), {}), HasSubstr("[M, K]"));
  EXPECT_THAT(refusal(Ops(View(a, {6, 4}), View(a, {1, 6, 4})), {}), HasSubstr("batched A"));
  GemmSpec beta;
  beta.beta = 1.0f;
  EXPECT_THAT(refusal(Ops(View(a, {6, 4}), View(a, {6, 4})), beta), HasSubstr("no C is given"));
  EXPECT_THAT(refusal(Ops(View(a, {6, 4}), View(a, {6, 4}), View(bias, {4})), {}),
              HasSubstr("bias must be [N] = [6]"));
  EXPECT_THAT(refusal(Ops(View(a, {6, 4}), View(a, {6, 4}), {}, View(c, {2, 3})), beta),
              HasSubstr("must be [M, N]"));
  GemmSpec alpha;
  alpha.alpha = NAN;
  EXPECT_THAT(refusal(Ops(View(a, {6, 4}), View(a, {6, 4})), alpha), HasSubstr("finite"));
  GemmSpec mx;
  mx.b.format = Format::kMxfp4;
  mx.b.granularity = Granularity::kTensor;
  EXPECT_THAT(refusal(Ops(View(a, {6, 4}), View(a, {6, 4})), mx), HasSubstr("GEMM operand B: "));
  const std::vector<uint8_t> ints(24);
  EXPECT_THAT(refusal(Ops({DType::kU8, {6, 4}, ints.data(), 24, nullptr}, View(a, {6, 4})), {}),
              HasSubstr("F32, F16 or BF16"));
}

}  // namespace
}  // namespace quantd
