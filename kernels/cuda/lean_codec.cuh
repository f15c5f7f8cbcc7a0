// Internal to the CUDA backend: the arithmetic of element_lean.cu's kernels, one 8-element
// vector at a time, for INT8 / INT4 (any zero-point), FP8 E4M3 / E5M2, FP6 E3M2 / E2M3 and
// FP4 E2M1 with round-to-nearest-even and saturation.
//
// Same bits as codec.h, by these identities (the GPU tests check them over the whole matrix):
// - Division. Where s lies in [2^-60, 2^90], x is first clamped to ±s·2^20 (exact: a power-of-
//   two multiple). Every |x| above that quantizes like s·2^20 itself (IntQuantize clamps |v| to
//   2^20; the FP8 formats saturate far below), so clamping changes no code, and it keeps x·r
//   finite. Then Markstein's step q0 = x·r, q1 = q0 + (x − s·q0)·r (r = RN(1/s)) is RN(x/s)
//   whenever the remainder is exact, i.e. |x| ≥ 2^-102; below that |x/s| ≤ 2^-42, which every
//   lean format rounds to (signed) zero whatever the error. copysign restores the sign the step
//   loses on ±0 and tiny quotients. E2M1 and FP6 skip the clamp (LeanMagnitudeQuotient): there
//   an x·r that overflows (or an infinite x) makes q1 NaN, and both map a NaN quotient to their
//   saturated code, which is what a quotient that large takes.
// - Integers. round(v) clamped to [qmin, qmax] after adding zp equals round(clamp(v, qmin − zp,
//   qmax − zp)) + zp (rounding is monotone and the bounds are integers), and for |v| ≤ 2^22
//   RN(v + 1.5·2^23) holds round-half-even(v) in its low mantissa bits: one add instead of a
//   conversion, and the same sum minus 1.5·2^23 is q − zp as a float for x̂.
// - FP8. cvt.rn.satfinite is the engine's RNE + SATURATE (tests/gpu checks all 2^32 inputs);
//   decoding goes through f16, which holds every E4M3 and E5M2 value exactly.
// - FP4 E2M1 (MXFP4 and NVFP4; Hopper has no conversion for it). The magnitude code of
//   a = min(|v|, 6) (saturation) is RNE(f(a)) for f(a) = min(2a, a + 2, a/2 + 4): f maps E2M1's
//   magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 to their codes 0..7, and is affine with a power-of-two
//   slope between them, so its midpoints are the midpoints and an even code is an even integer.
//   RNE is monotone, so RNE(f(a)) = min(RNE(2a), RNE(a) + 2, RNE(a/2) + 4), and each term is
//   one fp32 operation: adding M = 1.5 · 2^23 (plus an even 2 or 4, which keeps the tie
//   parity) to 2a, a or a/2 rounds it to an integer half to even, which the sum's low bits
//   hold. The saturation rides on the third term: u = sat(3/4 − |v|/8) (one FFMA.SAT) is
//   3/4 − min(|v|, 6)/8 exactly wherever the third term can be the least (|v| ≥ 4: Sterbenz,
//   or saturated to 0), and RN(M + 7 − 4u) = M + RNE(min(|v|, 6)/2) + 4 there. Below 4, u may
//   round by 2^-25 at most (it lies in (1/4, 3/4]), but 7 − 4u ≥ |v|/2 + 4 − 2^-23 > |v| + 2
//   for |v| < 3, and u is exact from 3 on, so the third term never undercuts the second. The
//   first two terms exceed M + 7 from |v| ≥ 6 on (+Inf included), where the third is M + 7;
//   and a NaN v (an overflowing quotient, below) makes the first two NaN, which fminf skips,
//   and u 0 (.sat flushes NaN to +0): M + 7 again, saturation, as the quotient's true value
//   needs. So the code is the least of three FMA-pipe terms: two minima on the integer pipe,
//   which bounds the MX kernels. (Checked exhaustively against codec.h over every fp32 ≥ 0 and
//   NaN, as the earlier form was.) Eight terms pack by Horner's rule (w = 16w + bits(t): one IMAD
//   each), and one subtraction takes the magic's share out; the signs are x's own, ±0 included (the
//   engine's RNE + SATURATE), gathered four bits at a time by funnel shifts of x's top nibble
//   and masked once per vector. tests/gpu checks the codes against codec.h's.
// - FP6 E3M2 and E2M3 (MXFP6). Scaled by 2^-12, E3M2's grid (min normal 2^-2, subnormal step
//   2^-4, two mantissa bits) is E5M2's below 2^-7, field for field; scaled by 2^-6, E2M3's
//   (min normal 1, step 2^-3, three bits) is E4M3's below 2^-4. So the code of
//   min(|v|, max) (saturation) is the low 5 bits of the FP8 conversion of its scaled value
//   (exact: a power-of-two product, which only loses bits far below the smallest subnormal's
//   half), and the sign, bit 5, is x's own. Codes pack as a little-endian bit stream: 8
//   codes in 6 bytes.
// A vector holding a NaN, or a scale outside the range above, takes codec.h's general path.
#ifndef QUANTD_KERNELS_CUDA_LEAN_CODEC_CUH_
#define QUANTD_KERNELS_CUDA_LEAN_CODEC_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels.h"
#include "quantd/codec.h"

