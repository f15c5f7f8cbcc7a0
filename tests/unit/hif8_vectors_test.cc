// HiF8 (Ascend HiFloat8, FORMATS.md "Block formats") against its public vectors, Huawei's
// golden conversions and the oracle's table search: every code decoded, and encodes over every
// midpoint of the value table (and its fp32 neighbours) under both overflow modes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "oracle.h"
#include "quantd/codec.h"
#include "quantd/format.h"
#include "quantd/spec.h"
#include "test_support.h"

namespace quantd::testing {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

uint32_t Encode(float v, Overflow overflow = Overflow::kSaturate) {
  return Hif8Encode(v, Rounding::kNearestAway, 0u, overflow);
}

// FORMATS.md: "max 32768, min denormal 2^-22, NaN 0x80, ±Inf 0x6F/0xEF, ties away from zero.
// SATURATE maps every |x| > 32768 to ±32768; NONFINITE maps |x| ≥ 40960 ... to ±Inf."
TEST(Hif8VectorsTest, PublicVectors) {
  EXPECT_EQ(Hif8Decode(0x6E), 32768.0f);
  EXPECT_EQ(Hif8Decode(0xEE), -32768.0f);
  EXPECT_EQ(Hif8Decode(0x01), std::ldexp(1.0f, -22));
  EXPECT_EQ(Hif8Decode(0x08), 1.0f);
  EXPECT_TRUE(std::isnan(Hif8Decode(0x80)));
  EXPECT_EQ(Hif8Decode(0x6F), kInf);
  EXPECT_EQ(Hif8Decode(0xEF), -kInf);
  EXPECT_EQ(Hif8Decode(0x00), 0.0f);
  EXPECT_EQ(Encode(std::nanf("")), 0x80u);
  EXPECT_EQ(Encode(-std::nanf("")), 0x80u);  // one NaN
  EXPECT_EQ(Encode(-0.0f), 0x00u);           // one zero: 0x80 is the NaN
  EXPECT_EQ(Encode(32768.0f), 0x6Eu);
  EXPECT_EQ(Encode(1e30f), 0x6Eu);
  EXPECT_EQ(Encode(kInf), 0x6Eu);
  EXPECT_EQ(Encode(-kInf), 0xEEu);
  EXPECT_EQ(Encode(40960.0f), 0x6Eu);
  EXPECT_EQ(Encode(40960.0f, Overflow::kNonfinite), 0x6Fu);
  EXPECT_EQ(Encode(-40960.0f, Overflow::kNonfinite), 0xEFu);
  EXPECT_EQ(Encode(std::nextafter(40960.0f, 0.0f), Overflow::kNonfinite), 0x6Eu);
  EXPECT_EQ(Encode(kInf, Overflow::kNonfinite), 0x6Fu);
  // Ties away: 1.0625 lies half-way between 1 (0x08) and 1.125 (0x09); 2^-23 half-way between
  // 0 and 2^-22; [16, 32) has two mantissa bits (16, 20, 24, 28), so 26 goes to 28 (0x43).
  EXPECT_EQ(Encode(1.0625f), 0x09u);
  EXPECT_EQ(Encode(-1.0625f), 0x89u);
  EXPECT_EQ(Encode(std::ldexp(1.0f, -23)), 0x01u);
  EXPECT_EQ(Encode(std::nextafter(std::ldexp(1.0f, -23), 0.0f)), 0x00u);
  EXPECT_EQ(Encode(26.0f), 0x43u);
  EXPECT_EQ(Hif8Decode(0x43), 28.0f);
  EXPECT_EQ(Encode(1e-40f), 0x00u);  // fp32 subnormals are below 2^-23
}

// Huawei's golden fp32 → HiF8 conversions (GE UtestHiF8.fp32_to_hif8_golden): input bits and
// the expected code. 50000.4 overflows to Inf there, which is quantd's NONFINITE.
TEST(Hif8VectorsTest, HuaweiGoldenConversions) {
  struct Golden {
    uint32_t bits;
    uint32_t code;
  };
  constexpr Golden kGolden[] = {
      {0x3638C290, 0x04}, {0x3698AEB6, 0x05}, {0x36E515DD, 0x06}, {0x371C2FF8, 0x06},
      {0x358B4F67, 0x03}, {0x3F48849E, 0x1D}, {0x3CFDC7CD, 0x54}, {0x3F112A2C, 0x19},
      {0x3F655965, 0x1E}, {0x3E2040ED, 0x3A}, {0x43411383, 0x4E}, {0x438E0E21, 0x60},
      {0x42356389, 0x46}, {0x43B308DB, 0x61}, {0x42536B25, 0x47}, {0x4686C7E7, 0x6C},
      {0x46E1CA4A, 0x6E}, {0x453D6D1B, 0x67}, {0x462B0BBF, 0x6B}, {0x4743505E, 0x6F},
  };
  for (const Golden& g : kGolden) {
    EXPECT_EQ(Encode(BitsToFloat(g.bits), Overflow::kNonfinite), g.code) << std::hex << g.bits;
  }
}

TEST(Hif8VectorsTest, EveryCodeDecodesLikeTheOracle) {
  for (uint32_t code = 0; code < 256; ++code) {
    const double want = oracle::Hif8Value(code);
    const float got = Hif8Decode(code);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << code;
      continue;
    }
    EXPECT_EQ(static_cast<double>(got), want) << "code 0x" << std::hex << code;
    // Every code but the NaN round-trips (0x80's "-0" aside).
    EXPECT_EQ(Encode(got, Overflow::kNonfinite), code) << "code 0x" << std::hex << code;
  }
}

