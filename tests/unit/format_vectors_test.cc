// Public vectors: the numbers FORMATS.md states (max finite, min subnormal, NaN and Inf codes),
// the Random123 known answers of Philox4x32-10, hand-computed integer examples (zero-point
// arithmetic, packing bytes) and the traits table checked against the oracle's reading of
// FORMATS.md. Every expected value here is written out, not computed by the code under test.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "oracle.h"
#include "quantd/backend.h"
#include "quantd/codec.h"
#include "quantd/format.h"
#include "quantd/packing.h"
#include "quantd/spec.h"
#include "quantd/tensor.h"
#include "test_support.h"

namespace quantd::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

const MinifloatParams& E4M3() { return Traits(Format::kFp8E4M3).minifloat; }
const MinifloatParams& E5M2() { return Traits(Format::kFp8E5M2).minifloat; }

uint32_t Encode(const MinifloatParams& p, float v, Overflow overflow = Overflow::kSaturate,
                Rounding rounding = Rounding::kNearestEven) {
  return MinifloatEncode(p, v, rounding, /*random_bits=*/0, overflow);
}

// ---- Philox4x32-10: Random123's known-answer vectors (kat_vectors, philox4x32_10). ----

struct PhiloxKat {
  uint32_t ctr[4];
  uint32_t key[2];
  uint32_t expected[4];
};
constexpr PhiloxKat kPhiloxKats[] = {
    {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

TEST(PhiloxTest, KernelsMatchRandom123KnownAnswers) {
  for (const PhiloxKat& kat : kPhiloxKats) {
    uint32_t ctr[4] = {kat.ctr[0], kat.ctr[1], kat.ctr[2], kat.ctr[3]};
    Philox4x32_10(ctr, kat.key[0], kat.key[1]);
    EXPECT_THAT(ctr, ElementsAreArray(kat.expected));
  }
}

TEST(PhiloxTest, OracleMatchesRandom123KnownAnswers) {
  for (const PhiloxKat& kat : kPhiloxKats) {
    uint32_t ctr[4] = {kat.ctr[0], kat.ctr[1], kat.ctr[2], kat.ctr[3]};
    oracle::Philox4x32_10(ctr, kat.key[0], kat.key[1]);
    EXPECT_THAT(ctr, ElementsAreArray(kat.expected));
  }
}

TEST(PhiloxTest, StochasticBitsFollowTheCounterLayout) {
  // Element i uses word i mod 4 of the block (i / 4) as a 128-bit little-endian counter, keyed
  // by (lo32(seed), hi32(seed)): indices past 2^34 exercise the counter's second word, seeds
  // past 2^32 the second key word.
  const uint64_t seeds[] = {0, 1, 0xFFFFFFFFull, 0x100000000ull, 0xDEADBEEFCAFEF00Dull};
  const uint64_t starts[] = {0, 1000, (1ull << 34) - 3, 0xFFFFFFFFFFFFFFF0ull};
  for (uint64_t seed : seeds) {
    for (uint64_t start : starts) {
      for (uint64_t i = start; i < start + 9 && i >= start; ++i) {
        EXPECT_EQ(StochasticBits(seed, i), oracle::RandomBits(seed, i))
            << "seed " << seed << " index " << i;
      }
    }
  }
  // Index 0..3 under seed 0 are the words of the first known answer.
  EXPECT_EQ(StochasticBits(0, 0), 0x6627e8d5u);
  EXPECT_EQ(StochasticBits(0, 3), 0x9b00dbd8u);
}

TEST(PhiloxTest, UniformHas24BitsAndIsBelowOne) {
  EXPECT_EQ(UniformFromBits(0), 0.0f);
  EXPECT_EQ(UniformFromBits(0xFFu), 0.0f);  // the low 8 bits are dropped
  EXPECT_EQ(UniformFromBits(0x100u), std::ldexp(1.0f, -24));
  EXPECT_EQ(UniformFromBits(0xFFFFFFFFu), 1.0f - std::ldexp(1.0f, -24));
  EXPECT_EQ(UniformFromBits(0x80000000u), 0.5f);
}

// ---- The traits table against FORMATS.md (as the oracle reads it). ----

TEST(TraitsTest, EveryFormatIsKnownToTheOracleAndAgreesWithIt) {
  const std::vector<Format> formats = AllFormats();
  ASSERT_EQ(formats.size(), static_cast<size_t>(kNumFormats - 1)) << "kUnspecified excluded";
  for (size_t i = 0; i < formats.size(); ++i) {
    const Format format = formats[i];
    EXPECT_EQ(static_cast<int>(format), static_cast<int>(i) + 1) << "enum order";
    const FormatTraits& t = Traits(format);
    const oracle::FormatInfo* info = oracle::FindFormat(format);
    ASSERT_NE(info, nullptr) << FormatName(format)
                             << " is new: teach tests/unit/oracle.cc what FORMATS.md says of it";
    SCOPED_TRACE(info->name);
    EXPECT_EQ(t.name, info->name);
    EXPECT_EQ(FormatName(format), info->name);
    EXPECT_THAT(FormatFromName(info->name), IsOk());
    EXPECT_EQ(*FormatFromName(info->name), format);
    EXPECT_EQ(t.bits, info->bits);
    EXPECT_EQ(t.kind == ElementKind::kInt, info->is_int);
    EXPECT_EQ(t.symmetric_ok, info->symmetric_ok);
    EXPECT_EQ(t.asymmetric_ok, info->asymmetric_ok);
    EXPECT_EQ(t.has_nan, info->has_nan);
    EXPECT_EQ(t.has_inf, info->has_inf);
    EXPECT_EQ(t.block.size, info->block());
    if (info->nf4_block > 0) {
      // NF4: F32 absmax per block over the flattened tensor, groups only.
      EXPECT_EQ(t.kind, ElementKind::kNf4);
      EXPECT_EQ(t.scale_kind, ScaleKind::kF32);
      EXPECT_TRUE(t.block.flattened);
      EXPECT_EQ(t.block.min_size, 32);
      EXPECT_EQ(t.block.max_size, 4096);
      EXPECT_EQ(t.granularities, GranularityBit(Granularity::kGroup));
    } else if (info->nvfp4_block > 0) {
      // NVFP4: E4M3 block scales over blocks of 16 along the last axis, groups of 16 only.
      EXPECT_EQ(t.scale_kind, ScaleKind::kE4M3);
      EXPECT_EQ(t.scale_divisor, info->symmetric_divisor);
      EXPECT_EQ(t.granularities, GranularityBit(Granularity::kGroup));
    } else if (info->mx_block > 0) {
      // MX: E8M0 scales over blocks of 32 along the last axis, i.e. groups of 32 only.
      EXPECT_EQ(t.scale_kind, ScaleKind::kE8M0);
      EXPECT_EQ(t.mx.emax, info->mx_emax);
      EXPECT_EQ(t.mx.mbits, info->mx_mbits);
      EXPECT_EQ(t.mx.implicit_exponent, info->mx_implicit_exponent);
      EXPECT_EQ(t.scale_divisor, static_cast<float>(info->mx_max_element));
      EXPECT_EQ(t.granularities, GranularityBit(Granularity::kGroup));
    } else if (info->flatquant) {
      // FlatQuant: symmetric INT4 per token of the transformed rows.
      EXPECT_TRUE(t.kronecker_transform);
      EXPECT_EQ(t.scale_kind, ScaleKind::kF32);
      EXPECT_EQ(t.scale_divisor, info->symmetric_divisor);
      EXPECT_EQ(t.granularities, GranularityBit(Granularity::kToken));
    } else {
      EXPECT_FALSE(t.kronecker_transform);
      EXPECT_EQ(t.scale_kind, ScaleKind::kF32);
      EXPECT_EQ(t.scale_divisor, info->symmetric_divisor);
      EXPECT_EQ(FormatAllows(format, Granularity::kNone), !info->is_int);
      for (Granularity g : {Granularity::kTensor, Granularity::kChannel, Granularity::kToken,
                            Granularity::kGroup, Granularity::kBlock}) {
        EXPECT_TRUE(FormatAllows(format, g)) << GranularityName(g);
      }
    }
    if (info->is_int) {
      EXPECT_EQ(t.qmin, info->qmin);
      EXPECT_EQ(t.qmax, info->qmax);
      EXPECT_EQ(t.is_signed, info->qmin < 0);
    } else if (info->nf4_block > 0) {
      for (uint32_t code = 0; code < 16; ++code) {
        EXPECT_EQ(Nf4Value(code), oracle::Nf4Values()[code]) << code;
      }
    } else if (info->hif8) {
      EXPECT_EQ(t.kind, ElementKind::kHif8);
      EXPECT_EQ(Hif8Decode(kHif8Max), info->max_finite);
      EXPECT_EQ(Hif8Decode(0x01), info->min_subnormal);
    } else {
      const oracle::Minifloat& m = info->minifloat;
      EXPECT_EQ(t.minifloat.exp_bits, m.exp_bits);
      EXPECT_EQ(t.minifloat.man_bits, m.man_bits);
      EXPECT_EQ(t.minifloat.bias, m.bias);
      EXPECT_EQ(t.minifloat.max_code, oracle::MaxFiniteCode(m));
      EXPECT_EQ(t.bits, 1 + m.exp_bits + m.man_bits);
      // The FORMATS.md table's max finite and min subnormal.
      EXPECT_EQ(oracle::MaxFinite(m), info->max_finite);
      EXPECT_EQ(oracle::FiniteMagnitudes(m)[1], info->min_subnormal);
      EXPECT_EQ(MinifloatDecode(t.minifloat, t.minifloat.max_code), info->max_finite);
    }
  }
}

TEST(TraitsTest, UnknownFormatNameListsTheAcceptedOnes) {
  absl::StatusOr<Format> f = FormatFromName("fp8-e4m3fnuz");
  ASSERT_THAT(f, StatusIs(absl::StatusCode::kInvalidArgument));
  for (Format format : AllFormats()) {
    EXPECT_THAT(std::string(f.status().message()), ::testing::HasSubstr(FormatName(format)));
  }
}

// ---- Minifloat vectors of FORMATS.md. ----

TEST(MinifloatVectorsTest, E4M3) {
  EXPECT_EQ(MinifloatDecode(E4M3(), 0x7E), 448.0f);
  EXPECT_EQ(MinifloatDecode(E4M3(), 0xFE), -448.0f);
  EXPECT_EQ(MinifloatDecode(E4M3(), 0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(MinifloatDecode(E4M3(), 0x08), std::ldexp(1.0f, -6));  // min normal
  EXPECT_EQ(MinifloatDecode(E4M3(), 0x38), 1.0f);
  EXPECT_TRUE(std::isnan(MinifloatDecode(E4M3(), 0x7F)));
  EXPECT_TRUE(std::isnan(MinifloatDecode(E4M3(), 0xFF)));
  EXPECT_EQ(Encode(E4M3(), 448.0f), 0x7Eu);
  EXPECT_EQ(Encode(E4M3(), std::ldexp(1.0f, -9)), 0x01u);
  EXPECT_EQ(Encode(E4M3(), kNaN), 0x7Fu);
  EXPECT_EQ(Encode(E4M3(), -kNaN), 0xFFu);  // NaN keeps its sign
  EXPECT_EQ(Encode(E4M3(), -0.0f), 0x80u);
  EXPECT_EQ(Encode(E4M3(), 0.0f), 0x00u);
  // 240 is the max of E4M3fnuz / IEEE-style E4M3, an ordinary value here: 1.875 · 2^7.
  EXPECT_EQ(Encode(E4M3(), 240.0f), 0x77u);
  EXPECT_NE(MinifloatDecode(E4M3(), 0x7E), 240.0f);
  EXPECT_EQ(Encode(E4M3(), 256.0f), 0x78u);
  // Overflow: no Inf in E4M3; SATURATE gives ±448, NONFINITE NaN (ml_dtypes).
  EXPECT_EQ(Encode(E4M3(), kInf), 0x7Eu);
  EXPECT_EQ(Encode(E4M3(), -kInf), 0xFEu);
  EXPECT_EQ(Encode(E4M3(), 1e6f), 0x7Eu);
  EXPECT_EQ(Encode(E4M3(), kInf, Overflow::kNonfinite), 0x7Fu);
  EXPECT_EQ(Encode(E4M3(), -kInf, Overflow::kNonfinite), 0xFFu);
  EXPECT_EQ(Encode(E4M3(), 1e6f, Overflow::kNonfinite), 0x7Fu);
  // 464 is the tie between 448 (0x7E, even) and the first value past max: RNE keeps 448,
  // anything above overflows; ties-away overflows at 464 itself.
  EXPECT_EQ(Encode(E4M3(), 464.0f, Overflow::kNonfinite), 0x7Eu);
  EXPECT_EQ(Encode(E4M3(), std::nextafter(464.0f, kInf), Overflow::kNonfinite), 0x7Fu);
  EXPECT_EQ(Encode(E4M3(), std::nextafter(464.0f, kInf), Overflow::kSaturate), 0x7Eu);
  EXPECT_EQ(Encode(E4M3(), 464.0f, Overflow::kNonfinite, Rounding::kNearestAway), 0x7Fu);
  EXPECT_EQ(Encode(E4M3(), 464.0f, Overflow::kSaturate, Rounding::kNearestAway), 0x7Eu);
  // Subnormal ties: 2^-10 is half of the min subnormal (ties to 0, even), 3·2^-10 ties 1·2^-9
  // and 2·2^-9 (goes to the even code 0x02).
  EXPECT_EQ(Encode(E4M3(), std::ldexp(1.0f, -10)), 0x00u);
  EXPECT_EQ(Encode(E4M3(), -std::ldexp(1.0f, -10)), 0x80u);
  EXPECT_EQ(Encode(E4M3(), std::ldexp(3.0f, -10)), 0x02u);
  EXPECT_EQ(Encode(E4M3(), std::ldexp(1.0f, -10), Overflow::kSaturate, Rounding::kNearestAway),
            0x01u);
  // The subnormal-to-normal carry: 7.5·2^-9 rounds up to 2^-6 (0x08, even).
  EXPECT_EQ(Encode(E4M3(), 7.5f * std::ldexp(1.0f, -9)), 0x08u);
}

TEST(MinifloatVectorsTest, E5M2) {
  EXPECT_EQ(MinifloatDecode(E5M2(), 0x7B), 57344.0f);
  EXPECT_EQ(MinifloatDecode(E5M2(), 0x01), std::ldexp(1.0f, -16));
  EXPECT_EQ(MinifloatDecode(E5M2(), 0x04), std::ldexp(1.0f, -14));  // min normal
  EXPECT_EQ(MinifloatDecode(E5M2(), 0x7C), kInf);
  EXPECT_EQ(MinifloatDecode(E5M2(), 0xFC), -kInf);
  for (uint32_t code : {0x7Du, 0x7Eu, 0x7Fu, 0xFDu, 0xFEu, 0xFFu}) {
    EXPECT_TRUE(std::isnan(MinifloatDecode(E5M2(), code))) << code;
  }
  EXPECT_EQ(Encode(E5M2(), 57344.0f), 0x7Bu);
  EXPECT_EQ(Encode(E5M2(), std::ldexp(1.0f, -16)), 0x01u);
  EXPECT_EQ(Encode(E5M2(), kNaN), 0x7Eu);  // S.11111.10
  EXPECT_EQ(Encode(E5M2(), -kNaN), 0xFEu);
  EXPECT_EQ(Encode(E5M2(), -0.0f), 0x80u);
  EXPECT_EQ(Encode(E5M2(), kInf, Overflow::kNonfinite), 0x7Cu);
  EXPECT_EQ(Encode(E5M2(), -kInf, Overflow::kNonfinite), 0xFCu);
  EXPECT_EQ(Encode(E5M2(), kInf), 0x7Bu);
  EXPECT_EQ(Encode(E5M2(), -kInf), 0xFBu);
  // 61440 ties 57344 (0x7B, odd) and 65536 (0x7C, even): RNE overflows.
  EXPECT_EQ(Encode(E5M2(), 61440.0f, Overflow::kNonfinite), 0x7Cu);
  EXPECT_EQ(Encode(E5M2(), 61440.0f, Overflow::kSaturate), 0x7Bu);
  EXPECT_EQ(Encode(E5M2(), std::nextafter(61440.0f, 0.0f), Overflow::kNonfinite), 0x7Bu);
  EXPECT_EQ(Encode(E5M2(), 448.0f), 0x5Fu);  // 1.75 · 2^8
}

TEST(MinifloatVectorsTest, EngineDecodesEveryCodeLikeTheOracle) {
  for (Format format : AllFormats()) {
    const FormatTraits& t = Traits(format);
    if (t.kind != ElementKind::kMinifloat) continue;
    const oracle::FormatInfo* info = oracle::FindFormat(format);
    ASSERT_NE(info, nullptr);
    for (uint32_t code = 0; code < (1u << t.bits); ++code) {
      const float want = static_cast<float>(oracle::MinifloatValue(info->minifloat, code));
      const float got = MinifloatDecode(t.minifloat, code);
      EXPECT_TRUE(SameFloat(got, want)) << FormatName(format) << " code " << code;
      if (std::isnan(want)) {
        EXPECT_EQ(std::signbit(got), std::signbit(want)) << "NaN sign, code " << code;
      }
    }
  }
}

// Every encode of the engine against the oracle's nearest-value search over a dense sweep:
// all midpoints (and their fp32 neighbours) of every format, both overflows, all roundings.
TEST(MinifloatVectorsTest, EngineEncodesLikeTheOracle) {
  for (Format format : AllFormats()) {
    const FormatTraits& t = Traits(format);
    if (t.kind != ElementKind::kMinifloat) continue;
    const oracle::Minifloat& m = oracle::FindFormat(format)->minifloat;
    const std::vector<double>& mags = oracle::FiniteMagnitudes(m);
    std::vector<float> values = {0.0f, kInf, kNaN, 1e-45f, 3.4e38f};
    for (size_t k = 0; k < mags.size(); ++k) {
      const double next = k + 1 < mags.size() ? mags[k + 1] : 2 * mags[k] - mags[k - 1];
      const float mid = static_cast<float>((mags[k] + next) / 2);
      for (float v :
           {static_cast<float>(mags[k]), mid, std::nextafter(mid, 0.0f), std::nextafter(mid, kInf),
            static_cast<float>(mags[k] * 0.999), static_cast<float>(mags[k] * 1.001)}) {
        values.push_back(v);
      }
    }
    for (float v : std::vector<float>(values)) values.push_back(-v);
    for (Rounding rounding :
         {Rounding::kNearestEven, Rounding::kNearestAway, Rounding::kStochastic}) {
      for (Overflow overflow : {Overflow::kSaturate, Overflow::kNonfinite}) {
        for (size_t i = 0; i < values.size(); ++i) {
          const uint32_t bits = oracle::RandomBits(42, i);
          const uint32_t got = MinifloatEncode(t.minifloat, values[i], rounding, bits, overflow);
          const uint32_t want = oracle::EncodeMinifloat(m, values[i], rounding, bits, overflow);
          ASSERT_EQ(got, want) << FormatName(format) << " " << RoundingName(rounding) << " "
                               << OverflowName(overflow) << " v=" << values[i];
        }
      }
    }
  }
}

// ---- Half and bfloat16 conversions (inputs and outputs) against the oracle's engine. ----

TEST(DTypeConversionTest, EveryHalfAndBFloat16CodeDecodes) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const uint16_t code = static_cast<uint16_t>(h);
    ASSERT_TRUE(SameFloat(HalfToFloat(code), oracle::HalfBitsToFloat(code))) << h;
    ASSERT_TRUE(SameFloat(BF16ToFloat(code), oracle::BF16BitsToFloat(code))) << h;
    if (std::isnan(HalfToFloat(code))) {
      EXPECT_EQ(std::signbit(HalfToFloat(code)), (h & 0x8000u) != 0);
    }
  }
}

TEST(DTypeConversionTest, FloatToHalfAndBFloat16RoundHalfToEven) {
  std::vector<float> values = {0.0f,
                               -0.0f,
                               kInf,
                               -kInf,
                               65504.0f,
                               65520.0f,
                               65519.996f,
                               std::ldexp(1.0f, -24),
                               std::ldexp(1.0f, -25),
                               std::ldexp(3.0f, -26),
                               3.3895314e38f,
                               3.4028235e38f,
                               1e-45f};
  // Midpoints of adjacent halves and bfloat16s (and their neighbours), across every binade.
  for (uint32_t h = 0; h < 0x7C00u; h += 7) {
    const float a = oracle::HalfBitsToFloat(static_cast<uint16_t>(h));
    const float b = oracle::HalfBitsToFloat(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((static_cast<double>(a) + b) / 2);
    values.insert(values.end(), {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, kInf)});
  }
  for (uint32_t h = 0; h < 0x7F80u; h += 5) {
    const float a = oracle::BF16BitsToFloat(static_cast<uint16_t>(h));
    const float b = oracle::BF16BitsToFloat(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((static_cast<double>(a) + b) / 2);
    values.insert(values.end(), {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, kInf)});
  }
  for (float v : values) {
    for (float s : {v, -v}) {
      ASSERT_EQ(FloatToHalf(s), oracle::FloatToHalfBits(s)) << s;
      ASSERT_EQ(FloatToBF16(s), oracle::FloatToBF16Bits(s)) << s;
    }
  }
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(kNaN))));
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(-kNaN))));
  EXPECT_TRUE(std::signbit(BF16ToFloat(FloatToBF16(-kNaN))));
}