namespace quantd::cuda::lean {

constexpr int kVector = 8;  // elements per thread and iteration

enum class LeanFormat { kInt8, kInt4, kE4M3, kE5M2, kE2M1, kE3M2, kE2M3 };

template <LeanFormat kFormat>
struct Lean {
  static constexpr bool kInt = kFormat == LeanFormat::kInt8 || kFormat == LeanFormat::kInt4;
  static constexpr bool kFp6 = kFormat == LeanFormat::kE3M2 || kFormat == LeanFormat::kE2M3;
  static constexpr int kBits =
      kFormat == LeanFormat::kInt4 || kFormat == LeanFormat::kE2M1 ? 4 : (kFp6 ? 6 : 8);
  static constexpr ElementKind kKind = kInt ? ElementKind::kInt : ElementKind::kMinifloat;
};

constexpr float kRoundingMagic = 12582912.0f;  // 1.5·2^23
constexpr uint32_t kRoundingMagicBits = 0x4B400000u;

// What the elements of one scale group share.
struct LeanScale {
  float s = 1.0f;
  float reciprocal = 0.0f;
  float bound = 0.0f;  // s·2^20
  float lo = 0.0f;     // integers: qmin − zp and qmax − zp
  float hi = 0.0f;
  int32_t zp = 0;
  bool lean = false;  // s in [2^-60, 2^90]
  // s is a power of two (MX's E8M0 scales): x · RN(1/s) is already RN(x / s).
  bool power_of_two = false;
};

// RN(1/s), as LeanScale::reciprocal holds it.
__device__ __forceinline__ float LeanReciprocal(float s, bool power_of_two) {
  // 1/2^X is 2^-X: its exponent field is 254 minus s's (exact for s in [2^-126, 2^126]).
  return power_of_two ? __uint_as_float(0x7F000000u - __float_as_uint(s)) : __frcp_rn(s);
}

// The lean scale of s, whose LeanReciprocal the caller may already hold (NVFP4's table).
__device__ __forceinline__ LeanScale MakeLeanScale(const ElementCodec& codec, float s, int32_t zp,
                                                   bool power_of_two, float reciprocal) {
  LeanScale scale;
  scale.power_of_two = power_of_two;
  scale.s = s;
  scale.zp = zp;
  scale.lean = s >= 0x1p-60f && s <= 0x1p90f;  // false for NaN
  scale.reciprocal = reciprocal;
  scale.bound = s * 0x1p20f;
  scale.lo = static_cast<float>(codec.qmin - zp);
  scale.hi = static_cast<float>(codec.qmax - zp);
  return scale;
}

__device__ __forceinline__ LeanScale MakeLeanScale(const ElementCodec& codec, float s, int32_t zp,
                                                   bool power_of_two = false) {
  return MakeLeanScale(codec, s, zp, power_of_two, LeanReciprocal(s, power_of_two));
}

// The quotient x / s of a lean scale (see the file comment). kPowerOfTwo: s is a power of
// two (MX's E8M0 scales), so 1/s is exact and one rounding gives RN(x / s), signed zeros
// included; no clamp is needed either: an overflowing quotient is ±Inf both ways, which every
// lean format saturates as it saturates x / s. Otherwise the sign of a zero or tiny quotient
// may be lost, and callers that keep it take it from x.
template <bool kPowerOfTwo>
__device__ __forceinline__ float LeanQuotient(float x, const LeanScale& scale) {
  if constexpr (kPowerOfTwo) {
    return __fmul_rn(x, scale.reciprocal);
  } else {
    const float clamped = fminf(fmaxf(x, -scale.bound), scale.bound);
    const float q0 = __fmul_rn(clamped, scale.reciprocal);
    const float remainder = __fmaf_rn(-scale.s, q0, clamped);
    return __fmaf_rn(remainder, scale.reciprocal, q0);
  }
}

// |x| / s for the formats that take the sign from x (E2M1, FP6), or NaN where that quotient
// overflows: both saturate a NaN quotient (see the file comment), so the step needs no clamp,
// one FMNMX fewer per element where the scale is not a power of two (NVFP4). RN and the
// division step are symmetric in the sign.
template <bool kPowerOfTwo>
__device__ __forceinline__ float LeanMagnitudeQuotient(float x, const LeanScale& scale) {
  const float a = fabsf(x);
  if constexpr (kPowerOfTwo) {
    return __fmul_rn(a, scale.reciprocal);  // +Inf where it overflows, which saturates too
  } else {
    const float q0 = __fmul_rn(a, scale.reciprocal);
    const float remainder = __fmaf_rn(-scale.s, q0, a);  // -Inf (or NaN) when q0 is +Inf
    return __fmaf_rn(remainder, scale.reciprocal, q0);
  }
}

// A vector's codes as stored: 8-bit formats in .x (elements 0-3, the first in the low byte)
// and .y (4-7); 6-bit formats as a 48-bit little-endian stream, .x then the low 16 bits of .y;
// 4-bit formats in .x alone (element 0 in the low nibble).
using PackedVector = uint2;

// Two FP8 codes (E4M3 or E5M2; the low byte is the first) as two halves, by the hardware's
// exact conversion.
template <LeanFormat kFormat>
__device__ __forceinline__ __half2 DecodeFp8Pair(unsigned short pair) {
  uint32_t halves;
  if (kFormat == LeanFormat::kE4M3) {
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(halves) : "h"(pair));
  } else {
    asm("cvt.rn.f16x2.e5m2x2 %0, %1;" : "=r"(halves) : "h"(pair));
  }
  return *reinterpret_cast<const __half2*>(&halves);
}

