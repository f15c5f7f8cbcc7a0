// NF4 (bitsandbytes, FORMATS.md "Block formats") worked by hand: blocks over the flattened
// tensor, the F32 absmax per block (0 for an all-zero block, whose codes are 7), the decision
// tree's strict > on its fp32 thresholds, and element 0 in the high nibble.
#include <cstdint>
#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quantd/codec.h"
#include "quantd/format.h"
#include "quantd/spec.h"
#include "test_support.h"

namespace quantd::testing {
namespace {

QuantSpec Nf4(int64_t block = 0) {
  QuantSpec spec;
  spec.format = Format::kNf4;
  spec.group_size = block;
  if (block != 0) spec.granularity = Granularity::kGroup;
  return spec;
}

// [2, 40]: 80 elements in blocks of 64 over the flattened tensor, [0, 64) and [64, 80).
// Block 0, absmax 2: 2 → n = 1 → 15; -2 → -1 → 0; 1 → 0.5, below the threshold
// 0.5016634166240692f, → 12 (0.4407...); 0 → 7. Block 1 is all zero: absmax 0, codes 7.
TEST(Nf4VectorsTest, FlattenedBlocksAndHighNibbleFirst) {
  std::vector<float> x(80, 0.0f);
  x[0] = 2.0f;
  x[1] = -2.0f;
  x[2] = 1.0f;
  const Quantized q = QuantizeFloats(x, {2, 40}, Nf4());
  ASSERT_THAT(q.status, IsOk());
  EXPECT_EQ(q.spec.group_size, 64);
  EXPECT_EQ(q.spec.packing, Packing::kHighNibbleFirst);
  EXPECT_EQ(q.run.layout.scale_shape, (Shape{2}));
  EXPECT_EQ(q.run.layout.code_shape, (Shape{40}));
  EXPECT_THAT(q.run.scales, ::testing::ElementsAre(2.0f, 0.0f));
  ASSERT_EQ(q.run.codes.size(), 40u);
  EXPECT_EQ(q.run.codes[0], 0xF0);
  EXPECT_EQ(q.run.codes[1], 0xC7);
  for (size_t i = 2; i < 32; ++i) EXPECT_EQ(q.run.codes[i], 0x77) << i;
  for (size_t i = 32; i < 40; ++i) EXPECT_EQ(q.run.codes[i], 0x77) << i;
  EXPECT_EQ(q.x_hat[0], 2.0f);
  EXPECT_EQ(q.x_hat[1], -2.0f);
  EXPECT_EQ(q.x_hat[2], 0.44070982933044434f * 2.0f);
  EXPECT_EQ(q.x_hat[79], 0.0f);
}

// An odd element count pads the last byte's low nibble with 0; blocks of 32 take the smallest
// size bitsandbytes does.
TEST(Nf4VectorsTest, OddCountAndSmallestBlock) {
  const Quantized q = QuantizeFloats({1.0f, -1.0f, 0.5f}, {3}, Nf4(32));
  ASSERT_THAT(q.status, IsOk());
  EXPECT_THAT(q.run.codes, ::testing::ElementsAre(0xF0, 0xC0));
  EXPECT_THAT(q.run.scales, ::testing::ElementsAre(1.0f));
}

// The tree compares with a strict > against its fp32 literals: a value equal to a threshold
// takes the lower code. 0.8614784181118011f is 0x3F5C89D9 (the literal rounds straight to
// fp32; through a double it would be 0x3F5C89DA, one ulp higher).
TEST(Nf4VectorsTest, ThresholdsAreStrictAndFp32) {
  EXPECT_EQ(Nf4Encode(BitsToFloat(0x3F5C89D9u)), 14u);
  EXPECT_EQ(Nf4Encode(BitsToFloat(0x3F5C89DAu)), 15u);
  EXPECT_EQ(Nf4Encode(0.0f), 7u);
  EXPECT_EQ(Nf4Encode(-0.0f), 7u);
  EXPECT_EQ(Nf4Encode(1.0f), 15u);
  EXPECT_EQ(Nf4Encode(-1.0f), 0u);
  EXPECT_EQ(Nf4Encode(BitsToFloat(0x7FC00000u)), 0u);  // NaN falls through the tree
  for (uint32_t code = 0; code < 16; ++code) EXPECT_EQ(Nf4Encode(Nf4Value(code)), code) << code;
}

TEST(Nf4VectorsTest, Refusals) {
  QuantSpec tensor = Nf4();
  tensor.granularity = Granularity::kTensor;
  EXPECT_THAT(ResolveSpec(tensor, {4, 64}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ResolveSpec(Nf4(8192), {4, 64}), StatusIs(absl::StatusCode::kInvalidArgument));
  QuantSpec away = Nf4();
  away.rounding = Rounding::kNearestAway;
  EXPECT_THAT(ResolveSpec(away, {4, 64}),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("rounding")));
  QuantSpec int32_offset = Nf4();
  int32_offset.packing = Packing::kInt32Offset;
  EXPECT_THAT(ResolveSpec(int32_offset, {4, 64}), StatusIs(absl::StatusCode::kInvalidArgument));
  QuantSpec high_int4;
  high_int4.format = Format::kInt4;
  high_int4.packing = Packing::kHighNibbleFirst;
  EXPECT_THAT(ResolveSpec(high_int4, {4, 64}),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("nf4")));
  // NaN: refused by default, 0 (code 7) with nan_policy zero.
  const std::vector<float> with_nan = {1.0f, BitsToFloat(0x7FC00000u), 0.5f, -1.0f};
  EXPECT_THAT(QuantizeFloats(with_nan, {4}, Nf4(32)).status,
              StatusIs(absl::StatusCode::kInvalidArgument));
  QuantSpec zero = Nf4(32);
  zero.nan_policy = NanPolicy::kZero;
  const Quantized q = QuantizeFloats(with_nan, {4}, zero);
  ASSERT_THAT(q.status, IsOk());
  EXPECT_THAT(q.run.codes, ::testing::ElementsAre(0xF7, 0xC0));
}

}  // namespace
}  // namespace quantd::testing