// ---- Integer examples, computed by hand (fp32 steps written out). ----

QuantSpec TensorSpec(Format format, bool asymmetric) {
  QuantSpec spec;
  spec.format = format;
  spec.granularity = Granularity::kTensor;
  spec.asymmetric = asymmetric;
  return spec;
}

TEST(IntVectorsTest, Int8SymmetricAmax127HasScaleOne) {
  const Quantized q = QuantizeFloats({127.0f, -127.0f, 0.5f, 1.5f, -2.5f, 3.0f, 126.5f}, {7},
                                     TensorSpec(Format::kInt8, false));
  ASSERT_THAT(q.status, IsOk());
  EXPECT_THAT(q.run.scales, ElementsAre(1.0f));
  // RNE: 0.5 → 0, 1.5 → 2, -2.5 → -2, 126.5 → 126. Codes are two's complement bytes.
  EXPECT_THAT(q.run.codes, ElementsAre(0x7F, 0x81, 0x00, 0x02, 0xFE, 0x03, 0x7E));
  EXPECT_THAT(q.x_hat, ElementsAre(127.0f, -127.0f, 0.0f, 2.0f, -2.0f, 3.0f, 126.0f));
}

TEST(IntVectorsTest, Int8SymmetricScaleIsAmaxOver127) {
  // amax 254 → s = 2; 3 / 2 = 1.5 → 2; 5 / 2 = 2.5 → 2; -3 / 2 → -2 (sign restored).
  const Quantized q =
      QuantizeFloats({254.0f, 3.0f, 5.0f, -3.0f}, {4}, TensorSpec(Format::kInt8, false));
  ASSERT_THAT(q.status, IsOk());
  EXPECT_THAT(q.run.scales, ElementsAre(2.0f));
  EXPECT_THAT(q.run.codes, ElementsAre(127, 2, 2, 0xFE));
  QuantSpec away = TensorSpec(Format::kInt8, false);
  away.rounding = Rounding::kNearestAway;
  const Quantized a = QuantizeFloats({254.0f, 3.0f, 5.0f, -3.0f}, {4}, away);
  ASSERT_THAT(a.status, IsOk());
  EXPECT_THAT(a.run.codes, ElementsAre(127, 2, 3, 0xFE));
}