// The FP8 codes (E4M3 or E5M2) of `first` (the low byte) and `second`, by the hardware's
// conversion: round to nearest even, saturating (the engine's RNE + SATURATE).
template <LeanFormat kFormat>
__device__ __forceinline__ unsigned short EncodeFp8Pair(float first, float second) {
  unsigned short pair;
  if (kFormat == LeanFormat::kE4M3) {
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(second), "f"(first));
  } else {
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(second), "f"(first));
  }
  return pair;
}

// The E4M3 code of v ≥ 0 (not NaN), rounded to nearest even and saturating: 0..0x7E.
__device__ __forceinline__ uint32_t E4M3Code(float v) {
  return EncodeFp8Pair<LeanFormat::kE4M3>(v, 0.0f);  // +0's code in the high byte
}

// M + the E2M1 magnitude code of v = |x| / s by RNE + SATURATE, and M + 7 (saturation) for a
// NaN v: an overflowing quotient (LeanMagnitudeQuotient); see the file comment.
__device__ __forceinline__ float E2M1MagnitudeTerm(float v) {
  const float a = fabsf(v);
  float u;  // 3/4 - min(a, 6)/8 where it matters; 0 for NaN
  asm("fma.rn.sat.f32 %0, %1, 0fBE000000, 0f3F400000;" : "=f"(u) : "f"(a));  // 3/4 - a/8
  const float t0 = __fmaf_rn(a, 2.0f, kRoundingMagic);                       // M + RNE(2a)
  const float t1 = __fadd_rn(a, kRoundingMagic + 2.0f);                      // M + RNE(a) + 2
  const float t2 = __fmaf_rn(u, -4.0f, kRoundingMagic + 7.0f);  // M + RNE(min(a, 6)/2) + 4
  return fminf(fminf(t0, t1), t2);  // fminf skips NaN: a NaN v gives M + 7
}

