// FlatQuant int4 (quantd/flatquant.h): get_decompose_dim, the spec's matrices, the transform's
// defined fp32 order, and what the CPU backend does with rows, NaN and Inf. The oracle matrix
// (oracle_matrix_test.cc) compares the backend with tests/unit/oracle.cc's own transform.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "oracle.h"
#include "quantd/executor.h"
#include "quantd/flatquant.h"
#include "quantd/spec.h"
#include "test_support.h"

namespace quantd::testing {
namespace {

using ::testing::HasSubstr;

QuantSpec FlatquantSpec() {
  QuantSpec spec;
  spec.format = Format::kFlatquantInt4;
  return spec;
}

// Rows of n1 · n2 values, a random P1 and P2 (what FlatQuant learns: near-orthogonal, here
// any finite values do).
struct Problem {
  int64_t rows, n1, n2;
  std::vector<float> x, left, right;
};

Problem RandomProblem(int64_t rows, int64_t n1, int64_t n2, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  Problem p{rows, n1, n2, {}, {}, {}};
  p.x.resize(static_cast<size_t>(rows * n1 * n2));
  p.left.resize(static_cast<size_t>(n1 * n1));
  p.right.resize(static_cast<size_t>(n2 * n2));
  for (float& v : p.x) v = normal(rng) * 3.0f;
  for (float& v : p.left) v = normal(rng) * 0.3f;
  for (float& v : p.right) v = normal(rng) * 0.3f;
  return p;
}

// Y of every row, step by step as flatquant.h's comment writes it (not through its helpers).
std::vector<float> TransformByTheFormula(const Problem& p) {
  const int64_t n1 = p.n1, n2 = p.n2, hidden = n1 * n2;
  std::vector<float> y(p.x.size());
  std::vector<float> t(static_cast<size_t>(hidden));
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x.data() + r * hidden;
    for (int64_t i = 0; i < n1; ++i) {
      for (int64_t j = 0; j < n2; ++j) {
        float sum = 0.0f;
        for (int64_t l = 0; l < n2; ++l) sum += x[i * n2 + l] * p.right[l * n2 + j];
        t[i * n2 + j] = sum;
      }
    }
    for (int64_t i = 0; i < n1; ++i) {
      for (int64_t j = 0; j < n2; ++j) {
        float sum = 0.0f;
        for (int64_t k = 0; k < n1; ++k) sum += p.left[k * n1 + i] * t[k * n2 + j];
        y[r * hidden + i * n2 + j] = sum;
      }
    }
  }
  return y;
}

TEST(FlatquantTest, DecomposeDimIsFlatquantsGetDecomposeDim) {
  // FlatQuant's own splits of Llama's sizes.
  EXPECT_EQ(DecomposeDim(4096), (std::pair<int64_t, int64_t>{64, 64}));
  EXPECT_EQ(DecomposeDim(11008), (std::pair<int64_t, int64_t>{86, 128}));
  EXPECT_EQ(DecomposeDim(14336), (std::pair<int64_t, int64_t>{112, 128}));
  EXPECT_EQ(DecomposeDim(28672), (std::pair<int64_t, int64_t>{128, 224}));
  EXPECT_EQ(DecomposeDim(7), (std::pair<int64_t, int64_t>{1, 7}));
  EXPECT_EQ(DecomposeDim(1), (std::pair<int64_t, int64_t>{1, 1}));
  for (int64_t n = 1; n < 3000; ++n) {
    const auto [n1, n2] = DecomposeDim(n);
    if (n % 4 == 2) {
      EXPECT_EQ(n1, 0) << n;  // no split of one parity: refused
      continue;
    }
    ASSERT_EQ(n1 * n2, n) << n;
    ASSERT_EQ((n2 - n1) % 2, 0) << n;
    // a = (n1 + n2) / 2 is the first a >= ceil(√n) whose a² - n is a square.
    const int64_t a = (n1 + n2) / 2;
    for (int64_t smaller = IntegerSqrt(n); smaller < a; ++smaller) {
      if (smaller * smaller < n) continue;
      const int64_t d = smaller * smaller - n;
      EXPECT_NE(IntegerSqrt(d) * IntegerSqrt(d), d) << n << " " << smaller;
    }
  }
  // Primes split as (1, n): above the side limit, refused.
  EXPECT_EQ(DecomposeDim(1000003).first, 0);
  EXPECT_EQ(DecomposeDim(4093), (std::pair<int64_t, int64_t>{1, 4093}));
}

TEST(FlatquantTest, ResolveSpecFillsIdentitiesOrChecksTheMatrices) {
  absl::StatusOr<QuantSpec> spec = ResolveSpec(FlatquantSpec(), {3, 160});
  ASSERT_THAT(spec, IsOk());
  EXPECT_EQ(spec->granularity, Granularity::kToken);
  ASSERT_EQ(spec->transform_left.size(), 100u);  // 160 = 10 · 16
  ASSERT_EQ(spec->transform_right.size(), 256u);
  EXPECT_EQ(spec->transform_left[11], 1.0f);
  EXPECT_EQ(spec->transform_left[1], 0.0f);
  EXPECT_EQ(spec->transform_right[17 * 3], 1.0f);

  EXPECT_THAT(ResolveSpec(FlatquantSpec(), {3, 70}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("2 mod 4")));
  EXPECT_THAT(ResolveSpec(FlatquantSpec(), {2, 1000003}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at most 4096")));
  QuantSpec channel = FlatquantSpec();
  channel.granularity = Granularity::kChannel;
  EXPECT_THAT(ResolveSpec(channel, {3, 16}), StatusIs(absl::StatusCode::kInvalidArgument));
  QuantSpec asym = FlatquantSpec();
  asym.asymmetric = true;
  EXPECT_THAT(ResolveSpec(asym, {3, 16}), StatusIs(absl::StatusCode::kInvalidArgument));

  // 70 = 7 · 10 given by the caller.
  QuantSpec given = FlatquantSpec();
  given.transform_left.assign(49, 0.5f);
  given.transform_right.assign(100, 0.25f);
  EXPECT_THAT(ResolveSpec(given, {3, 70}), IsOk());
  EXPECT_THAT(ResolveSpec(given, {3, 71}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("7 · 10 != 71")));
  QuantSpec one_sided = given;
  one_sided.transform_left.clear();
  EXPECT_THAT(ResolveSpec(one_sided, {3, 70}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("both transform matrices")));
  QuantSpec not_square = given;
  not_square.transform_right.resize(99);
  EXPECT_THAT(ResolveSpec(not_square, {3, 70}), StatusIs(absl::StatusCode::kInvalidArgument));
  QuantSpec nan = given;
  nan.transform_right[42] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(ResolveSpec(nan, {3, 70}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("right[42] is not finite")));
  QuantSpec too_big = FlatquantSpec();
  too_big.transform_left.assign(1, 1.0f);
  too_big.transform_right.assign(4097 * 4097, 0.0f);
  EXPECT_THAT(ResolveSpec(too_big, {1, 4097}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at most 4096")));
  // Other formats take no matrices.
  QuantSpec int4 = given;
  int4.format = Format::kInt4;
  EXPECT_THAT(ResolveSpec(int4, {3, 70}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("flatquant-int4")));
}

// The CPU backend's codes are per-token INT4 of the formula's Y, and its x̂ is ŷ.
TEST(FlatquantTest, CodesAreInt4TokenOfTheTransformedRows) {
  for (const auto& [rows, n1, n2] :
       {std::tuple<int64_t, int64_t, int64_t>{5, 10, 16}, {3, 7, 10}, {2, 1, 33}, {4, 64, 64}}) {
    const Problem p = RandomProblem(rows, n1, n2, static_cast<uint32_t>(rows * 1000 + n2));
    QuantSpec spec = FlatquantSpec();
    spec.transform_left = p.left;
    spec.transform_right = p.right;
    spec.clip_ratio = 0.9f;
    const Shape shape = {rows, n1 * n2};
    const Quantized q = QuantizeFloats(p.x, shape, spec);
    ASSERT_THAT(q.status, IsOk());
    // INT4 per token of Y, through the same backend: the same codes and scales.
    QuantSpec int4;
    int4.format = Format::kInt4;
    int4.granularity = Granularity::kToken;
    int4.clip_ratio = 0.9f;
    const std::vector<float> y = TransformByTheFormula(p);
    const Quantized plain = QuantizeFloats(y, shape, int4);
    ASSERT_THAT(plain.status, IsOk());
    EXPECT_EQ(q.run.codes, plain.run.codes) << n1 << "x" << n2;
    EXPECT_EQ(q.run.scales, plain.run.scales);
    EXPECT_EQ(q.x_hat, plain.x_hat);
    // And the scale is clip · amax / 7 of Y's row.
    for (int64_t r = 0; r < rows; ++r) {
      float amax = 0.0f;
      for (int64_t i = 0; i < n1 * n2; ++i) amax = std::max(amax, std::fabs(y[r * n1 * n2 + i]));
      EXPECT_FLOAT_EQ(q.run.scales[r], 0.9f * amax / 7.0f);
    }
    // Packing int32_offset holds the same codes.
    QuantSpec packed = spec;
    packed.packing = Packing::kInt32Offset;
    const Quantized words = QuantizeFloats(p.x, shape, packed);
    ASSERT_THAT(words.status, IsOk());
    EXPECT_EQ(words.x_hat, q.x_hat);
  }
}

TEST(FlatquantTest, IdentitiesQuantizeTheRowsThemselves) {
  const Problem p = RandomProblem(6, 10, 16, 11);
  const Quantized q = QuantizeFloats(p.x, {6, 160}, FlatquantSpec());
  QuantSpec int4;
  int4.format = Format::kInt4;
  int4.granularity = Granularity::kToken;
  const Quantized plain = QuantizeFloats(p.x, {6, 160}, int4);
  ASSERT_THAT(q.status, IsOk());
  EXPECT_EQ(q.run.codes, plain.run.codes);
  EXPECT_EQ(q.run.scales, plain.run.scales);
}

TEST(FlatquantTest, NonFiniteInputIsRefusedOrZeroed) {
  Problem p = RandomProblem(3, 4, 4, 5);
  p.x[21] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(QuantizeFloats(p.x, {3, 16}, FlatquantSpec()).status,
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("element 21 is NaN")));
  QuantSpec zero = FlatquantSpec();
  zero.nan_policy = NanPolicy::kZero;
  const Quantized zeroed = QuantizeFloats(p.x, {3, 16}, zero);
  ASSERT_THAT(zeroed.status, IsOk());
  Problem without = p;
  without.x[21] = 0.0f;
  EXPECT_EQ(zeroed.run.codes, QuantizeFloats(without.x, {3, 16}, FlatquantSpec()).run.codes);
  // ±Inf is refused under every policy, with the first bad element's index.
  p.x[30] = -std::numeric_limits<float>::infinity();
  EXPECT_THAT(
      QuantizeFloats(p.x, {3, 16}, zero).status,
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("input element 30 is infinite")));
}

// The order is part of the contract: the same sums associated otherwise (P1ᵀ first) give
// other bits somewhere, so a backend cannot pick its own; and ŷ is within half a step of the
// defined Y.
TEST(FlatquantTest, OrderOfTheSumsMatters) {
  const Problem p = RandomProblem(8, 64, 64, 3);
  const std::vector<float> y = TransformByTheFormula(p);
  int differing = 0;
  for (int64_t r = 0; r < 8; ++r) {
    std::vector<float> u(4096);  // U = P1ᵀ · X, then Y' = U · P2
    for (int64_t i = 0; i < 64; ++i) {
      for (int64_t l = 0; l < 64; ++l) {
        float sum = 0.0f;
        for (int64_t k = 0; k < 64; ++k) sum += p.left[k * 64 + i] * p.x[r * 4096 + k * 64 + l];
        u[i * 64 + l] = sum;
      }
    }
    for (int64_t i = 0; i < 64; ++i) {
      for (int64_t j = 0; j < 64; ++j) {
        float sum = 0.0f;
        for (int64_t l = 0; l < 64; ++l) sum += u[i * 64 + l] * p.right[l * 64 + j];
        differing += sum != y[r * 4096 + i * 64 + j];
      }
    }
  }
  EXPECT_GT(differing, 1000);
  QuantSpec spec = FlatquantSpec();
  spec.transform_left = p.left;
  spec.transform_right = p.right;
  const Quantized q = QuantizeFloats(p.x, {8, 4096}, spec);
  ASSERT_THAT(q.status, IsOk());
  for (size_t i = 0; i < y.size(); ++i) {
    ASSERT_LE(std::fabs(q.x_hat[i] - y[i]), 0.5f * q.run.scales[i / 4096] * 1.0001f) << i;
  }
}

// PropertyTest's properties, for FlatQuant (whose x̂ is of the transformed rows): x̂ of
// Dequantize(Quantize) equals QuantDequant's, F16 / BF16 inputs quantize as their fp32
// values, and a thread pool changes nothing.
TEST(FlatquantTest, BackendPropertiesHold) {
  std::unique_ptr<Executor> pool = CreateThreadPoolExecutor(3);
  std::unique_ptr<Backend> inline_backend = CreateReferenceBackend(nullptr);
  std::unique_ptr<Backend> pooled_backend = CreateReferenceBackend(pool.get());
  for (const auto& [rows, n1, n2, given] :
       {std::tuple<int64_t, int64_t, int64_t, bool>{9, 4, 9, true},
        {210, 4, 10, false},
        {217, 16, 16, true},
        {5, 70, 1, true}}) {
    const Problem p = RandomProblem(rows, n1, n2, static_cast<uint32_t>(rows + n1));
    QuantSpec spec = FlatquantSpec();
    spec.clip_ratio = 0.95f;
    if (given) {
      spec.transform_left = p.left;
      spec.transform_right = p.right;
    }
    const Shape shape = {rows, n1 * n2};
    SCOPED_TRACE(ShapeName(shape));
    const absl::StatusOr<QuantSpec> resolved = ResolveSpec(spec, shape);
    ASSERT_THAT(resolved, IsOk());
    for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
      const std::vector<uint8_t> bytes = oracle::ToBytes(p.x, dtype);
      const BackendRun a = RunQuantize(*inline_backend, bytes, dtype, shape, spec);
      const BackendRun b = RunQuantize(*pooled_backend, bytes, dtype, shape, spec);
      ASSERT_THAT(a.status, IsOk());
      ASSERT_THAT(b.status, IsOk());
      EXPECT_EQ(a.codes, b.codes);
      EXPECT_EQ(a.scales, b.scales);
      // The F16 / BF16 input's values, sent as F32, give the same codes.
      const BackendRun as_f32 = RunQuantize(
          *inline_backend, FloatBytes(oracle::FromBytes(bytes, dtype)), DType::kF32, shape, spec);
      EXPECT_EQ(as_f32.codes, a.codes);
      EXPECT_EQ(as_f32.scales, a.scales);
      const absl::StatusOr<std::vector<uint8_t>> x_hat =
          RunDequantize(*pooled_backend, *resolved, shape, a, DType::kF32);
      ErrorMetrics metrics;
      const absl::StatusOr<std::vector<uint8_t>> fake =
          RunQuantDequant(*pooled_backend, bytes, dtype, shape, *resolved, DType::kF32, &metrics);
      ASSERT_THAT(x_hat, IsOk());
      ASSERT_THAT(fake, IsOk());
      EXPECT_EQ(*x_hat, *fake);
      EXPECT_NEAR(metrics.mse, a.metrics.mse, 1e-12 * (1 + a.metrics.mse));
    }
  }
}

}  // namespace
}  // namespace quantd::testing