TEST(IntVectorsTest, Int8AsymmetricZeroPoint) {
  // max 3, min -1: s = fp32(4 / 255) = 0x3C808081 (0.015686275);
  // fp32(-1 / s) = -63.749996, qmin - that = -64.25 → zp = rne(-64.25) = -64.
  // x / s = [-63.749996, 0, 63.749996, 127.49999, 191.24998] → rne + zp = [-128, -64, 0, 63, 127].
  const Quantized q =
      QuantizeFloats({-1.0f, 0.0f, 1.0f, 2.0f, 3.0f}, {5}, TensorSpec(Format::kInt8, true));
  ASSERT_THAT(q.status, IsOk());
  ASSERT_EQ(q.run.scales.size(), 1u);
  EXPECT_EQ(Bits(q.run.scales[0]), 0x3C808081u);
  EXPECT_THAT(q.run.zero_points, ElementsAre(-64));
  EXPECT_THAT(q.run.codes, ElementsAre(0x80, 0xC0, 0x00, 0x3F, 0x7F));
  EXPECT_THAT(q.x_hat, ElementsAre(-1.003921627998352f, 0.0f, 1.003921627998352f,
                                   1.992156982421875f, 2.9960784912109375f));
}

TEST(IntVectorsTest, AsymmetricRangeAlwaysHoldsZero) {
  // All positive: min is taken as 0 (max ≥ 0 ≥ min enforced): s = 2 / 255, zp = -128, and
  // 0.5 / s = 63.749996 → 64 - 128 = -64.
  const Quantized q = QuantizeFloats({0.5f, 2.0f}, {2}, TensorSpec(Format::kInt8, true));
  ASSERT_THAT(q.status, IsOk());
  EXPECT_EQ(Bits(q.run.scales[0]), 0x3C008081u);
  EXPECT_THAT(q.run.zero_points, ElementsAre(-128));
  EXPECT_THAT(q.run.codes, ElementsAre(0xC0, 0x7F));
  EXPECT_THAT(q.x_hat, ElementsAre(0.501960813999176f, 2.0f));
  // All negative, int4: max is taken as 0: s = 2 / 15 (0x3E088889); fp32(-2 / s) = -14.999999,
  // -8 + 14.999999 = 6.999999 → zp 7; -0.5 / s = -3.7499998 → -4 + 7 = 3.
  const Quantized n = QuantizeFloats({-2.0f, -0.5f}, {2}, TensorSpec(Format::kInt4, true));
  ASSERT_THAT(n.status, IsOk());
  EXPECT_EQ(Bits(n.run.scales[0]), 0x3E088889u);
  EXPECT_THAT(n.run.zero_points, ElementsAre(7));
  EXPECT_THAT(n.run.codes, ElementsAre(0x38));  // low nibble -8 (0x8), high nibble 3
  EXPECT_THAT(n.x_hat, ElementsAre(-2.0f, -0.5333333611488342f));
}