// Σ_j bits(M) · 16^j (mod 2^32): what packing 8 magnitude terms by Horner's rule adds.
constexpr uint32_t HornerOfMagic() {
  uint32_t sum = 0;
  for (int j = 0; j < 8; ++j) sum = sum * 16u + kRoundingMagicBits;
  return sum;
}
constexpr uint32_t kE2M1PackedMagic = HornerOfMagic();

__device__ __forceinline__ float DecodeE2M1(uint32_t code) {
  const uint32_t m = code & 7u;
  const float magnitude = m < 4u
                              ? static_cast<float>(m) * 0.5f
                              : (m < 6u ? static_cast<float>(m) - 2.0f : (m == 6u ? 4.0f : 6.0f));
  return (code & 8u) ? -magnitude : magnitude;
}

// Codes in the low bits of codes[j] (higher bits are ignored), packed as stored.
__device__ __forceinline__ uint32_t PackNibbles(const uint32_t codes[kVector]) {
  uint32_t word = 0;
#pragma unroll
  for (int j = 0; j < kVector; ++j) word |= (codes[j] & 0xFu) << (4 * j);
  return word;
}

__device__ __forceinline__ uint2 PackBytes(const uint32_t codes[kVector]) {
  // __byte_perm(a, b, 0x0040): byte 0 of a, then byte 0 of b; 0x5410: the low halves of both.
  const uint32_t w0 = __byte_perm(__byte_perm(codes[0], codes[1], 0x0040),
                                  __byte_perm(codes[2], codes[3], 0x0040), 0x5410);
  const uint32_t w1 = __byte_perm(__byte_perm(codes[4], codes[5], 0x0040),
                                  __byte_perm(codes[6], codes[7], 0x0040), 0x5410);
  return make_uint2(w0, w1);
}

// Codes in the low bits of codes[j], packed as stored.
template <LeanFormat kFormat>
__device__ __forceinline__ PackedVector PackCodes(const uint32_t codes[kVector]) {
  if constexpr (Lean<kFormat>::kBits == 8) {
    return PackBytes(codes);
  } else if constexpr (Lean<kFormat>::kBits == 4) {
    return make_uint2(PackNibbles(codes), 0u);
  } else {
    uint64_t stream = 0;  // element j at bits [6j, 6j + 6)
#pragma unroll
    for (int j = 0; j < kVector; ++j) stream |= static_cast<uint64_t>(codes[j] & 0x3Fu) << (6 * j);
    return make_uint2(static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32));
  }
}

