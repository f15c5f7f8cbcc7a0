// NF4's double quantization (bitsandbytes compress_statistics, quantd/double_quant.h): the
// dynamic map, its binary search, the nested blocks of 256, and NF4 through the CPU backend.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quantd/double_quant.h"
#include "quantd/spec.h"
#include "test_support.h"

namespace quantd::testing {
namespace {

TEST(DoubleQuantTest, DynamicMapIsBitsandbytesSignedMap) {
  // create_dynamic_map(signed=True): 127 negative means, 0, 127 positive means ending at 1.
  EXPECT_EQ(DynamicMapValue(0), -0.992968738079071f);
  EXPECT_EQ(DynamicMapValue(127), 0.0f);
  EXPECT_EQ(DynamicMapValue(255), 1.0f);
  for (uint32_t k = 1; k < 256; ++k) {
    EXPECT_LT(DynamicMapValue(k - 1), DynamicMapValue(k)) << k;
  }
  for (uint32_t k = 0; k < 127; ++k) {
    EXPECT_EQ(DynamicMapValue(k), -DynamicMapValue(254 - k)) << k;  // negatives mirror
  }
}

TEST(DoubleQuantTest, SearchFindsEveryEntryAndTheNearestOne) {
  for (uint32_t k = 0; k < 256; ++k) EXPECT_EQ(DynamicMapCode(DynamicMapValue(k)), k) << k;
  EXPECT_EQ(DynamicMapCode(std::numeric_limits<float>::quiet_NaN()), 0u);
  EXPECT_EQ(DynamicMapCode(-5.0f), 0u);
  EXPECT_EQ(DynamicMapCode(5.0f), 255u);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (int i = 0; i < 100000; ++i) {
    const float x = i % 2 ? uniform(rng) : std::ldexp(uniform(rng), -(i % 20));
    const uint32_t code = DynamicMapCode(x);
    double best = std::numeric_limits<double>::infinity();
    for (uint32_t k = 0; k < 256; ++k) {
      best = std::min(best, std::fabs(static_cast<double>(x) - DynamicMapValue(k)));
    }
    // The nearest entry (a tie may go either way: the search's rule).
    EXPECT_LE(std::fabs(static_cast<double>(x) - DynamicMapValue(code)), best * (1 + 1e-6)) << x;
  }
}

// absmax 1, 2, 3, 4: offset 2.5; centered -1.5, -0.5, 0.5, 1.5; the block's max 1.5; normalized
// -1, -1/3, 1/3, 1 → codes 0 (the map's least, -0.99296874), ..., 255 (1.0).
TEST(DoubleQuantTest, ByHand) {
  const DoubleQuantized dq = DoubleQuantize({1.0f, 2.0f, 3.0f, 4.0f});
  EXPECT_EQ(dq.offset, 2.5f);
  EXPECT_THAT(dq.scales, ::testing::ElementsAre(1.5f));
  ASSERT_EQ(dq.codes.size(), 4u);
  EXPECT_EQ(dq.codes[0], 0);
  EXPECT_EQ(dq.codes[3], 255);
  EXPECT_EQ(dq.codes[1], DynamicMapCode(-0.5f * (1.0f / 1.5f)));
  const std::vector<float> absmax = DoubleDequantize(dq);
  EXPECT_EQ(absmax[3], 4.0f);
  EXPECT_EQ(absmax[0], DynamicMapValue(0) * 1.5f + 2.5f);
  // 600 values: blocks of 256, 256 and 88.
  std::vector<float> many(600);
  for (size_t i = 0; i < many.size(); ++i) many[i] = 0.01f * static_cast<float>(i % 97) + 0.5f;
  const DoubleQuantized nested = DoubleQuantize(many);
  EXPECT_EQ(nested.scales.size(), 3u);
  const std::vector<float> back = DoubleDequantize(nested);
  for (size_t i = 0; i < many.size(); ++i) EXPECT_NEAR(back[i], many[i], 0.01) << i;
}

TEST(DoubleQuantTest, Nf4CodesKeepTheExactAbsmaxAndXHatUsesTheNestedOne) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> x(64 * 300 + 13);
  for (float& v : x) v = normal(rng);
  QuantSpec plain;
  plain.format = Format::kNf4;
  QuantSpec nested = plain;
  nested.double_quant = true;
  const Shape shape = {static_cast<int64_t>(x.size())};
  const Quantized a = QuantizeFloats(x, shape, plain);
  const Quantized b = QuantizeFloats(x, shape, nested);
  ASSERT_THAT(a.status, IsOk());
  ASSERT_THAT(b.status, IsOk());
  EXPECT_EQ(a.run.codes, b.run.codes);
  EXPECT_EQ(a.run.scales, b.run.scales);
  EXPECT_EQ(b.run.double_quant.codes.size(), b.run.scales.size());
  EXPECT_EQ(b.run.double_quant.scales.size(), (b.run.scales.size() + 255) / 256);
  const std::vector<float> absmax = DoubleDequantize(b.run.double_quant);
  for (size_t i = 0; i < x.size(); ++i) {
    const uint32_t code = (b.run.codes[i / 2] >> (i % 2 ? 0 : 4)) & 15u;
    ASSERT_EQ(b.x_hat[i], Nf4Value(code) * absmax[i / 64]) << i;
  }
  EXPECT_NE(a.x_hat, b.x_hat);
  // QuantDequant agrees with dequantizing the codes with the nested absmax.
  std::unique_ptr<Backend> backend = CreateReferenceBackend(nullptr);
  ErrorMetrics metrics;
  absl::StatusOr<std::vector<uint8_t>> fake =
      RunQuantDequant(*backend, FloatBytes(x), DType::kF32, shape, b.spec, DType::kF32, &metrics);
  ASSERT_THAT(fake, IsOk());
  EXPECT_EQ(AsFloats(*fake), b.x_hat);
  EXPECT_NEAR(metrics.mse, b.run.metrics.mse, 1e-12);
  // Only NF4 takes it.
  QuantSpec int4;
  int4.format = Format::kInt4;
  int4.double_quant = true;
  EXPECT_THAT(ResolveSpec(int4, {4, 64}),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("nf4")));
}

// absmax FLT_MAX, FLT_MAX, 0: offset 2/3 · FLT_MAX; the first two normalize to 0.5, whose
// nearest map entry is 0.50078 (0x3F003333), so their reconstructed absmax overflows to Inf and
// the zeros of those blocks dequantize as 0 · Inf: NaN, which must be the canonical NaN on
// every backend (x86 would make 0xFFC00000 of it, a GPU 0x7FFFFFFF).
TEST(DoubleQuantTest, OverflowingReconstructionGivesTheCanonicalNan) {
  std::vector<float> x(3 * 64, 0.0f);
  x[0] = x[64] = std::numeric_limits<float>::max();
  QuantSpec spec;
  spec.format = Format::kNf4;
  spec.double_quant = true;
  const Quantized q = QuantizeFloats(x, {3 * 64}, spec);
  ASSERT_THAT(q.status, IsOk());
  EXPECT_TRUE(std::isinf(DoubleDequantize(q.run.double_quant)[0]));
  int nans = 0;
  for (float v : q.x_hat) {
    if (std::isnan(v)) {
      ++nans;
      EXPECT_EQ(Bits(v), 0x7FC00000u);
    }
  }
  EXPECT_GT(nans, 0);
}

}  // namespace
}  // namespace quantd::testing