TEST(IntVectorsTest, Uint8AsymmetricZeroPoint) {
  // s = fp32(2 / 255) = 0.0078431377; fp32(-(-1) / s) = 127.49999 → zp = 127;
  // -1 / s = -127.49999 → -127 + 127 = 0; 1 / s → 127 + 127 = 254.
  const Quantized q = QuantizeFloats({-1.0f, 1.0f}, {2}, TensorSpec(Format::kUint8, true));
  ASSERT_THAT(q.status, IsOk());
  EXPECT_EQ(Bits(q.run.scales[0]), 0x3C008081u);
  EXPECT_THAT(q.run.zero_points, ElementsAre(127));
  EXPECT_THAT(q.run.codes, ElementsAre(0, 254));
  EXPECT_THAT(q.x_hat, ElementsAre(-0.9960784912109375f, 0.9960784912109375f));
}

TEST(IntVectorsTest, AllZeroGroupGetsScaleOne) {
  // Symmetric: s = 1 and codes 0. Asymmetric int8: s = 1, zp = rne(-128 - 0) = -128, so the
  // codes are -128 (= zp, x̂ = 0): the formulas, not the loose "its codes are 0".
  const Quantized sym = QuantizeFloats({0.0f, -0.0f, 0.0f}, {3}, TensorSpec(Format::kInt8, false));
  ASSERT_THAT(sym.status, IsOk());
  EXPECT_THAT(sym.run.scales, ElementsAre(1.0f));
  EXPECT_THAT(sym.run.codes, ElementsAre(0, 0, 0));
  const Quantized asym = QuantizeFloats({0.0f, -0.0f, 0.0f}, {3}, TensorSpec(Format::kInt8, true));
  ASSERT_THAT(asym.status, IsOk());
  EXPECT_THAT(asym.run.scales, ElementsAre(1.0f));
  EXPECT_THAT(asym.run.zero_points, ElementsAre(-128));
  EXPECT_THAT(asym.run.codes, ElementsAre(0x80, 0x80, 0x80));
  EXPECT_THAT(asym.x_hat, ElementsAre(0.0f, 0.0f, 0.0f));
  const Quantized u = QuantizeFloats({0.0f, 0.0f}, {2}, TensorSpec(Format::kUint4, true));
  ASSERT_THAT(u.status, IsOk());
  EXPECT_THAT(u.run.zero_points, ElementsAre(0));
  EXPECT_THAT(u.run.codes, ElementsAre(0x00));
  const Quantized e4 = QuantizeFloats({0.0f, -0.0f}, {2}, TensorSpec(Format::kFp8E4M3, false));
  ASSERT_THAT(e4.status, IsOk());
  EXPECT_THAT(e4.run.scales, ElementsAre(1.0f));
  EXPECT_THAT(e4.run.codes, ElementsAre(0x00, 0x80));
}