// The codes of 8 non-NaN elements with a lean scale, packed as stored, and x̂ when asked.
template <LeanFormat kFormat, bool kPowerOfTwo, bool kDequantize>
__device__ __forceinline__ PackedVector LeanEncode(const float x[kVector], const LeanScale& scale,
                                                   float x_hat[kVector]) {
  if constexpr (kFormat == LeanFormat::kE2M1) {
    uint32_t terms = 0, signs = 0;
#pragma unroll
    for (int j = kVector - 1; j >= 0; --j) {
      const float t = E2M1MagnitudeTerm(LeanMagnitudeQuotient<kPowerOfTwo>(x[j], scale));
      terms = terms * 16u + __float_as_uint(t);
      // (signs << 4) | (bits(x) >> 28): x's sign lands on bit 3 of the new low nibble.
      signs = __funnelshift_l(__float_as_uint(x[j]), signs, 4);
      if (kDequantize) {
        const uint32_t code =
            (__float_as_uint(t) - kRoundingMagicBits) | (__float_as_uint(x[j]) >> 28 & 8u);
        x_hat[j] = __fmul_rn(scale.s, DecodeE2M1(code));
      }
    }
    return make_uint2((terms - kE2M1PackedMagic) | (signs & 0x88888888u), 0u);
  } else if constexpr (Lean<kFormat>::kFp6) {
    // E3M2 through E5M2 at 2^-12, E2M3 through E4M3 at 2^-6 (see the file comment).
    constexpr bool kE3M2 = kFormat == LeanFormat::kE3M2;
    constexpr float kMax = kE3M2 ? 28.0f : 7.5f;
    constexpr float kShift = kE3M2 ? 0x1p-12f : 0x1p-6f;
    uint32_t halves[2];  // elements 4h..4h+3: 6-bit codes at bits 0, 6, 12, 18
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      unsigned short pairs[2];  // 5-bit magnitude codes, one per byte
      uint32_t signs = 0;
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int j = 4 * h + 2 * k;
        const float a0 =
            __fmul_rn(fminf(LeanMagnitudeQuotient<kPowerOfTwo>(x[j], scale), kMax), kShift);
        const float a1 =
            __fmul_rn(fminf(LeanMagnitudeQuotient<kPowerOfTwo>(x[j + 1], scale), kMax), kShift);
        pairs[k] = EncodeFp8Pair < kE3M2 ? LeanFormat::kE5M2 : LeanFormat::kE4M3 > (a0, a1);
        if (kDequantize) {
          const __half2 d =
              DecodeFp8Pair < kE3M2 ? LeanFormat::kE5M2 : LeanFormat::kE4M3 > (pairs[k]);
          const float s0 = copysignf(scale.s, x[j]), s1 = copysignf(scale.s, x[j + 1]);
          x_hat[j] = __fmul_rn(s0, __fmul_rn(__low2float(d), 1.0f / kShift));
          x_hat[j + 1] = __fmul_rn(s1, __fmul_rn(__high2float(d), 1.0f / kShift));
        }
      }
#pragma unroll
      for (int j = 4 * h + 3; j >= 4 * h; --j) {
        // (signs << 6) | (bits(x) >> 26): x's sign lands on bit 5 of the new 6-bit field.
        signs = __funnelshift_l(__float_as_uint(x[j]), signs, 6);
      }
      // Bytes 0..3 hold the magnitudes; squeeze them to 6-bit fields in two steps.
      const uint32_t bytes = pairs[0] | static_cast<uint32_t>(pairs[1]) << 16;
      const uint32_t twelves = (bytes & 0x001F001Fu) | (bytes >> 2 & 0x07C007C0u);
      const uint32_t magnitudes = (twelves & 0xFFFu) | (twelves >> 4 & 0xFFF000u);
      halves[h] = magnitudes | (signs & 0x820820u);
    }
    return make_uint2(halves[0] | halves[1] << 24, halves[1] >> 8);
  } else if constexpr (Lean<kFormat>::kInt) {
    uint32_t codes[kVector];
#pragma unroll
    for (int j = 0; j < kVector; ++j) {
      const float v = fminf(fmaxf(LeanQuotient<kPowerOfTwo>(x[j], scale), scale.lo), scale.hi);
      const float t = __fadd_rn(v, kRoundingMagic);
      // The magic's low byte is 0: the code's low bits are those of bits(t) + zp.
      codes[j] = __float_as_uint(t) + static_cast<uint32_t>(scale.zp);
      if (kDequantize) x_hat[j] = __fmul_rn(scale.s, __fsub_rn(t, kRoundingMagic));
    }
    return PackCodes<kFormat>(codes);
  } else {
    unsigned short pairs[kVector / 2];
#pragma unroll
    for (int j = 0; j < kVector; j += 2) {
      float v0 = LeanQuotient<kPowerOfTwo>(x[j], scale);
      float v1 = LeanQuotient<kPowerOfTwo>(x[j + 1], scale);
      if (!kPowerOfTwo) {
        v0 = copysignf(v0, x[j]);
        v1 = copysignf(v1, x[j + 1]);
      }
      pairs[j / 2] = EncodeFp8Pair<kFormat>(v0, v1);
      if (kDequantize) {
        const __half2 h = DecodeFp8Pair<kFormat>(pairs[j / 2]);
        x_hat[j] = __fmul_rn(scale.s, __low2float(h));
        x_hat[j + 1] = __fmul_rn(scale.s, __high2float(h));
      }
    }
    return make_uint2(pairs[0] | static_cast<uint32_t>(pairs[1]) << 16,
                      pairs[2] | static_cast<uint32_t>(pairs[3]) << 16);
  }
}

