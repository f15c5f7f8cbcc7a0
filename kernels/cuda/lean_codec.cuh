// Internal to the CUDA backend: the arithmetic of element_lean.cu's kernels, one 8-element
// vector at a time, for INT8 / INT4 (any zero-point), FP8 E4M3 / E5M2 and FP4 E2M1 with
// round-to-nearest-even and saturation.
//
// Same bits as codec.h, by these identities (the GPU tests check them over the whole matrix):
// - Division. Where s lies in [2^-60, 2^90], x is first clamped to ±s·2^20 (exact: a power-of-
//   two multiple). Every |x| above that quantizes like s·2^20 itself (IntQuantize clamps |v| to
//   2^20; the FP8 formats saturate far below), so clamping changes no code, and it keeps x·r
//   finite. Then Markstein's step q0 = x·r, q1 = q0 + (x − s·q0)·r (r = RN(1/s)) is RN(x/s)
//   whenever the remainder is exact, i.e. |x| ≥ 2^-102; below that |x/s| ≤ 2^-42, which every
//   lean format rounds to (signed) zero whatever the error. copysign restores the sign the step
//   loses on ±0 and tiny quotients.
// - Integers. round(v) clamped to [qmin, qmax] after adding zp equals round(clamp(v, qmin − zp,
//   qmax − zp)) + zp (rounding is monotone and the bounds are integers), and for |v| ≤ 2^22
//   RN(v + 1.5·2^23) holds round-half-even(v) in its low mantissa bits: one add instead of a
//   conversion, and the same sum minus 1.5·2^23 is q − zp as a float for x̂.
// - FP8. cvt.rn.satfinite is the engine's RNE + SATURATE (tests/gpu checks all 2^32 inputs);
//   decoding goes through f16, which holds every E4M3 and E5M2 value exactly.
// - FP4 E2M1 (MXFP4; Hopper has no conversion for it). The magnitude code of a = min(|v|, 6)
//   (saturation) is RNE(f(a)) for f(a) = min(2a, a + 2, a/2 + 4): f maps E2M1's magnitudes
//   0, 0.5, 1, 1.5, 2, 3, 4, 6 to their codes 0..7, and is affine with a power-of-two slope
//   between them, so its midpoints are the midpoints and an even code is an even integer.
//   RNE is monotone, so RNE(f(a)) = min(RNE(2a), RNE(a) + 2, RNE(a/2) + 4), and each term is
//   one fp32 operation: adding M = 1.5 · 2^23 (plus 2 or 4, exact there) to 2a, a or a/2
//   rounds it to an integer half to even, which the sum's low bits hold. Three FMA-pipe
//   operations and two minima instead of compares on the integer pipe, which bounds the MX
//   kernels. The sign is x's own, ±0 included: the engine's RNE + SATURATE exactly (tests/gpu
//   checks the codes against codec.h's).
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

enum class LeanFormat { kInt8, kInt4, kE4M3, kE5M2, kE2M1 };