TEST(IntVectorsTest, ScaleThatUnderflowsBecomesOne) {
  // amax = 2^-149 (the smallest subnormal): 2^-149 / 127 rounds to 0 in fp32 → s = 1.
  const float tiny = std::ldexp(1.0f, -149);
  const Quantized q = QuantizeFloats({tiny, 0.0f}, {2}, TensorSpec(Format::kInt8, false));
  ASSERT_THAT(q.status, IsOk());
  EXPECT_THAT(q.run.scales, ElementsAre(1.0f));
  EXPECT_THAT(q.run.codes, ElementsAre(0, 0));
  // amax = 2^-140: 2^-140 / 127 is a (nonzero) subnormal and is kept.
  const Quantized k =
      QuantizeFloats({std::ldexp(1.0f, -140)}, {1}, TensorSpec(Format::kInt8, false));
  ASSERT_THAT(k.status, IsOk());
  EXPECT_EQ(k.run.scales[0], std::ldexp(1.0f, -140) / 127.0f);
  EXPECT_GT(k.run.scales[0], 0.0f);
}

TEST(IntVectorsTest, NonfiniteValuesNeverEnterTheScale) {
  // amax over finite elements only: 10 → s = 10 / 127; ±Inf clamp to 127 and -128 (the
  // formula's clamp, so -Inf reaches qmin); -5 / s = -63.5 → -64.
  const Quantized q =
      QuantizeFloats({kInf, 10.0f, -kInf, -5.0f}, {4}, TensorSpec(Format::kInt8, false));
  ASSERT_THAT(q.status, IsOk());
  EXPECT_EQ(q.run.scales[0], 10.0f / 127.0f);
  EXPECT_THAT(q.run.codes, ElementsAre(0x7F, 0x7F, 0x80, 0xC0));
  // Only nonfinite values: an all-zero group.
  const Quantized e = QuantizeFloats({kInf, -kInf}, {2}, TensorSpec(Format::kFp8E5M2, false));
  ASSERT_THAT(e.status, IsOk());
  EXPECT_THAT(e.run.scales, ElementsAre(1.0f));
  EXPECT_THAT(e.run.codes, ElementsAre(0x7B, 0xFB));  // saturate by default
}