// The general path for one vector: codec.h per element, exactly as element_fast.cu. (Inlined:
// as a call it would take its arrays through local memory on the fast path too.)
template <LeanFormat kFormat, bool kDequantize>
__device__ __forceinline__ void GeneralEncode(const ElementCodec& codec, const float x[kVector],
                                              float s, int32_t zp, uint32_t codes[kVector],
                                              float x_hat[kVector]) {
  constexpr ElementKind kKind = Lean<kFormat>::kKind;
  const float reciprocal = ScaleReciprocal(s);
#pragma unroll
  for (int j = 0; j < kVector; ++j) {
    codes[j] = QuantizeElementAs(kKind, Rounding::kNearestEven, codec, x[j], s, reciprocal, zp, 0u);
    if (kDequantize) x_hat[j] = DequantizeElementAs(kKind, codec, codes[j], s, zp);
  }
}

// Loads 8 elements as fp32 with the hardware's conversions (exact for every non-NaN value).
template <DType kDType>
__device__ __forceinline__ void LoadLean(const void* data, int64_t first, float x[kVector]) {
  if constexpr (kDType == DType::kF32) {
    const float4* v = reinterpret_cast<const float4*>(static_cast<const float*>(data) + first);
    const float4 a = v[0], b = v[1];
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(data) + first);
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if constexpr (kDType == DType::kF16) {
        const __half2 h = *reinterpret_cast<const __half2*>(&words[k]);
        x[2 * k] = __low2float(h);
        x[2 * k + 1] = __high2float(h);
      } else {
        x[2 * k] = __uint_as_float(words[k] << 16);
        x[2 * k + 1] = __uint_as_float(words[k] & 0xFFFF0000u);
      }
    }
  }
}

// Reloads F16 elements with tensor.h's conversion, which keeps NaN payloads (the hardware's
// canonicalizes them): the general path needs the exact NaN. F32 and BF16 loads were exact.
template <DType kDType>
__device__ __forceinline__ void ReloadExact(const void* data, int64_t first, float x[kVector]) {
  if constexpr (kDType == DType::kF16) {
    const uint16_t* h = static_cast<const uint16_t*>(data) + first;
#pragma unroll
    for (int j = 0; j < kVector; ++j) x[j] = HalfToFloat(h[j]);
  }
}