TEST(Hif8VectorsTest, EncodesLikeTheOracleAtEveryMidpoint) {
  std::vector<double> values;
  for (uint32_t code = 0; code < 0x6F; ++code) values.push_back(oracle::Hif8Value(code));
  values.push_back(49152.0);  // the virtual value past 32768
  std::sort(values.begin(), values.end());
  std::vector<float> probes = {0.0f, 1e-45f, 1e-40f, std::ldexp(1.0f, -23), 70000.0f, 1e38f, kInf};
  for (size_t i = 0; i + 1 < values.size(); ++i) {
    const float mid = static_cast<float>((values[i] + values[i + 1]) / 2);
    probes.push_back(static_cast<float>(values[i]));
    probes.push_back(mid);
    probes.push_back(std::nextafter(mid, 0.0f));
    probes.push_back(std::nextafter(mid, kInf));
  }
  int checked = 0;
  for (float p : probes) {
    for (float v : {p, -p}) {
      for (Overflow overflow : {Overflow::kSaturate, Overflow::kNonfinite}) {
        EXPECT_EQ(Encode(v, overflow), oracle::EncodeHif8(v, overflow))
            << v << " overflow " << OverflowName(overflow);
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 1000);
}

TEST(Hif8VectorsTest, SpecDefaultsAndRefusals) {
  QuantSpec spec;
  spec.format = Format::kHif8;
  absl::StatusOr<QuantSpec> resolved = ResolveSpec(spec, {4, 8});
  ASSERT_THAT(resolved, IsOk());
  EXPECT_EQ(resolved->rounding, Rounding::kNearestAway);
  EXPECT_EQ(resolved->nan_policy, NanPolicy::kPropagate);
  spec.rounding = Rounding::kNearestEven;
  EXPECT_THAT(ResolveSpec(spec, {4, 8}),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("away")));
  spec.rounding = Rounding::kUnspecified;
  spec.asymmetric = true;
  EXPECT_THAT(ResolveSpec(spec, {4, 8}), StatusIs(absl::StatusCode::kInvalidArgument));
  // s = amax / 8 = 12.5: amax lands on 8 (0x28), the end of the three-mantissa-bit region;
  // -3 / 12.5 = -0.24 lies in [1/8, 1/4) (steps of 2^-6): 15.36 steps, to 15, 1.875 · 2^-3
  // (0x3F, negative 0xBF); 12.5 / 12.5 = 1 (0x08).
  QuantSpec tensor;
  tensor.format = Format::kHif8;
  const Quantized q = QuantizeFloats({-3.0f, 100.0f, 12.5f, 0.0f}, {4}, tensor);
  ASSERT_THAT(q.status, IsOk());
  EXPECT_EQ(q.run.scales[0], 12.5f);
  EXPECT_THAT(q.run.codes, ::testing::ElementsAre(0xBF, 0x28, 0x08, 0x00));
}

}  // namespace
}  // namespace quantd::testing