TEST(IntVectorsTest, NanPolicyZeroQuantizesNanAsZero) {
  QuantSpec spec = TensorSpec(Format::kInt8, true);
  spec.nan_policy = NanPolicy::kZero;
  // max 3, min -1 as in Int8AsymmetricZeroPoint: zp = -64, so NaN gets the code of 0 = -64.
  const Quantized q = QuantizeFloats({-1.0f, kNaN, 3.0f, -kNaN}, {4}, spec);
  ASSERT_THAT(q.status, IsOk());
  EXPECT_THAT(q.run.zero_points, ElementsAre(-64));
  EXPECT_THAT(q.run.codes, ElementsAre(0x80, 0xC0, 0x7F, 0xC0));
  EXPECT_THAT(q.x_hat, ElementsAre(-1.003921627998352f, 0.0f, 2.9960784912109375f, 0.0f));
  QuantSpec e4 = TensorSpec(Format::kFp8E4M3, false);
  e4.nan_policy = NanPolicy::kZero;
  const Quantized f = QuantizeFloats({448.0f, kNaN, -kNaN}, {3}, e4);
  ASSERT_THAT(f.status, IsOk());
  EXPECT_THAT(f.run.codes, ElementsAre(0x7E, 0x00, 0x00));
}

TEST(IntVectorsTest, NanPropagatesAsTheSignedNanCodeOfFp8) {
  const Quantized q =
      QuantizeFloats({448.0f, kNaN, -kNaN}, {3}, TensorSpec(Format::kFp8E4M3, false));
  ASSERT_THAT(q.status, IsOk());
  EXPECT_THAT(q.run.codes, ElementsAre(0x7E, 0x7F, 0xFF));
  EXPECT_TRUE(std::isnan(q.x_hat[1]));
  const Quantized e =
      QuantizeFloats({57344.0f, kNaN, -kNaN}, {3}, TensorSpec(Format::kFp8E5M2, false));
  ASSERT_THAT(e.status, IsOk());
  EXPECT_THAT(e.run.codes, ElementsAre(0x7B, 0x7E, 0xFE));
}