// One vector's codes, packed as stored (and x̂ when kDequantize), with scale `scale`: the lean
// arithmetic unless the vector holds a NaN or the scale is outside its range, then codec.h's.
// Flags NaNs when the request rejects them.
template <DType kDType, LeanFormat kFormat, bool kDequantize>
__device__ __forceinline__ PackedVector QuantizeVector(const ElementParams& p, int64_t first,
                                                       float x[kVector], const LeanScale& scale,
                                                       DeviceFlags* flags, float x_hat[kVector]) {
  // A NaN makes the vector's sum NaN. So does Inf - Inf, which then takes the general path
  // too (correct, only slower); the adds run on the FMA pipe, where the lean kernels have room,
  // instead of eight compares on the integer pipe, where they have none.
  float sum = x[0];
#pragma unroll
  for (int j = 1; j < kVector; ++j) sum = __fadd_rn(sum, x[j]);
  const bool nan = sum != sum;
  if (!nan && scale.lean) {
    return scale.power_of_two ? LeanEncode<kFormat, true, kDequantize>(x, scale, x_hat)
                              : LeanEncode<kFormat, false, kDequantize>(x, scale, x_hat);
  }
  ReloadExact<kDType>(p.input, first, x);
  if (nan && p.reject_nan) {
    for (int j = 0; j < kVector; ++j) {
      if (x[j] != x[j]) atomicMin(&flags->first_nan, static_cast<unsigned long long>(first + j));
    }
  }
  uint32_t codes[kVector];
  GeneralEncode<kFormat, kDequantize>(p.codec, x, scale.s, scale.zp, codes, x_hat);
  return PackCodes<kFormat>(codes);
}

// Stores `count` (1 or 2) vectors' codes as vectors v, v + 1 of a contiguous code array, in one
// store when count is 2 (v is then even); `code_xor` applies INT32_OFFSET's top-bit flip to a
// whole word.
template <LeanFormat kFormat>
__device__ __forceinline__ void StoreCodes(uint8_t* out, uint32_t v, const PackedVector* packed,
                                           int count, uint32_t code_xor) {
  if constexpr (Lean<kFormat>::kBits == 8) {
    if (count == 2) {
      reinterpret_cast<uint4*>(out)[v / 2] =
          make_uint4(packed[0].x ^ code_xor, packed[0].y ^ code_xor, packed[1].x ^ code_xor,
                     packed[1].y ^ code_xor);
    } else {
      reinterpret_cast<uint2*>(out)[v] = make_uint2(packed[0].x ^ code_xor, packed[0].y ^ code_xor);
    }
  } else if constexpr (Lean<kFormat>::kBits == 4) {
    if (count == 2) {
      reinterpret_cast<uint2*>(out)[v / 2] =
          make_uint2(packed[0].x ^ code_xor, packed[1].x ^ code_xor);
    } else {
      reinterpret_cast<uint32_t*>(out)[v] = packed[0].x ^ code_xor;
    }
  } else {
    // 6 bytes a vector (FP6 has no INT32_OFFSET packing, so code_xor is 0): a pair's 12 bytes
    // start on a 4-byte boundary, a lone vector's on a 2-byte one.
    if (count == 2) {
      uint32_t* words = reinterpret_cast<uint32_t*>(out + 6 * static_cast<int64_t>(v));
      words[0] = packed[0].x;
      words[1] = packed[0].y | packed[1].x << 16;
      words[2] = packed[1].x >> 16 | packed[1].y << 16;
    } else {
      uint16_t* halves = reinterpret_cast<uint16_t*>(out + 6 * static_cast<int64_t>(v));
      halves[0] = static_cast<uint16_t>(packed[0].x);
      halves[1] = static_cast<uint16_t>(packed[0].x >> 16);
      halves[2] = static_cast<uint16_t>(packed[0].y);
    }
  }
}

// ---- Dequantization. ----

