// FlatQuant int4 (FORMATS.md "Block formats"; ruikangliu/FlatQuant): each row x of the
// [tokens, hidden] view is seen as an [n1, n2] matrix X (row-major, n1 · n2 = hidden) and
// transformed to Y = P1ᵀ · (X · P2) before per-token symmetric INT4 quantization. P1 is n1 × n1
// and P2 is n2 × n2, given by the caller, or identities of get_decompose_dim(hidden).
//
// The order of the arithmetic is part of the contract so that every backend gets the same bits:
// FlatQuant's kronecker_matmul multiplies by P2 first, then by P1ᵀ; each entry is a sum in
// fp32, starting from +0, adding one rounded product at a time in ascending index order (no
// FMA):
//   T[i][j] = Σ_l X[i][l] · P2[l][j]       (l = 0 .. n2-1)
//   Y[i][j] = Σ_k P1[k][i] · T[k][j]       (k = 0 .. n1-1)
// (torch.matmul's own order is unspecified: FlatQuant's fp32 results can differ from these in
// the last bits.)
#ifndef QUANTD_FLATQUANT_H_
#define QUANTD_FLATQUANT_H_

#include <cmath>
#include <cstdint>
#include <utility>

#include "quantd/hd.h"

namespace quantd {

// The largest side of a transform matrix: P2 of 4096 × 4096 is 64 MiB of F32, and each
// element costs n1 + n2 products. Real hidden sizes split far below it (4096 = 64 · 64,
// 14336 = 112 · 128, 28672 = 128 · 224); a prime hidden n would need n × n.
inline constexpr int64_t kMaxTransformSide = 4096;

// floor(√n) for n >= 0.
inline int64_t IntegerSqrt(int64_t n) {
  auto r = static_cast<int64_t>(std::sqrt(static_cast<double>(n)));
  while (r > 0 && r * r > n) --r;
  while ((r + 1) * (r + 1) <= n) ++r;
  return r;
}

// FlatQuant's get_decompose_dim(n): a = ceil(√n), grown until a² - n is a square b²; returns
// (a - b, a + b), whose product is n. {0, 0} when there is none with a + b <= max_side: n ≡ 2
// (mod 4) has none at all (n = (a - b)(a + b) needs two factors of the same parity; FlatQuant's
// own loop never returns for it), and a + b >= a bounds the search.
inline std::pair<int64_t, int64_t> DecomposeDim(int64_t n, int64_t max_side = kMaxTransformSide) {
  if (n < 0 || n % 4 == 2) return {0, 0};
  int64_t a = IntegerSqrt(n);
  if (a * a < n) ++a;
  for (; a <= max_side; ++a) {
    const int64_t d = a * a - n;
    const int64_t b = IntegerSqrt(d);
    if (b * b == d)
      return a + b <= max_side ? std::pair<int64_t, int64_t>{a - b, a + b}
                               : std::pair<int64_t, int64_t>{0, 0};
  }
  return {0, 0};
}

// The side of a square matrix of `values` entries (a perfect square, as ResolveSpec checks).
inline int64_t MatrixSide(size_t values) { return IntegerSqrt(static_cast<int64_t>(values)); }

// T[i][j] of one row (see the file comment): `x` is the row, `right` P2 (n2 × n2, row-major).
QUANTD_HD float KroneckerRightEntry(const float* x, const float* right, int64_t n2, int64_t i,
                                    int64_t j) {
  float sum = 0.0f;
  for (int64_t l = 0; l < n2; ++l) {
    const float product = x[i * n2 + l] * right[l * n2 + j];
    sum = sum + product;
  }
  return sum;
}

// Y[i][j] from the row's T (n1 × n2, row-major) and P1 (n1 × n1, row-major).
QUANTD_HD float KroneckerLeftEntry(const float* t, const float* left, int64_t n1, int64_t n2,
                                   int64_t i, int64_t j) {
  float sum = 0.0f;
  for (int64_t k = 0; k < n1; ++k) {
    const float product = left[k * n1 + i] * t[k * n2 + j];
    sum = sum + product;
  }
  return sum;
}

}  // namespace quantd

#endif  // QUANTD_FLATQUANT_H_