TEST(IntVectorsTest, Fp8TensorScaleIsAmaxOverMaxFinite) {
  // E4M3: amax 896 → s = 2; 896 / 2 = 448 (0x7E), 1 / 2 = 0.5 (0x30), -3 / 2 = -1.5 (0xBC).
  const Quantized q =
      QuantizeFloats({896.0f, 1.0f, -3.0f}, {3}, TensorSpec(Format::kFp8E4M3, false));
  ASSERT_THAT(q.status, IsOk());
  EXPECT_THAT(q.run.scales, ElementsAre(2.0f));
  EXPECT_THAT(q.run.codes, ElementsAre(0x7E, 0x30, 0xBC));
  // E5M2: amax 229376 = 4 · 57344 → s = 4.
  const Quantized e = QuantizeFloats({229376.0f, -4.0f}, {2}, TensorSpec(Format::kFp8E5M2, false));
  ASSERT_THAT(e.status, IsOk());
  EXPECT_THAT(e.run.scales, ElementsAre(4.0f));
  EXPECT_THAT(e.run.codes, ElementsAre(0x7B, 0xBC));  // -1 = 1.00 · 2^0 → 0 01111 00
}

TEST(IntVectorsTest, GranularityNoneIsAPlainCastWithScaleOne) {
  QuantSpec spec = TensorSpec(Format::kFp8E4M3, false);
  spec.granularity = Granularity::kNone;
  const Quantized q = QuantizeFloats({1.0f, 448.0f, 1000.0f, -kInf, 0.1f}, {5}, spec);
  ASSERT_THAT(q.status, IsOk());
  EXPECT_THAT(q.run.layout.scale_shape, ElementsAre(1));
  EXPECT_THAT(q.run.scales, ElementsAre(1.0f));
  // 0.1 = 1.6 · 2^-4: mantissa 0.6 · 8 = 4.8 → 5 → 0 0011 101 = 0x1D.
  EXPECT_THAT(q.run.codes, ElementsAre(0x38, 0x7E, 0x7E, 0xFE, 0x1D));
}

// ---- Packing. ----

QuantSpec StaticInt4(std::vector<float> scales, Packing packing, bool asymmetric = false,
                     Format format = Format::kInt4) {
  QuantSpec spec;
  spec.format = format;
  spec.granularity = Granularity::kTensor;
  spec.static_scales = std::move(scales);
  spec.packing = packing;
  spec.asymmetric = asymmetric;
  if (asymmetric) spec.static_zero_points = {0};
  return spec;
}

TEST(PackingTest, Int4NibblesAreLittleEndianTwosComplement) {
  // Codes [1, -1, 7, -8]: element 0 in the low nibble → 0xF1, 0x87.
  const Quantized q =
      QuantizeFloats({1.0f, -1.0f, 7.0f, -8.0f}, {1, 4}, StaticInt4({1.0f}, Packing::kBitstream));
  ASSERT_THAT(q.status, IsOk());
  EXPECT_THAT(q.run.codes, ElementsAre(0xF1, 0x87));
  EXPECT_THAT(q.x_hat, ElementsAre(1.0f, -1.0f, 7.0f, -8.0f));
}

TEST(PackingTest, Int4RowsStartOnByteBoundaries) {
  // [2, 3]: each row takes 2 bytes, the last nibble of a row is zero padding.
  const Quantized q = QuantizeFloats({1.0f, 2.0f, 3.0f, -1.0f, -2.0f, -3.0f}, {2, 3},
                                     StaticInt4({1.0f}, Packing::kBitstream));
  ASSERT_THAT(q.status, IsOk());
  EXPECT_EQ(q.run.layout.code_row_bytes, 2);
  EXPECT_THAT(q.run.codes, ElementsAre(0x21, 0x03, 0xEF, 0x0D));
}

TEST(PackingTest, Int32OffsetStoresValuePlusEightInLittleEndianWords) {
  // [1, -1, 7, -8] + 8 = [9, 7, 15, 0] → word 0x0000F079... nibble i at bits 4i:
  // 9 | 7 << 4 | 15 << 8 | 0 << 12 = 0x0F79, rows padded to 8 elements (one int32).
  const Quantized q =
      QuantizeFloats({1.0f, -1.0f, 7.0f, -8.0f}, {1, 4}, StaticInt4({1.0f}, Packing::kInt32Offset));
  ASSERT_THAT(q.status, IsOk());
  EXPECT_EQ(q.run.layout.code_row_bytes, 4);
  EXPECT_THAT(q.run.codes, ElementsAre(0x79, 0x0F, 0x00, 0x00));
  EXPECT_THAT(q.x_hat, ElementsAre(1.0f, -1.0f, 7.0f, -8.0f));
  // Padding elements are stored as 0 (not as the offset 8): 9 elements → two words per row.
  const Quantized r = QuantizeFloats(std::vector<float>(9, 0.0f), {1, 9},
                                     StaticInt4({1.0f}, Packing::kInt32Offset));
  ASSERT_THAT(r.status, IsOk());
  EXPECT_THAT(r.run.codes, ElementsAre(0x88, 0x88, 0x88, 0x88, 0x08, 0x00, 0x00, 0x00));
}

