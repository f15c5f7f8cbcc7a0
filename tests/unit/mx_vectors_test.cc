// MX (OCP MX v1.0) worked by hand from FORMATS.md "Block formats": one block of 32, its E8M0
// scale code and its packed element codes under the three scale rules. The oracle matrix
// (oracle_matrix_test.cc) covers MX over shapes, fills and dtypes; these pin the arithmetic to
// numbers a reader can check on paper.
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quantd/backend.h"
#include "quantd/codec.h"
#include "quantd/format.h"
#include "quantd/spec.h"
#include "test_support.h"

namespace quantd::testing {
namespace {

struct MxBlock {
  uint32_t scale_code;         // E8M0
  std::vector<uint8_t> codes;  // packed, the first bytes of the row
};

// Quantizes one row of 32 (x padded with zeros) with `format` and `rule`.
MxBlock QuantizeBlock(Format format, ScaleRounding rule, std::vector<float> x) {
  x.resize(32, 0.0f);
  std::unique_ptr<Backend> backend = CreateReferenceBackend(nullptr);
  QuantSpec spec;
  spec.format = format;
  spec.scale_rounding = rule;
  const BackendRun run = RunQuantize(*backend, FloatBytes(x), DType::kF32, {1, 32}, spec);
  EXPECT_THAT(run.status, IsOk());
  if (!run.status.ok() || run.scales.size() != 1) return {};
  return {E8M0CodeOfScale(run.scales[0], Traits(format).mx.implicit_exponent), run.codes};
}

// x0 = 6, 3, 1.5, 0.25, -0.75: amax 6 = 1.5 · 2^2 and E2M1's emax is 2, so X = 0 under every
// rule (RCEIL: 6 / 6 = 1). Codes: 6 = 0x7, 3 = 0x5, 1.5 = 0x3; 0.25 lies half-way between 0 and
// 0.5 and rounds to the even 0 (0x0); -0.75 half-way between 0.5 (0x1) and 1 (0x2) rounds to the
// even 1: 0x8 | 0x2 = 0xA. Element 0 is the low nibble.
TEST(MxVectorsTest, Mxfp4AtScaleOne) {
  for (ScaleRounding rule : {ScaleRounding::kFloor, ScaleRounding::kRceil, ScaleRounding::kEven}) {
    const MxBlock b = QuantizeBlock(Format::kMxfp4, rule, {6.0f, 3.0f, 1.5f, 0.25f, -0.75f});
    EXPECT_EQ(b.scale_code, 127u);
    ASSERT_EQ(b.codes.size(), 16u);
    EXPECT_EQ(b.codes[0], 0x57);
    EXPECT_EQ(b.codes[1], 0x03);
    EXPECT_EQ(b.codes[2], 0x0A);
    for (size_t i = 3; i < 16; ++i) EXPECT_EQ(b.codes[i], 0) << i;
  }
}

// amax 7: FLOOR keeps X = floor(log2 7) - 2 = 0, so 7 saturates to 6 (0x7). RCEIL takes
// X = ceil(log2(7 / 6)) = 1: 7 / 2 = 3.5, half-way between 3 (0x5) and 4 (0x6), to the even 4.
// EVEN rounds 7 (1.11b · 2^2) to one mantissa bit first: 8, X = 3 - 2 = 1, as RCEIL.
TEST(MxVectorsTest, Mxfp4ScaleRulesDisagreeOnSeven) {
  const MxBlock floor = QuantizeBlock(Format::kMxfp4, ScaleRounding::kFloor, {7.0f, 1.0f});
  EXPECT_EQ(floor.scale_code, 127u);
  EXPECT_EQ(floor.codes[0], 0x27);  // 7 → 6 (0x7); 1 → 0x2
  for (ScaleRounding rule : {ScaleRounding::kRceil, ScaleRounding::kEven}) {
    const MxBlock b = QuantizeBlock(Format::kMxfp4, rule, {7.0f, 1.0f});
    EXPECT_EQ(b.scale_code, 128u);
    EXPECT_EQ(b.codes[0], 0x16);  // 7 / 2 → 4 (0x6); 1 / 2 = 0.5 → 0x1
  }
}

// MXINT8: amax 1.99 gives X = 0 (emax 0); elements are clamp(rne(v · 64), -127, 127):
// 1 → 64, -0.5 → -32 (0xE0), 1.99 → 127.36 → 127, 2^-7 → 0.5 → 0 (to even), -1.99 → -127 (never
// -128).
TEST(MxVectorsTest, Mxint8HasAnImplicitTwoToTheMinusSix) {
  const MxBlock b = QuantizeBlock(Format::kMxint8, ScaleRounding::kFloor,
                                  {1.0f, -0.5f, 1.99f, 0.0078125f, -1.99f});
  EXPECT_EQ(b.scale_code, 127u);
  ASSERT_GE(b.codes.size(), 5u);
  EXPECT_EQ(b.codes[0], 64);
  EXPECT_EQ(b.codes[1], 0xE0);
  EXPECT_EQ(b.codes[2], 127);
  EXPECT_EQ(b.codes[3], 0);
  EXPECT_EQ(b.codes[4], 0x81);
}

// MXFP8 E4M3: amax 448 = 1.75 · 2^8, emax 8: X = 0, the elements are plain E4M3 codes. A block
// 2^10 times larger gets X = 10 (code 137) and the same element codes.
TEST(MxVectorsTest, Mxfp8E4m3ScalesByPowersOfTwoOnly) {
  const MxBlock one = QuantizeBlock(Format::kMxfp8E4M3, ScaleRounding::kFloor, {448.0f, -1.0f});
  EXPECT_EQ(one.scale_code, 127u);
  EXPECT_EQ(one.codes[0], 0x7E);
  EXPECT_EQ(one.codes[1], 0xB8);  // -1.0: sign, exponent 7, mantissa 0
  const MxBlock big =
      QuantizeBlock(Format::kMxfp8E4M3, ScaleRounding::kFloor, {448.0f * 1024, -1024.0f});
  EXPECT_EQ(big.scale_code, 137u);
  EXPECT_EQ(big.codes[0], 0x7E);
  EXPECT_EQ(big.codes[1], 0xB8);
}

// "an all-zero block gets scale code 0x00 and zero codes"; FP6 packs four codes in three bytes.
TEST(MxVectorsTest, AllZeroBlocksAndFp6Packing) {
  for (Format format : AllFormats()) {
    if (Traits(format).scale_kind != ScaleKind::kE8M0) continue;
    const MxBlock zero = QuantizeBlock(format, ScaleRounding::kFloor, {});
    EXPECT_EQ(zero.scale_code, 0u) << FormatName(format);
    EXPECT_EQ(zero.codes, std::vector<uint8_t>(32 * Traits(format).bits / 8, 0))
        << FormatName(format);
  }
  // E3M2, amax 28 = 1.75 · 2^4 (emax 4): X = 0. 28 = 0x1F, 1 = 0x0C, 0.25 = 0x04 (the min
  // normal), -28 = 0x3F; the four 6-bit codes fill three bytes from bit 0:
  // 0x1F | 0x0C << 6 | 0x04 << 12 | 0x3F << 18 = 0xFC431F.
  const MxBlock fp6 =
      QuantizeBlock(Format::kMxfp6E3M2, ScaleRounding::kFloor, {28.0f, 1.0f, 0.25f, -28.0f});
  EXPECT_EQ(fp6.scale_code, 127u);
  ASSERT_EQ(fp6.codes.size(), 24u);
  EXPECT_EQ(fp6.codes[0], 0x1F);
  EXPECT_EQ(fp6.codes[1], 0x43);
  EXPECT_EQ(fp6.codes[2], 0xFC);
}

// E8M0 codes 0x00..0xFE and the fp32 scales kept for them (2^(X - implicit)) map one to one;
// 0xFF is NaN. X is clamped to [-127, 127].
TEST(MxVectorsTest, E8M0CodesRoundTripAndClamp) {
  for (int implicit : {0, 6}) {
    for (uint32_t code = 0; code < 0xFF; ++code) {
      const float scale = ScaleOfE8M0Code(code, implicit);
      ASSERT_GT(scale, 0.0f) << code;
      EXPECT_EQ(E8M0CodeOfScale(scale, implicit), code) << code << " implicit " << implicit;
    }
    EXPECT_TRUE(std::isnan(ScaleOfE8M0Code(0xFF, implicit)));
  }
  const ScaleRule floor = MakeScaleRule(Traits(Format::kMxfp4), false);
  EXPECT_EQ(MxSharedExponent(floor, 0.0f), -127);
  EXPECT_EQ(MxSharedExponent(floor, 1e-40f), -127);  // subnormal amax
  EXPECT_EQ(MxSharedExponent(floor, 3.0e38f), 127 - 2);
  const ScaleRule rceil = MakeScaleRule(Traits(Format::kMxfp4), false, ScaleRounding::kRceil);
  EXPECT_EQ(MxSharedExponent(rceil, 6.0f), 0);
  EXPECT_EQ(MxSharedExponent(rceil, 6.5f), 1);
  EXPECT_EQ(MxSharedExponent(rceil, 0x1p-149f), -127);
  const ScaleRule even = MakeScaleRule(Traits(Format::kMxfp8E4M3), false, ScaleRounding::kEven);
  EXPECT_EQ(MxSharedExponent(even, 496.0f), 9 - 8);  // 1.1111b · 2^8 rounds up to 2^9
  EXPECT_EQ(MxSharedExponent(even, 480.0f), 8 - 8);  // 1.111b · 2^8 has 3 mantissa bits
}

// NEAREST (the `c` of e<E>m<M>k<K>b<B>c): X = floor(log2(amax) + 1/2) - emax. amax 1.5 has a
// significand above √2, so X = 1 - 2 = -1 (code 126) where FLOOR keeps 0 - 2 = -2: 1.5 / 2^-1 = 3
// (0x5). amax 1.4 lies below √2 · 2^0: X = -2 (code 125), 1.4 / 2^-2 = 5.6 → 6 (0x7).
TEST(MxVectorsTest, NearestRuleRoundsTheExponentAtSqrtTwo) {
  const MxBlock above = QuantizeBlock(Format::kMxfp4, ScaleRounding::kNearest, {1.5f});
  EXPECT_EQ(above.scale_code, 126u);
  ASSERT_FALSE(above.codes.empty());
  EXPECT_EQ(above.codes[0], 0x05);
  const MxBlock below = QuantizeBlock(Format::kMxfp4, ScaleRounding::kNearest, {1.4f});
  EXPECT_EQ(below.scale_code, 125u);
  ASSERT_FALSE(below.codes.empty());
  EXPECT_EQ(below.codes[0], 0x07);
  const ScaleRule nearest = MakeScaleRule(Traits(Format::kMxfp4), false, ScaleRounding::kNearest);
  EXPECT_EQ(MxSharedExponent(nearest, 1.41421354f), 0 - 2);  // fp32 just below √2
  EXPECT_EQ(MxSharedExponent(nearest, 1.41421366f), 1 - 2);  // the next one, above
}

// ---- NVFP4 (FORMATS.md "Block formats"), worked by hand. ----

struct Nvfp4Run {
  float global_scale = 0.0f;
  std::vector<uint32_t> scale_codes;  // E4M3
  std::vector<uint8_t> codes;
  std::vector<float> x_hat;
};

Nvfp4Run QuantizeNvfp4(const std::vector<float>& x, const Shape& shape,
                       float static_global_scale = 0.0f) {
  QuantSpec spec;
  spec.format = Format::kNvfp4;
  spec.static_global_scale = static_global_scale;
  const Quantized q = QuantizeFloats(x, shape, spec);
  EXPECT_THAT(q.status, IsOk());
  Nvfp4Run run;
  run.global_scale = q.run.global_scale;
  for (float s : q.run.scales) {
    const uint32_t code =
        MinifloatEncodePortable(E4M3Params(), s, Rounding::kNearestEven, 0u, Overflow::kSaturate);
    EXPECT_EQ(MinifloatDecode(E4M3Params(), code), s) << "a block scale is an E4M3 value";
    run.scale_codes.push_back(code);
  }
  run.codes = q.run.codes;
  run.x_hat = q.x_hat;
  return run;
}

// The four blocks of 16 the tests below work by hand.
std::vector<float> FourNvfp4Blocks() {
  std::vector<float> x(64, 0.0f);
  x[0] = 5.25f;
  x[1] = -0.875f;
  x[16] = 1.0f;
  x[17] = -0.5f;
  x[48] = 1e-6f;
  x[49] = -1e-6f;
  return x;
}

// Four blocks of 16. The tensor's amax 5.25 = 2688 / 512 makes S_enc = 512 exactly, and
// S_enc / 6 = fp32(85.333...) = 85.33333587646484.
//  Block 0, amax 5.25: 5.25 · 85.333336 = 448.0000134 → fp32 448 → E4M3 0x7E; d_b = 448 / 512
//   = 0.875; 5.25 / 0.875 = 6 (0x7), -0.875 / 0.875 = -1 (0x8 | 0x2 = 0xA).
//  Block 1, amax 1: 85.333336 lies between E4M3's 80 and 88 (step 8 in [64, 128)), nearer 88
//   = 1.375 · 2^6 (0x6B); d_b = 88 / 512 = 0.171875; 1 / d_b = 5.82 → 6 (0x7), x̂ = 1.03125;
//   -0.5 / d_b = -2.91 → -3 (0xD).
//  Block 2, all zeros: s_b = 0, d_b = 0, codes 0.
//  Block 3, amax 1e-6: 1e-6 · 85.33 = 8.5e-5 is below half of E4M3's least subnormal 2^-9, so
//   s_b = 0 and d_b = 0: its codes are 0 although its values are not.
TEST(Nvfp4VectorsTest, TwoLevelScalesByHand) {
  const std::vector<float> x = FourNvfp4Blocks();
  const Nvfp4Run run = QuantizeNvfp4(x, {1, 64});
  EXPECT_EQ(run.global_scale, 512.0f);
  EXPECT_THAT(run.scale_codes, ::testing::ElementsAre(0x7Eu, 0x6Bu, 0x00u, 0x00u));
  ASSERT_EQ(run.codes.size(), 32u);
  EXPECT_EQ(run.codes[0], 0xA7);  // element 0 in the low nibble
  EXPECT_EQ(run.codes[8], 0xD7);
  for (size_t i = 0; i < run.codes.size(); ++i) {
    if (i != 0 && i != 8) {
      EXPECT_EQ(run.codes[i], 0) << i;
    }
  }
  EXPECT_EQ(run.x_hat[0], 5.25f);
  EXPECT_EQ(run.x_hat[1], -0.875f);
  EXPECT_EQ(run.x_hat[16], 1.03125f);
  EXPECT_EQ(run.x_hat[17], -0.515625f);
  EXPECT_EQ(run.x_hat[48], 0.0f);
}

// The same tensor with the caller's S_enc. 512 (its own) gives the same answer. 4096 (as if the
// amax were 0.65625, below the tensor's 5.25) makes S_enc / 6 = 682.6667:
//  Block 0: 5.25 · 682.67 = 3584 saturates to 448 (0x7E); d_b = 448 / 4096 = 0.109375;
//   5.25 / d_b = 48 and -0.875 / d_b = -8 saturate to ±6 (0x7, 0xF), x̂ ±0.65625.
//  Block 1: 682.67 → 448 again; 1 / d_b = 9.14 → 6 (0x7); -0.5 / d_b = -4.57 → -4 (0xE).
//  Block 3: 1e-6 · 682.67 = 6.8e-4 is still below half of 2^-9: s_b = 0.
TEST(Nvfp4VectorsTest, StaticGlobalScaleIsUsedAsGiven) {
  const std::vector<float> x = FourNvfp4Blocks();
  const Nvfp4Run own = QuantizeNvfp4(x, {1, 64});
  const Nvfp4Run same = QuantizeNvfp4(x, {1, 64}, 512.0f);
  EXPECT_EQ(same.global_scale, 512.0f);
  EXPECT_EQ(same.scale_codes, own.scale_codes);
  EXPECT_EQ(same.codes, own.codes);
  const Nvfp4Run run = QuantizeNvfp4(x, {1, 64}, 4096.0f);
  EXPECT_EQ(run.global_scale, 4096.0f);
  EXPECT_THAT(run.scale_codes, ::testing::ElementsAre(0x7Eu, 0x7Eu, 0x00u, 0x00u));
  ASSERT_EQ(run.codes.size(), 32u);
  EXPECT_EQ(run.codes[0], 0xF7);
  EXPECT_EQ(run.codes[8], 0xE7);
  for (size_t i = 0; i < run.codes.size(); ++i) {
    if (i != 0 && i != 8) {
      EXPECT_EQ(run.codes[i], 0) << i;
    }
  }
  EXPECT_EQ(run.x_hat[0], 0.65625f);
  EXPECT_EQ(run.x_hat[1], -0.65625f);
  EXPECT_EQ(run.x_hat[16], 0.65625f);
  EXPECT_EQ(run.x_hat[17], -0.4375f);
  EXPECT_EQ(run.x_hat[48], 0.0f);
}

// An all-zero tensor: S_enc = 1 ("1 when amax is 0"), every block scale 0, every code 0.
TEST(Nvfp4VectorsTest, AllZeroTensor) {
  const Nvfp4Run run = QuantizeNvfp4(std::vector<float>(40, 0.0f), {2, 20});
  EXPECT_EQ(run.global_scale, 1.0f);
  EXPECT_THAT(run.scale_codes, ::testing::Each(0x00u));
  EXPECT_EQ(run.scale_codes.size(), 4u);  // [2, ceil(20 / 16)]
  EXPECT_THAT(run.codes, ::testing::Each(0));
}

// amax 1e-37: 2688 / 1e-37 overflows fp32, and S_enc is clamped to FLT_MAX as
// TransformerEngine does, so amax · S_enc / 6 is 5.67 rather than 448: the block scale is
// E4M3's 5.5 (0x4B), d_b = 5.5 / FLT_MAX = 1.6e-38 (still normal), and 1e-37 / d_b = 6.19
// saturates to E2M1's 6 (0x7).
TEST(Nvfp4VectorsTest, GlobalScaleClampsToFltMax) {
  std::vector<float> x(16, 0.0f);
  x[0] = 1e-37f;
  const Nvfp4Run run = QuantizeNvfp4(x, {16});
  EXPECT_EQ(run.global_scale, std::numeric_limits<float>::max());
  EXPECT_THAT(run.scale_codes, ::testing::ElementsAre(0x4Bu));
  ASSERT_EQ(run.codes.size(), 8u);
  EXPECT_EQ(run.codes[0], 0x07);
  EXPECT_EQ(run.x_hat[0], 6.0f * (5.5f / std::numeric_limits<float>::max()));
  EXPECT_EQ(Nvfp4GlobalScale(0.0f), 1.0f);
  EXPECT_EQ(Nvfp4GlobalScale(6.0f), 448.0f);
  EXPECT_EQ(Nvfp4BlockScale(1e30f, 448.0f), 448.0f);  // the product overflows: saturates
  EXPECT_EQ(Nvfp4BlockScale(0.0f, 448.0f), 0.0f);
}

}  // namespace
}  // namespace quantd::testing