template <LeanFormat kFormat>
struct Lean {
  static constexpr bool kInt = kFormat == LeanFormat::kInt8 || kFormat == LeanFormat::kInt4;
  static constexpr int kBits = kFormat == LeanFormat::kInt4 || kFormat == LeanFormat::kE2M1 ? 4 : 8;
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

__device__ __forceinline__ LeanScale MakeLeanScale(const ElementCodec& codec, float s, int32_t zp,
                                                   bool power_of_two = false) {
  LeanScale scale;
  scale.power_of_two = power_of_two;
  scale.s = s;
  scale.zp = zp;
  scale.lean = s >= 0x1p-60f && s <= 0x1p90f;  // false for NaN
  // 1/2^X is 2^-X: its exponent field is 254 minus s's (exact for s in [2^-126, 2^126]).
  scale.reciprocal =
      power_of_two ? __uint_as_float(0x7F000000u - __float_as_uint(s)) : __frcp_rn(s);
  scale.bound = s * 0x1p20f;
  scale.lo = static_cast<float>(codec.qmin - zp);
  scale.hi = static_cast<float>(codec.qmax - zp);
  return scale;
}

// The quotient x / s of a lean scale (see the file comment).
__device__ __forceinline__ float LeanQuotient(float x, const LeanScale& scale) {
  // 1/s is exact for a power of two in the lean range, so one rounding gives RN(x / s), and
  // no clamp is needed: an overflowing quotient is ±Inf both ways, which every lean format
  // saturates as it saturates x / s.
  if (scale.power_of_two) return __fmul_rn(x, scale.reciprocal);
  const float clamped = fminf(fmaxf(x, -scale.bound), scale.bound);
  const float q0 = __fmul_rn(clamped, scale.reciprocal);
  const float remainder = __fmaf_rn(-scale.s, q0, clamped);
  return __fmaf_rn(remainder, scale.reciprocal, q0);
}

// Codes of 8 non-NaN elements with a lean scale, in the low bits of codes[j] (higher bits are
// garbage for the integers: packing keeps only the low ones), and x̂ when asked.
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

// The E2M1 code of v = x / s (not NaN) by RNE + SATURATE, with the sign of x (which v has too,
// but a division step may lose on ±0); see the file comment. Its value: DecodeE2M1.
__device__ __forceinline__ uint32_t EncodeE2M1(float v, float x) {
  const float a = fminf(fabsf(v), 6.0f);
  const float t0 = __fmaf_rn(a, 2.0f, kRoundingMagic);         // M + RNE(2a)
  const float t1 = __fadd_rn(a, kRoundingMagic + 2.0f);        // M + RNE(a) + 2
  const float t2 = __fmaf_rn(a, 0.5f, kRoundingMagic + 4.0f);  // M + RNE(a/2) + 4
  const uint32_t magnitude = __float_as_uint(fminf(fminf(t0, t1), t2)) - kRoundingMagicBits;
  return (__float_as_uint(x) >> 28 & 8u) | magnitude;
}
__device__ __forceinline__ float DecodeE2M1(uint32_t code) {
  const uint32_t m = code & 7u;
  const float magnitude = m < 4u
                              ? static_cast<float>(m) * 0.5f
                              : (m < 6u ? static_cast<float>(m) - 2.0f : (m == 6u ? 4.0f : 6.0f));
  return (code & 8u) ? -magnitude : magnitude;
}

template <LeanFormat kFormat, bool kDequantize>
__device__ __forceinline__ void LeanEncode(const float x[kVector], const LeanScale& scale,
                                           uint32_t codes[kVector], float x_hat[kVector]) {
  if constexpr (kFormat == LeanFormat::kE2M1) {
#pragma unroll
    for (int j = 0; j < kVector; ++j) {
      codes[j] = EncodeE2M1(LeanQuotient(x[j], scale), x[j]);
      if (kDequantize) x_hat[j] = __fmul_rn(scale.s, DecodeE2M1(codes[j]));
    }
  } else if constexpr (Lean<kFormat>::kInt) {
#pragma unroll
    for (int j = 0; j < kVector; ++j) {
      const float v = fminf(fmaxf(LeanQuotient(x[j], scale), scale.lo), scale.hi);
      const float t = __fadd_rn(v, kRoundingMagic);
      codes[j] = __float_as_uint(t) - kRoundingMagicBits + static_cast<uint32_t>(scale.zp);
      if (kDequantize) x_hat[j] = __fmul_rn(scale.s, __fsub_rn(t, kRoundingMagic));
    }
  } else {
#pragma unroll
    for (int j = 0; j < kVector; j += 2) {
      const float v0 = copysignf(LeanQuotient(x[j], scale), x[j]);
      const float v1 = copysignf(LeanQuotient(x[j + 1], scale), x[j + 1]);
      unsigned short pair;
      if (kFormat == LeanFormat::kE4M3) {
        asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(v1), "f"(v0));
      } else {
        asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(v1), "f"(v0));
      }
      codes[j] = pair & 0xFFu;
      codes[j + 1] = pair >> 8;
      if (kDequantize) {
        const __half2 h = DecodeFp8Pair<kFormat>(pair);
        x_hat[j] = __fmul_rn(scale.s, __low2float(h));
        x_hat[j + 1] = __fmul_rn(scale.s, __high2float(h));
      }
    }
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

// One vector's codes (and x̂ when kDequantize) with scale `scale`: the lean arithmetic unless
// the vector holds a NaN or the scale is outside its range, then codec.h's. Flags NaNs when the
// request rejects them.
template <DType kDType, LeanFormat kFormat, bool kDequantize>
__device__ __forceinline__ void QuantizeVector(const ElementParams& p, int64_t first,
                                               float x[kVector], const LeanScale& scale,
                                               DeviceFlags* flags, uint32_t codes[kVector],
                                               float x_hat[kVector]) {
  // A NaN makes the vector's sum NaN. So does Inf - Inf, which then takes the general path
  // too (correct, only slower); the adds run on the FMA pipe, where the lean kernels have room,
  // instead of eight compares on the integer pipe, where they have none.
  float sum = x[0];
#pragma unroll
  for (int j = 1; j < kVector; ++j) sum = __fadd_rn(sum, x[j]);
  const bool nan = sum != sum;
  if (!nan && scale.lean) {
    LeanEncode<kFormat, kDequantize>(x, scale, codes, x_hat);
    return;
  }
  ReloadExact<kDType>(p.input, first, x);
  if (nan && p.reject_nan) {
    for (int j = 0; j < kVector; ++j) {
      if (x[j] != x[j]) atomicMin(&flags->first_nan, static_cast<unsigned long long>(first + j));
    }
  }
  GeneralEncode<kFormat, kDequantize>(p.codec, x, scale.s, scale.zp, codes, x_hat);
}

// Stores one vector's codes as vector v of a contiguous code array; `code_xor` applies
// INT32_OFFSET's top-bit flip to a whole word.
template <LeanFormat kFormat>
__device__ __forceinline__ void StoreCodes(uint8_t* out, uint32_t v, const uint32_t codes[kVector],
                                           uint32_t code_xor) {
  if constexpr (Lean<kFormat>::kBits == 8) {
    const uint2 packed = PackBytes(codes);
    reinterpret_cast<uint2*>(out)[v] = make_uint2(packed.x ^ code_xor, packed.y ^ code_xor);
  } else {
    reinterpret_cast<uint32_t*>(out)[v] = PackNibbles(codes) ^ code_xor;
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