TEST(PackingTest, Uint4AndInt8Codes) {
  QuantSpec u4;
  u4.format = Format::kUint4;
  u4.granularity = Granularity::kTensor;
  u4.asymmetric = true;
  u4.static_scales = {1.0f};
  u4.static_zero_points = {0};
  const Quantized q = QuantizeFloats({15.0f, 0.0f, 3.0f}, {3}, u4);
  ASSERT_THAT(q.status, IsOk());
  EXPECT_THAT(q.run.codes, ElementsAre(0x0F, 0x03));
  QuantSpec i8 = TensorSpec(Format::kInt8, false);
  i8.static_scales = {1.0f};
  const Quantized b = QuantizeFloats({-1.0f, -128.0f, -200.0f, 127.0f, 300.0f}, {5}, i8);
  ASSERT_THAT(b.status, IsOk());
  EXPECT_THAT(b.run.codes, ElementsAre(0xFF, 0x80, 0x80, 0x7F, 0x7F));
}

TEST(PackingTest, PackingHelpersMatchTheOracle) {
  for (int64_t cols : {1, 2, 3, 7, 8, 9, 33}) {
    for (Packing packing : {Packing::kBitstream, Packing::kInt32Offset}) {
      EXPECT_EQ(PackedRowBytes(cols, 4, packing), oracle::PackedRowBytes(cols, 4, packing));
    }
    EXPECT_EQ(PackedRowBytes(cols, 8, Packing::kBitstream), cols);
  }
  std::vector<uint32_t> codes;
  for (uint32_t i = 0; i < 2 * 11; ++i) codes.push_back((i * 7 + 3) & 0xF);
  for (Packing packing : {Packing::kBitstream, Packing::kInt32Offset}) {
    const std::vector<uint8_t> want = oracle::Pack(codes, 2, 11, 4, packing);
    const int64_t row_bytes = PackedRowBytes(11, 4, packing);
    std::vector<uint8_t> got(static_cast<size_t>(2 * row_bytes), 0);
    for (int64_t r = 0; r < 2; ++r) {
      for (int64_t c = 0; c < 11; ++c) {
        StoreCode(got.data() + r * row_bytes, c, 4, packing,
                  codes[static_cast<size_t>(r * 11 + c)]);
      }
    }
    EXPECT_EQ(got, want);
    for (int64_t r = 0; r < 2; ++r) {
      for (int64_t c = 0; c < 11; ++c) {
        EXPECT_EQ(LoadCode(got.data() + r * row_bytes, c, 4, packing),
                  codes[static_cast<size_t>(r * 11 + c)]);
      }
    }
  }
}

// ---- Scale shapes, as FORMATS.md writes them. ----

Shape ScaleShape(const Shape& shape, QuantSpec spec) {
  spec.format = Format::kInt8;
  absl::StatusOr<QuantSpec> resolved = ResolveSpec(spec, shape);
  EXPECT_THAT(resolved, IsOk());
  if (!resolved.ok()) return {};
  absl::StatusOr<QuantLayout> layout = ComputeLayout(*resolved, shape);
  EXPECT_THAT(layout, IsOk());
  if (!layout.ok()) return {};
  int64_t n = 1;
  for (int64_t d : layout->scale_shape) n *= d;
  EXPECT_EQ(n, layout->geometry.num_scales);
  return layout->scale_shape;
}

TEST(ScaleShapeTest, FollowsCompressedTensorsConvention) {
  QuantSpec tensor;
  tensor.granularity = Granularity::kTensor;
  EXPECT_THAT(ScaleShape({4096, 11}, tensor), ElementsAre(1));
  EXPECT_THAT(ScaleShape({}, tensor), ElementsAre(1));
  QuantSpec channel;
  channel.granularity = Granularity::kChannel;
  EXPECT_THAT(ScaleShape({32, 64}, channel), ElementsAre(32, 1));  // [out, in] → [out, 1]
  EXPECT_THAT(ScaleShape({32, 16, 3, 3}, channel), ElementsAre(32, 1, 1, 1));
  channel.axis = 1;
  EXPECT_THAT(ScaleShape({32, 16, 3, 3}, channel), ElementsAre(1, 16, 1, 1));
  channel.axis = -1;
  EXPECT_THAT(ScaleShape({32, 16, 3, 5}, channel), ElementsAre(1, 1, 1, 5));
  QuantSpec token;
  token.granularity = Granularity::kToken;
  EXPECT_THAT(ScaleShape({8, 100}, token), ElementsAre(8, 1));
  EXPECT_THAT(ScaleShape({2, 3, 100}, token), ElementsAre(6, 1));  // leading dims fold into rows
  QuantSpec group;
  group.granularity = Granularity::kGroup;
  group.group_size = 64;
  EXPECT_THAT(ScaleShape({4, 130}, group), ElementsAre(4, 3));  // ragged last group
  EXPECT_THAT(ScaleShape({2, 3, 128}, group), ElementsAre(6, 2));
  QuantSpec block;
  block.granularity = Granularity::kBlock;
  block.block_rows = 128;
  block.block_cols = 128;
  EXPECT_THAT(ScaleShape({300, 200}, block), ElementsAre(3, 2));
  block.block_rows = 1;
  EXPECT_THAT(ScaleShape({5, 2, 256}, block), ElementsAre(10, 2));  // 1×128 activations
}

}  // namespace
}  // namespace quantd::testing