// x̂ = s · decode(code) for 8 codes. Integers: PRMT places a code byte under the exponent bits
// of 1.5·2^23 (after one XOR per word turns signed codes into offset binary), so the float is
// 1.5·2^23 + 128 + q exactly and one subtraction leaves q − zp. FP8: the f16x2 conversion, then
// f16 → f32, both exact. A NaN code gives codec.h's canonical NaN.
template <LeanFormat kFormat, int kCount>
__device__ __forceinline__ void LeanDecode(uint64_t packed, float s, float bias, float y[kCount]) {
  if constexpr (kFormat == LeanFormat::kInt8) {
    const uint32_t words[2] = {static_cast<uint32_t>(packed), static_cast<uint32_t>(packed >> 32)};
#pragma unroll
    for (int j = 0; j < kCount; ++j) {
      // Selector: byte j%4 of the word in byte 0, then 0x00, 0x40, 0x4B from the magic's bytes.
      const float f =
          __uint_as_float(__byte_perm(words[j / 4], kRoundingMagicBits, (j % 4) | 0x7650));
      y[j] = __fmul_rn(s, __fsub_rn(f, bias));
    }
  } else if constexpr (kFormat == LeanFormat::kInt4) {
    const uint32_t word = static_cast<uint32_t>(packed);
#pragma unroll
    for (int j = 0; j < kCount; ++j) {
      const float f = __uint_as_float(kRoundingMagicBits | ((word >> (4 * j)) & 0xFu));
      y[j] = __fmul_rn(s, __fsub_rn(f, bias));
    }
  } else if constexpr (kFormat == LeanFormat::kE2M1) {
    const uint32_t word = static_cast<uint32_t>(packed);
#pragma unroll
    for (int j = 0; j < kCount; ++j) y[j] = __fmul_rn(s, DecodeE2M1(word >> (4 * j)));
  } else {
    const uint32_t words[2] = {static_cast<uint32_t>(packed), static_cast<uint32_t>(packed >> 32)};
#pragma unroll
    for (int j = 0; j < kCount; j += 2) {
      const __half2 h =
          DecodeFp8Pair<kFormat>(static_cast<unsigned short>(words[j / 4] >> (8 * (j % 4))));
      const float d0 = __low2float(h), d1 = __high2float(h);
      y[j] = d0 != d0 ? __uint_as_float(0x7FC00000u) : __fmul_rn(s, d0);
      y[j + 1] = d1 != d1 ? __uint_as_float(0x7FC00000u) : __fmul_rn(s, d1);
    }
  }
}

// Stores kCount (4 or 8) dequantized values; NaN (only ever the canonical one) as tensor.h
// converts it.
template <DType kOut, int kCount>
__device__ __forceinline__ void StoreDecoded(void* data, int64_t first, const float y[kCount]) {
  if constexpr (kOut == DType::kF32) {
    float4* v = reinterpret_cast<float4*>(static_cast<float*>(data) + first);
#pragma unroll
    for (int k = 0; k < kCount / 4; ++k) {
      v[k] = make_float4(y[4 * k], y[4 * k + 1], y[4 * k + 2], y[4 * k + 3]);
    }
  } else {
    uint32_t words[kCount / 2];
#pragma unroll
    for (int k = 0; k < kCount / 2; ++k) {
      uint32_t h[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const float value = y[2 * k + i];
        if (kOut == DType::kF16) {
          h[i] = value != value ? FloatToHalf(value) : __half_as_ushort(__float2half_rn(value));
        } else {
          h[i] = value != value ? FloatToBF16(value)
                                : __bfloat16_as_ushort(__float2bfloat16_rn(value));
        }
      }
      words[k] = h[0] | (h[1] << 16);
    }
    uint16_t* out = static_cast<uint16_t*>(data) + first;
    if constexpr (kCount == 8) {
      *reinterpret_cast<uint4*>(out) = make_uint4(words[0], words[1], words[2], words[3]);
    } else {
      *reinterpret_cast<uint2*>(out) = make_uint2(words[0], words[1]);
    }
  }
}

__device__ __forceinline__ void StoreAs(void* data, DType dtype, int64_t first,
                                        const float y[kVector]) {
  switch (dtype) {
    case DType::kF16:
      StoreDecoded<DType::kF16, kVector>(data, first, y);
      break;
    case DType::kBF16:
      StoreDecoded<DType::kBF16, kVector>(data, first, y);
      break;
    default:
      StoreDecoded<DType::kF32, kVector>(data, first, y);
      break;
  }
}

}  // namespace quantd::cuda::lean

#endif  // QUANTD_KERNELS_CUDA_LEAN_CODEC_CUH_
