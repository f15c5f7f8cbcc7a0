// Division by a run-time constant without a divide instruction: n / d as a multiply-high, an add
// and a shift (Granlund & Montgomery, "Division by invariant integers using multiplication",
// 1994; the form CUTLASS's FastDivmod uses). Kernels divide element indices by row lengths and
// group sizes once per vector; a 32-bit hardware-less division costs ~20 instructions there,
// this costs 3.
//
//   const FastDivmod per_row(cols);                 // on the host, d in [1, 2^31)
//   uint32_t row = per_row.Div(i), col = i - row * cols;   // in a kernel, i < 2^31
#ifndef QUANTD_FAST_DIVMOD_H_
#define QUANTD_FAST_DIVMOD_H_

#include <cstdint>

#include "quantd/hd.h"

namespace quantd {

struct FastDivmod {
  uint32_t divisor = 1;
  uint32_t multiplier = 0;
  uint32_t shift = 0;

  FastDivmod() = default;
  // d in [1, 2^31). With shift = ceil(log2 d) and m = floor(2^32 (2^shift - d) / d) + 1,
  // floor((mulhi(n, m) + n) / 2^shift) = floor(n / d) for every n < 2^31.
  explicit FastDivmod(uint32_t d) : divisor(d) {
    while ((uint64_t{1} << shift) < d) ++shift;
    multiplier =
        static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }

  // n / divisor for n < 2^31.
  QUANTD_HD uint32_t Div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t high = __umulhi(n, multiplier);
#else
    const uint32_t high = static_cast<uint32_t>((uint64_t{n} * multiplier) >> 32);
#endif
    return (high + n) >> shift;  // high <= n < 2^31: the sum fits in 32 bits
  }
};

}  // namespace quantd

#endif  // QUANTD_FAST_DIVMOD_H_
