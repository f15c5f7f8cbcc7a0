// FastDivmod against the divide instruction: every small divisor, the powers of two and their
// neighbours, and random divisors, each on the dividends where an off-by-one would show
// (multiples of d and their neighbours, the top of the range) plus random ones.
#include "quantd/fast_divmod.h"

#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace quantd::testing {
namespace {

constexpr uint32_t kLimit = uint32_t{1} << 31;  // dividends and divisors stay below 2^31

void CheckDivisor(uint32_t d, std::mt19937& rng) {
  const FastDivmod fast(d);
  std::vector<uint32_t> dividends = {0, 1, d - 1, d, d + 1, kLimit - 1, kLimit - 2, kLimit - d};
  for (uint32_t q : {uint32_t{1}, uint32_t{2}, uint32_t{1000}, (kLimit - 1) / d}) {
    const uint64_t m = uint64_t{q} * d;
    for (int64_t delta = -1; delta <= 1; ++delta) {
      const int64_t n = static_cast<int64_t>(m) + delta;
      if (n >= 0 && n < kLimit) dividends.push_back(static_cast<uint32_t>(n));
    }
  }
  std::uniform_int_distribution<uint32_t> any(0, kLimit - 1);
  for (int i = 0; i < 64; ++i) dividends.push_back(any(rng));
  for (uint32_t n : dividends) {
    if (n >= kLimit) continue;
    ASSERT_EQ(fast.Div(n), n / d) << n << " / " << d;
  }
}

TEST(FastDivmodTest, MatchesDivisionForSmallDivisors) {
  std::mt19937 rng(1);
  for (uint32_t d = 1; d <= 4096; ++d) CheckDivisor(d, rng);
}

TEST(FastDivmodTest, MatchesDivisionAroundPowersOfTwo) {
  std::mt19937 rng(2);
  for (int k = 1; k < 31; ++k) {
    const uint32_t p = uint32_t{1} << k;
    for (uint32_t d : {p - 1, p, p + 1}) {
      if (d < kLimit) CheckDivisor(d, rng);
    }
  }
}

TEST(FastDivmodTest, MatchesDivisionForRandomDivisors) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<uint32_t> divisor(1, kLimit - 1);
  for (int i = 0; i < 20000; ++i) CheckDivisor(divisor(rng), rng);
}

}  // namespace
}  // namespace quantd::testing
