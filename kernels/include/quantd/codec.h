// Per-element quantization arithmetic, shared verbatim by the CPU and CUDA backends.
//
// This header is the bit-level contract of FORMATS.md in code: the one minifloat engine
// (E4M3, E5M2 and every eXmY), integer rounding, the rounding modes and the Philox stream that
// stochastic rounding draws from. It has no dependencies beyond <cmath> so that nvcc compiles
// the same functions for the device.
//
//   ElementCodec codec = MakeElementCodec(Traits(Format::kFp8E4M3), rounding, overflow,
//                                         /*nan_to_zero=*/false);
//   uint32_t code = QuantizeElement(codec, x, scale, /*zero_point=*/0, /*random_bits=*/0);
//   float x_hat = DequantizeElement(codec, code, scale, /*zero_point=*/0);
//
// Everything is IEEE fp32 with round-to-nearest; x / s is a true division.
#ifndef QUANTD_CODEC_H_
#define QUANTD_CODEC_H_

#include <cmath>
#include <cstdint>

#include "quantd/format.h"
#include "quantd/hd.h"
#include "quantd/tensor.h"

namespace quantd {

// Mirror quantd.v1 enums value for value (kUnspecified resolves to the first real value).
enum class Rounding : int32_t {
  kUnspecified = 0,
  kNearestEven = 1,
  kStochastic = 2,
  kNearestAway = 3,
};
enum class Overflow : int32_t {
  kUnspecified = 0,
  kSaturate = 1,
  kNonfinite = 2,
};
enum class NanPolicy : int32_t {
  kUnspecified = 0,
  kReject = 1,     // INVALID_ARGUMENT (the default for formats without NaN)
  kZero = 2,       // NaN quantizes as 0
  kPropagate = 3,  // NaN becomes the format's NaN (the default for formats that have one)
};
enum class Packing : int32_t {
  kUnspecified = 0,
  kBitstream = 1,
  kInt32Offset = 2,
  kHighNibbleFirst = 3,  // bitsandbytes: 4-bit codes, element 0 in the high nibble (NF4)
};
// How an MX block's shared exponent follows from its amax (FORMATS.md "Block formats").
enum class ScaleRounding : int32_t {
  kUnspecified = 0,
  kFloor = 1,    // the OCP MX spec: floor(log2(amax)) - emax
  kRceil = 2,    // NVIDIA cuBLAS / TransformerEngine: ceil(log2(amax / max element))
  kEven = 3,     // torchao: amax rounded to the element's mantissa bits first
  kNearest = 4,  // fake_quant_ops' "carry" (the `c` of e<E>m<M>k<K>b<B>c): log2(amax) rounded
};

// ---- Philox4x32-10 (Salmon et al., SC'11; the generator of Random123 and cuRAND). ----

namespace codec_internal {
QUANTD_HD uint32_t MulHi(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}
}  // namespace codec_internal

// Ten rounds of Philox4x32 over `counter` with `key`, in place.
QUANTD_HD void Philox4x32_10(uint32_t counter[4], uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0 = codec_internal::MulHi(kMul0, counter[0]), lo0 = kMul0 * counter[0];
    uint32_t hi1 = codec_internal::MulHi(kMul1, counter[2]), lo1 = kMul1 * counter[2];
    uint32_t next[4] = {hi1 ^ counter[1] ^ key0, lo1, hi0 ^ counter[3] ^ key1, lo0};
    for (int i = 0; i < 4; ++i) counter[i] = next[i];
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
}

// The 32 random bits stochastic rounding uses for flat element `index` under `seed`: word
// (index mod 4) of Philox4x32-10 with counter (index / 4, 0) as a 128-bit little-endian
// integer and key (seed low 32 bits, seed high 32 bits), the cuRAND layout.
// The four words of one counter: the random bits of elements 4·block .. 4·block + 3.
QUANTD_HD void StochasticBlock(uint64_t seed, uint64_t block, uint32_t words[4]) {
  words[0] = static_cast<uint32_t>(block);
  words[1] = static_cast<uint32_t>(block >> 32);
  words[2] = 0u;
  words[3] = 0u;
  Philox4x32_10(words, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

QUANTD_HD uint32_t StochasticBits(uint64_t seed, uint64_t index) {
  uint32_t words[4];
  StochasticBlock(seed, index >> 2, words);
  return words[index & 3];
}

// A uniform draw in [0, 1) with 24 bits: (bits >> 8) · 2^-24, exact in fp32.
QUANTD_HD float UniformFromBits(uint32_t bits) {
  return static_cast<float>(bits >> 8) * 5.9604644775390625e-8f;
}

// Rounds a finite n >= 0 to an integer-valued float. Stochastic rounding goes up when the
// uniform draw is below the fractional part (both exact in fp32), so E[result] = n to 2^-24.
QUANTD_HD float RoundMagnitude(float n, Rounding rounding, uint32_t random_bits) {
#if defined(__CUDA_ARCH__)
  // The GPU rounds half to even in one instruction (cvt.rni): the same IEEE operation as the
  // portable code below, so the same bits, at a tenth of the cost.
  if (rounding == Rounding::kNearestEven) return rintf(n);
#endif
  if (!(n < 8388608.0f)) return n;  // 2^23 and up are integers already
  // Truncation is floor for n >= 0; unlike floorf it needs no libm call without SSE4.1.
  const float floor_n = static_cast<float>(static_cast<int32_t>(n));
  float fraction = n - floor_n;  // exact
  switch (rounding) {
    case Rounding::kStochastic:
      return UniformFromBits(random_bits) < fraction ? floor_n + 1.0f : floor_n;
    case Rounding::kNearestAway:
      return fraction >= 0.5f ? floor_n + 1.0f : floor_n;
    default:  // nearest, ties to even
      if (fraction > 0.5f) return floor_n + 1.0f;
      if (fraction < 0.5f) return floor_n;
      // A fraction of exactly 0.5 implies floor_n < 2^23, so the integer cast is exact.
      return (static_cast<uint32_t>(floor_n) & 1u) ? floor_n + 1.0f : floor_n;
  }
}

// ---- The minifloat engine. ----

// 2^k for k in [-126, 127], built from its bits.
QUANTD_HD float Pow2(int k) { return BitsToFloat(static_cast<uint32_t>(k + 127) << 23); }

// x · 2^k for |k| <= 252, exact whenever the result is representable: the two factors keep
// every intermediate normal. (ldexpf does the same, but as a library call.)
QUANTD_HD float ScaleByPow2(float x, int k) {
  const int half = k / 2;
  return x * Pow2(half) * Pow2(k - half);
}

QUANTD_HD uint32_t MinifloatSignBit(const MinifloatParams& p) {
  return 1u << (p.exp_bits + p.man_bits);
}

// The quiet NaN of the format (magnitude bits): S.1111.111 for E4M3, S.11111.10 for E5M2.
QUANTD_HD uint32_t MinifloatNanMagnitude(const MinifloatParams& p) {
  uint32_t all_ones = MinifloatSignBit(p) - 1u;
  if (p.nan_encoding == NanEncoding::kAllOnes) return all_ones;
  return (((1u << p.exp_bits) - 1u) << p.man_bits) | (1u << (p.man_bits - 1));
}

QUANTD_HD uint32_t MinifloatInfMagnitude(const MinifloatParams& p) {
  return ((1u << p.exp_bits) - 1u) << p.man_bits;
}

// Encodes fp32 `v` (already divided by its scale) as a minifloat code of 1 + E + M bits.
//
// The quantum of v's binade (clamped below at the subnormal binade) is 2^(e - M); v / quantum
// is exact in fp32 and is rounded to an integer r by `rounding`. The code is then
// ((e + bias - 1) << M) + r, which also covers subnormals (e = emin, r < 2^M) and a carry into
// the next binade (r = 2^(M+1)). A code above max_code overflows: SATURATE clamps to the max
// finite value (CUDA satfinite, TE, vLLM); NONFINITE gives Inf where the format has one and NaN
// otherwise (ml_dtypes). ±Inf inputs overflow the same way. NaN keeps its sign (ml_dtypes and
// PyTorch); zero keeps its sign.
QUANTD_HD uint32_t MinifloatEncodePortable(const MinifloatParams& p, float v, Rounding rounding,
                                           uint32_t random_bits, Overflow overflow) {
  const uint32_t bits = FloatToBits(v);
  const uint32_t sign = (bits >> 31) ? MinifloatSignBit(p) : 0u;
  const uint32_t magnitude_bits = bits & 0x7FFFFFFFu;
  if (magnitude_bits > 0x7F800000u) {
    // A format without NaN has no code for it: ±0 (requests reject NaN or map it to 0 first).
    return sign | (p.nan_encoding == NanEncoding::kNone ? 0u : MinifloatNanMagnitude(p));
  }
  const int emin = 1 - p.bias;
  const int emax = static_cast<int>(p.max_code >> p.man_bits) - p.bias;
  bool overflowed = magnitude_bits == 0x7F800000u;
  uint32_t magnitude = 0;
  if (!overflowed) {
    const int biased = static_cast<int>(magnitude_bits >> 23);
    int e = biased == 0 ? emin : biased - 127;  // fp32 subnormals lie below every emin
    if (e < emin) e = emin;
    if (e > emax) {
      overflowed = true;
    } else {
      float n = ScaleByPow2(BitsToFloat(magnitude_bits), p.man_bits - e);  // exact, < 2^(M+1)
      uint32_t r = static_cast<uint32_t>(RoundMagnitude(n, rounding, random_bits));
      magnitude = (static_cast<uint32_t>(e + p.bias - 1) << p.man_bits) + r;
      overflowed = magnitude > p.max_code;
    }
  }
  if (overflowed) {
    if (overflow == Overflow::kNonfinite && p.nan_encoding != NanEncoding::kNone) {
      return sign | (p.nan_encoding == NanEncoding::kIeee ? MinifloatInfMagnitude(p)
                                                          : MinifloatNanMagnitude(p));
    }
    magnitude = p.max_code;
  }
  return sign | magnitude;
}

// MinifloatEncode: the portable engine above, except where a GPU converts the same way in
// hardware. Hopper and Ada's cvt.rn.satfinite.{e4m3,e5m2}x2.f32 round to nearest even and
// saturate (±Inf included) exactly as the engine does with RNE + SATURATE for every non-NaN
// input; NaN never reaches it (the engine's own NaN rule answers first). tests/gpu compares
// the two on all 2^32 float bit patterns.
QUANTD_HD uint32_t MinifloatEncode(const MinifloatParams& p, float v, Rounding rounding,
                                   uint32_t random_bits, Overflow overflow) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  if (rounding == Rounding::kNearestEven && overflow != Overflow::kNonfinite &&
      (FloatToBits(v) & 0x7FFFFFFFu) <= 0x7F800000u) {
    const bool e4m3 = p.exp_bits == 4 && p.man_bits == 3 && p.bias == 7 && p.max_code == 0x7E &&
                      p.nan_encoding == NanEncoding::kAllOnes;
    const bool e5m2 = p.exp_bits == 5 && p.man_bits == 2 && p.bias == 15 && p.max_code == 0x7B &&
                      p.nan_encoding == NanEncoding::kIeee;
    unsigned short pair;
    if (e4m3) {
      asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(0.0f), "f"(v));
      return pair & 0xFFu;
    }
    if (e5m2) {
      asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(0.0f), "f"(v));
      return pair & 0xFFu;
    }
  }
#endif
  return MinifloatEncodePortable(p, v, rounding, random_bits, overflow);
}

// Decodes a minifloat code (exact in fp32 for every format with E <= 8, M <= 23).
QUANTD_HD float MinifloatDecode(const MinifloatParams& p, uint32_t code) {
  const uint32_t sign_bit = MinifloatSignBit(p);
  const uint32_t magnitude = code & (sign_bit - 1u);
  const uint32_t exponent_field = magnitude >> p.man_bits;
  const uint32_t mantissa = magnitude & ((1u << p.man_bits) - 1u);
  const uint32_t all_ones_exponent = (1u << p.exp_bits) - 1u;
  float value;
  if (p.nan_encoding == NanEncoding::kAllOnes && magnitude == sign_bit - 1u) {
    value = BitsToFloat(0x7FC00000u);
  } else if (p.nan_encoding == NanEncoding::kIeee && exponent_field == all_ones_exponent) {
    value = BitsToFloat(mantissa ? 0x7FC00000u : 0x7F800000u);
  } else if (exponent_field == 0) {
    value = ScaleByPow2(static_cast<float>(mantissa), 1 - p.bias - p.man_bits);
  } else {
    value = ScaleByPow2(static_cast<float>(mantissa | (1u << p.man_bits)),
                        static_cast<int>(exponent_field) - p.bias - p.man_bits);
  }
  return (code & sign_bit) ? -value : value;
}

// ---- HiF8 (Ascend HiFloat8, arXiv 2409.16626; en_dtypes hifloat.h). ----
//
// Tapered precision: after the sign bit, a prefix ("dot") field says how wide the exponent is,
// and the mantissa gets what is left. The exponent is stored sign-magnitude, its sign taking
// the place of the magnitude's leading 1:
//   0000 MMM    denormal 2^(M - 23) (e = -22..-16; M = 0 is zero)
//   0001 MMM    e = 0,            3 mantissa bits
//   001 S MMM   |e| = 1,          3 mantissa bits
//   01 S E MMM  |e| = 2 + E,      3 mantissa bits
//   10 S EE MM  |e| = 4 + EE,     2 mantissa bits
//   11 S EEE M  |e| = 8 + EEE,    1 mantissa bit
// 0x80 (a "-0") is the NaN; 0x6F / 0xEF (the slot of 1.5 · 2^15) are ±Inf; the largest finite
// value is 0x6E = 2^15 = 32768; zero is 0x00 only.

inline constexpr uint32_t kHif8Nan = 0x80u;
inline constexpr uint32_t kHif8Inf = 0x6Fu;  // magnitude bits
inline constexpr uint32_t kHif8Max = 0x6Eu;

// Mantissa bits of the binade 2^e: 3 for |e| <= 3, 2 up to 7, 1 up to 15, 0 for denormals.
QUANTD_HD int Hif8MantissaBits(int e) {
  const int a = e < 0 ? -e : e;
  if (e < -15) return 0;
  return a <= 3 ? 3 : (a <= 7 ? 2 : 1);
}

// The magnitude code of 2^e · (1 + f / 2^m), m = Hif8MantissaBits(e), e in [-22, 15].
QUANTD_HD uint32_t Hif8MagnitudeCode(int e, uint32_t f) {
  if (e < -15) return static_cast<uint32_t>(e + 23);
  const uint32_t negative = e < 0 ? 1u : 0u;
  const uint32_t a = static_cast<uint32_t>(e < 0 ? -e : e);
  if (a == 0) return 0x08u | f;
  if (a == 1) return 0x10u | (negative << 3) | f;
  if (a <= 3) return 0x20u | (negative << 4) | ((a & 1u) << 3) | f;
  if (a <= 7) return 0x40u | (negative << 4) | ((a & 3u) << 2) | f;
  return 0x60u | (negative << 4) | ((a & 7u) << 1) | f;
}

// Encodes fp32 `v` (already divided by its scale). The magnitude is rounded in its binade's
// quantum (as the minifloat engine does; the binade below 2^-22 rounds in 2^-22's, so that
// 2^-23 is the tie between 0 and 2^-22), with a carry into the next binade. Beyond 32768:
// SATURATE gives ±32768; NONFINITE gives ±Inf from 40960 (the tie with the virtual 49152) up,
// as does ±Inf. NaN gives 0x80, and zero (either sign) 0x00.
QUANTD_HD uint32_t Hif8Encode(float v, Rounding rounding, uint32_t random_bits, Overflow overflow) {
  const uint32_t bits = FloatToBits(v);
  const uint32_t magnitude_bits = bits & 0x7FFFFFFFu;
  if (magnitude_bits > 0x7F800000u) return kHif8Nan;
  const uint32_t sign = (bits >> 31) << 7;
  bool overflowed = magnitude_bits == 0x7F800000u;
  uint32_t magnitude = 0;
  if (!overflowed) {
    int e = static_cast<int>(magnitude_bits >> 23) - 127;
    if (e < -22) e = -22;
    if (e > 15) {
      overflowed = true;
    } else {
      int m = Hif8MantissaBits(e);
      const float n = ScaleByPow2(BitsToFloat(magnitude_bits), m - e);  // exact, < 2^(m+1)
      uint32_t q = static_cast<uint32_t>(RoundMagnitude(n, rounding, random_bits));
      if (q == 0) return 0u;  // one zero, no sign
      if (q == (2u << m)) {   // the carry into the next binade
        ++e;
        m = Hif8MantissaBits(e);
        q = 1u << m;
      }
      if (e > 15) {
        overflowed = true;
      } else {
        magnitude = Hif8MagnitudeCode(e, q - (1u << m));
        overflowed = magnitude == kHif8Inf;
      }
    }
  }
  if (overflowed) magnitude = overflow == Overflow::kNonfinite ? kHif8Inf : kHif8Max;
  return sign | magnitude;
}

// The value of a HiF8 code (exact in fp32).
QUANTD_HD float Hif8Decode(uint32_t code) {
  if (code == kHif8Nan) return BitsToFloat(0x7FC00000u);
  const uint32_t magnitude = code & 0x7Fu;
  float value;
  if (magnitude == kHif8Inf) {
    value = BitsToFloat(0x7F800000u);
  } else if (magnitude < 0x08u) {
    value = magnitude == 0 ? 0.0f : Pow2(static_cast<int>(magnitude) - 23);
  } else {
    int a, m;
    if (magnitude < 0x10u) {
      a = 0;
      m = 3;
    } else if (magnitude < 0x20u) {
      a = 1;
      m = 3;
    } else if (magnitude < 0x40u) {
      a = 2 + static_cast<int>((magnitude >> 3) & 1u);
      m = 3;
    } else if (magnitude < 0x60u) {
      a = 4 + static_cast<int>((magnitude >> 2) & 3u);
      m = 2;
    } else {
      a = 8 + static_cast<int>((magnitude >> 1) & 7u);
      m = 1;
    }
    // The exponent's sign: the bit after the prefix (none for e = 0).
    const int sign_shift = m + (a >= 8 ? 3 : (a >= 4 ? 2 : (a >= 2 ? 1 : 0)));
    const int e = (a != 0 && ((magnitude >> sign_shift) & 1u)) ? -a : a;
    const uint32_t f = magnitude & ((1u << m) - 1u);
    value = ScaleByPow2(static_cast<float>((1u << m) | f), e - m);
  }
  return (code & 0x80u) ? -value : value;
}

// ---- NF4 (bitsandbytes): the index of one of 16 quantiles of N(0, 1), scaled to [-1, 1]. ----

// The NF4 values (bitsandbytes' nf4 table; code 7 is 0).
QUANTD_HD float Nf4Value(uint32_t code) {
  switch (code & 15u) {
    case 0:
      return -1.0f;
    case 1:
      return -0.6961928009986877f;
    case 2:
      return -0.5250730514526367f;
    case 3:
      return -0.39491748809814453f;
    case 4:
      return -0.28444138169288635f;
    case 5:
      return -0.18477343022823334f;
    case 6:
      return -0.09105003625154495f;
    case 7:
      return 0.0f;
    case 8:
      return 0.07958029955625534f;
    case 9:
      return 0.16093020141124725f;
    case 10:
      return 0.24611230194568634f;
    case 11:
      return 0.33791524171829224f;
    case 12:
      return 0.44070982933044434f;
    case 13:
      return 0.5626170039176941f;
    case 14:
      return 0.7229568362236023f;
    default:
      return 1.0f;
  }
}

// The code of a normalized value n = x · (1 / absmax): bitsandbytes' dQuantizeNF4 decision tree
// verbatim (csrc/kernels.cu; the thresholds are the midpoints of neighbouring values, as fp32
// literals, compared with a strict >). NaN falls through every test to code 0.
QUANTD_HD uint32_t Nf4Encode(float x) {
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 0b1111u : 0b1110u;
      return x > 0.5016634166240692f ? 0b1101u : 0b1100u;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 0b1011u : 0b1010u;
    return x > 0.1202552504837513f ? 0b1001u : 0b1000u;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 0b0111u : 0b0110u;
    return x > -0.23460740596055984f ? 0b0101u : 0b0100u;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 0b0011u : 0b0010u;
  return x > -0.8480964004993439f ? 0b0001u : 0b0000u;
}

inline constexpr uint32_t kNf4Zero = 7u;  // the code of 0.0, and of every element of a zero block

// ---- Integer elements. ----

// q = clamp(round(v) + zero_point, qmin, qmax) for v = x / s. Rounding acts on |v| and the sign
// is put back (the same as RNE and ties-away on v itself; stochastic rounding is thereby
// symmetric about zero). |v| is clamped to 2^20 first so that ±Inf and huge values saturate.
QUANTD_HD int32_t IntQuantize(float v, int32_t zero_point, int32_t qmin, int32_t qmax,
                              Rounding rounding, uint32_t random_bits) {
#if defined(__CUDA_ARCH__)
  if (rounding == Rounding::kNearestEven) {
    // rne(-v) = -rne(v), so rounding v directly (one cvt.rni) equals the magnitude form below.
    int32_t q = __float2int_rn(fminf(fmaxf(v, -1048576.0f), 1048576.0f)) + zero_point;
    return q < qmin ? qmin : (q > qmax ? qmax : q);
  }
#endif
  float magnitude = fminf(fabsf(v), 1048576.0f);
  int32_t q = static_cast<int32_t>(RoundMagnitude(magnitude, rounding, random_bits));
  if (v < 0.0f) q = -q;
  q += zero_point;
  return q < qmin ? qmin : (q > qmax ? qmax : q);
}

// ---- Scales. ----

// What a group's scale depends on besides its data, as a plain struct kernels take by value.
struct ScaleRule {
  bool asymmetric = false;
  float divisor = 1.0f;  // symmetric: s = amax / divisor (qmax, or the max finite minifloat)
  int32_t qmin = 0;      // asymmetric: the code range
  int32_t qmax = 0;
  // MX formats: how the shared exponent is found (kUnspecified: not an MX format), and the
  // element's MxParams.
  ScaleRounding mx_rounding = ScaleRounding::kUnspecified;
  int mx_emax = 0;
  int mx_mbits = 0;
  int mx_implicit_exponent = 0;
  // NF4: the scale is the block's absmax itself, 0 for an all-zero block (bitsandbytes stores
  // it so); every other format floors a zero scale at 1.
  bool zero_scale_ok = false;
};

// `scale_rounding` applies to MX formats (kUnspecified there: FLOOR) and is ignored otherwise.
inline ScaleRule MakeScaleRule(const FormatTraits& traits, bool asymmetric,
                               ScaleRounding scale_rounding = ScaleRounding::kUnspecified) {
  ScaleRule rule;
  rule.asymmetric = asymmetric;
  rule.divisor = traits.scale_divisor;
  rule.qmin = traits.qmin;
  rule.qmax = traits.qmax;
  rule.zero_scale_ok = traits.kind == ElementKind::kNf4;
  if (traits.scale_kind == ScaleKind::kE8M0) {
    rule.mx_rounding =
        scale_rounding == ScaleRounding::kUnspecified ? ScaleRounding::kFloor : scale_rounding;
    rule.mx_emax = traits.mx.emax;
    rule.mx_mbits = traits.mx.mbits;
    rule.mx_implicit_exponent = traits.mx.implicit_exponent;
  }
  return rule;
}

inline constexpr int kMxMinExponent = -127;  // E8M0 code 0x00
inline constexpr int kMxMaxExponent = 127;   // E8M0 code 0xFE (0xFF is NaN)

// Bits needed for v (0 for 0).
QUANTD_HD int BitLength(uint32_t v) {
  int n = 0;
  while (v != 0) {
    ++n;
    v >>= 1;
  }
  return n;
}

// An MX block's shared exponent X from its amax (>= 0, finite), by FORMATS.md's three rules,
// clamped to [-127, 127]. An all-zero block (amax 0) gets -127, the scale code 0x00.
//  FLOOR: floor(log2(amax)) - emax, the exponent field of amax (a subnormal amax lies below
//         2^-126, where X is clamped anyway).
//  RCEIL: ceil(log2(fp32(amax / max element))): the exponent field, plus one when the mantissa
//         is not zero; for a subnormal quotient m · 2^-149, bit_length(m - 1) - 149.
//  EVEN:  the exponent field of bits(amax) + 2^(22 - mbits) (amax rounded half up to the
//         element's mantissa bits), minus emax, as torchao computes it.
//  NEAREST: floor(log2(amax) + 1/2) - emax (fake_quant_ops' do_carry): the exponent field, plus
//         one when amax's significand is at least √2, i.e. its mantissa field is 0x3504F4 (the
//         least fp32 significand above the irrational √2) or more; a subnormal amax lies below
//         2^-126, where X is clamped anyway. fake_quant_ops evaluates torch.log2(amax + 9.6e-7)
//         in fp32 instead, which can differ in the last fp32 step below √2 · 2^k.
QUANTD_HD int MxSharedExponent(const ScaleRule& rule, float amax) {
  const uint32_t bits = FloatToBits(amax) & 0x7FFFFFFFu;
  int x = kMxMinExponent;
  if (rule.mx_rounding == ScaleRounding::kNearest) {
    const uint32_t field = bits >> 23;
    if (field != 0) {
      x = static_cast<int>(field) - 127 + ((bits & 0x7FFFFFu) >= 0x3504F4u ? 1 : 0) - rule.mx_emax;
    }
  } else if (rule.mx_rounding == ScaleRounding::kRceil) {
    const uint32_t q = FloatToBits(BitsToFloat(bits) / rule.divisor);
    const uint32_t field = q >> 23, mantissa = q & 0x7FFFFFu;
    if (field != 0) {
      x = static_cast<int>(field) - 127 + (mantissa != 0 ? 1 : 0);
    } else if (mantissa != 0) {
      x = BitLength(mantissa - 1u) - 149;
    }
  } else {
    const uint32_t rounded =
        rule.mx_rounding == ScaleRounding::kEven ? bits + (1u << (22 - rule.mx_mbits)) : bits;
    const uint32_t field = (rounded >> 23) & 0xFFu;
    if (field != 0) x = static_cast<int>(field) - 127 - rule.mx_emax;
  }
  return x < kMxMinExponent ? kMxMinExponent : (x > kMxMaxExponent ? kMxMaxExponent : x);
}

// The fp32 scale an MX block's elements are divided by: 2^(X - implicit exponent), exact
// (2^-133 at the least: a subnormal, which fp32 holds exactly).
QUANTD_HD float MxScaleOfExponent(const ScaleRule& rule, int x) {
  return ScaleByPow2(1.0f, x - rule.mx_implicit_exponent);
}

// The E8M0 code of an MX scale kept as fp32 (MxScaleOfExponent), and back. 0xFF is E8M0's
// NaN and gives a NaN scale.
QUANTD_HD uint32_t E8M0CodeOfScale(float scale, int implicit_exponent) {
  const uint32_t bits = FloatToBits(scale) & 0x7FFFFFFFu;
  const int field = static_cast<int>(bits >> 23);
  const int log2 = field != 0 ? field - 127 : BitLength(bits & 0x7FFFFFu) - 1 - 149;
  return static_cast<uint32_t>(log2 + implicit_exponent + 127);
}
QUANTD_HD float ScaleOfE8M0Code(uint32_t code, int implicit_exponent) {
  if (code >= 0xFFu) return BitsToFloat(0x7FC00000u);
  return ScaleByPow2(1.0f, static_cast<int>(code) - 127 - implicit_exponent);
}

// ---- NVFP4 (FORMATS.md "Block formats": TransformerEngine's core_nvfp4.cuh recipe). ----
//
// Two levels: a per-tensor fp32 global (encode) scale S_enc, and per block of 16 an E4M3 block
// scale s_b. The backends keep s_b as its value (exact in fp32), report S_enc as
// `global_scale`, and divide the elements by d_b = fp32(decode(s_b) / S_enc).

// OCP E4M3 (the fp8-e4m3 row of the traits table), as a function so device code can use it.
QUANTD_HD MinifloatParams E4M3Params() { return {4, 3, 7, 0x7E, NanEncoding::kAllOnes}; }

// S_enc = fp32(448 · 6 / amax) over the tensor's finite elements; 1 when amax is 0. A
// quotient that overflows (amax below ~7.9e-36) becomes FLT_MAX: FORMATS.md is silent there,
// and TransformerEngine's compute_global_encode_scaling_factor_FP4 clamps it so.
QUANTD_HD float Nvfp4GlobalScale(float tensor_amax) {
  if (tensor_amax == 0.0f) return 1.0f;
  const float s = 2688.0f / tensor_amax;
  return s > 3.40282346638528859812e+38f ? 3.40282346638528859812e+38f : s;
}

// The block scale's value decode(s_b), s_b = e4m3(fp32(amax_b · fp32(S_enc / 6))), rounded to
// nearest even and saturating (a product that overflows to +Inf saturates to 448).
QUANTD_HD float Nvfp4BlockScale(float block_amax, float global_scale) {
  const float v = block_amax * (global_scale / 6.0f);
  const MinifloatParams e4m3 = E4M3Params();
  return MinifloatDecode(e4m3,
                         MinifloatEncode(e4m3, v, Rounding::kNearestEven, 0u, Overflow::kSaturate));
}

// d_b = fp32(decode(s_b) / S_enc): what a block's elements are divided by (and x̂ multiplied
// by). It is 0 when s_b is, and the block's codes are then 0 (QuantizeElementAs).
QUANTD_HD float Nvfp4ElementScale(float block_scale, float global_scale) {
  return block_scale / global_scale;
}

// The scale (and, asymmetric, the zero-point) of a group whose finite elements span [lo, hi]
// (lo > hi: no finite element, treated as all zero), after multiplying the range by `clip`.
// FORMATS.md's formulas in fp32: s = fp32(fp32(amax · clip) / divisor); asymmetric
// mx = max(hi, 0)·clip, mn = min(lo, 0)·clip, s = fp32(fp32(mx - mn) / (qmax - qmin)),
// zp = clamp(rne(fp32(qmin - fp32(mn / s)))). A zero scale (all-zero group, or a quotient that
// underflows) becomes 1: a scale is never 0. Returns false, and leaves the outputs alone, when
// an asymmetric range overflows fp32.
QUANTD_HD bool ScaleFromRange(const ScaleRule& rule, float lo, float hi, float clip, float* scale,
                              int32_t* zero_point) {
  if (!(lo <= hi)) lo = hi = 0.0f;
  if (rule.mx_rounding != ScaleRounding::kUnspecified) {
    // MX: a power of two from the block's amax (clip is 1: ResolveSpec refuses another).
    *scale = MxScaleOfExponent(rule, MxSharedExponent(rule, fmaxf(hi, -lo)));
    return true;
  }
  if (!rule.asymmetric) {
    const float amax = fmaxf(hi, -lo) * clip;
    const float s = amax / rule.divisor;
    *scale = s == 0.0f && !rule.zero_scale_ok ? 1.0f : s;
    return true;
  }
  // max >= 0 >= min, so that 0 is exactly representable (zero padding stays zero).
  const float mx = fmaxf(hi, 0.0f) * clip;
  const float mn = fminf(lo, 0.0f) * clip;
  const float range = mx - mn;
  if ((FloatToBits(range) & 0x7F800000u) == 0x7F800000u) return false;
  float s = range / static_cast<float>(rule.qmax - rule.qmin);
  if (s == 0.0f) s = 1.0f;
  *scale = s;
  const float shifted = static_cast<float>(rule.qmin) - mn / s;
  *zero_point = IntQuantize(shifted, 0, rule.qmin, rule.qmax, Rounding::kNearestEven, 0u);
  return true;
}

// ---- Division by a scale. ----

// RN(1/s) when s lies where DivideByScale's fast step is exact ([2^-90, 2^90]), else 0.
QUANTD_HD float ScaleReciprocal(float s) {
  return (s >= 0x1p-90f && s <= 0x1p90f) ? 1.0f / s : 0.0f;
}

// x / s, correctly rounded (FORMATS.md: a true division). Given reciprocal = ScaleReciprocal(s)
// (0: none), the GPU takes Markstein's division step instead of its division routine:
// q0 = RN(x·r) is within one ulp of x/s because r = RN(1/s); the remainder x - s·q0 is exact in
// one FMA; and RN(q0 + remainder·r) is then RN(x/s) (Markstein 1990; Muller et al., Handbook of
// Floating-Point Arithmetic, the FMA-based division theorem), as long as nothing over- or
// underflows, which the range checks guarantee; anything outside them divides.
// tests/gpu checks the step against the division on 2^30 random pairs.
QUANTD_HD float DivideByScale(float x, float s, float reciprocal) {
#if defined(__CUDA_ARCH__)
  const float ax = fabsf(x);
  if (reciprocal != 0.0f && ax >= 0x1p-90f && ax <= 0x1p90f) {
    const float q0 = __fmul_rn(x, reciprocal);
    const float remainder = __fmaf_rn(-s, q0, x);
    const float q1 = __fmaf_rn(remainder, reciprocal, q0);
    const float aq = fabsf(q1);
    if (aq >= 0x1p-100f && aq <= 0x1p100f) return q1;
  }
#else
  (void)reciprocal;
#endif
  return x / s;
}

// ---- One element of any format. ----

// Everything the per-element functions need, as a plain struct that kernels take by value.
struct ElementCodec {
  ElementKind kind = ElementKind::kNone;
  int bits = 0;
  int32_t qmin = 0;
  int32_t qmax = 0;
  MinifloatParams minifloat;
  Rounding rounding = Rounding::kNearestEven;
  Overflow overflow = Overflow::kSaturate;
  bool nan_to_zero = false;  // NaN inputs quantize as 0 (formats without NaN, or on request)
};

inline ElementCodec MakeElementCodec(const FormatTraits& traits, Rounding rounding,
                                     Overflow overflow, bool nan_to_zero) {
  ElementCodec codec;
  codec.kind = traits.kind;
  codec.bits = traits.bits;
  codec.qmin = traits.qmin;
  codec.qmax = traits.qmax;
  codec.minifloat = traits.minifloat;
  codec.rounding = rounding;
  codec.overflow = overflow;
  codec.nan_to_zero = nan_to_zero;
  return codec;
}

// QuantizeElement with the element kind and rounding mode given separately: kernels pass them as
// compile-time constants, and once inlined the branches of the other kinds and modes fold away.
// Everyone else calls QuantizeElement, which reads them from the codec.
// `reciprocal` is ScaleReciprocal(s), or 0 to divide plainly (the result is the same).
QUANTD_HD uint32_t QuantizeElementAs(ElementKind kind, Rounding rounding, const ElementCodec& codec,
                                     float x, float s, float reciprocal, int32_t zero_point,
                                     uint32_t random_bits) {
  const bool is_minifloat = kind == ElementKind::kMinifloat;
  // Zero scales: NF4's all-zero blocks (code 7, FORMATS.md) and NVFP4's block scales that round
  // to 0 (codes 0).
  if (s == 0.0f) return kind == ElementKind::kNf4 ? kNf4Zero : 0u;
  if (x != x) {
    // A NaN that got this far in a format without NaN (its request was not rejected:
    // nan_policy ZERO) quantizes as 0, as it does on request in any format.
    const bool has_nan = kind == ElementKind::kHif8 ||
                         (is_minifloat && codec.minifloat.nan_encoding != NanEncoding::kNone);
    if (codec.nan_to_zero || !has_nan) {
      x = 0.0f;
    } else if (kind == ElementKind::kHif8) {
      return kHif8Nan;
    } else {
      // Encoded from x itself: x / s would drop the NaN's sign on GPUs, which return the
      // canonical NaN from arithmetic on a NaN where x86 keeps the operand's payload.
      return MinifloatEncode(codec.minifloat, x, rounding, random_bits, codec.overflow);
    }
  }
  if (kind == ElementKind::kNf4) {
    // bitsandbytes multiplies by the block's reciprocal, fp32(1 / absmax): the one place the
    // contract has a reciprocal. `reciprocal` is that value whenever it is not 0.
    return Nf4Encode(x * (reciprocal != 0.0f ? reciprocal : 1.0f / s));
  }
  const float v = DivideByScale(x, s, reciprocal);  // s > 0 and finite: NaN only if x is
  if (is_minifloat) {
    return MinifloatEncode(codec.minifloat, v, rounding, random_bits, codec.overflow);
  }
  if (kind == ElementKind::kHif8) return Hif8Encode(v, rounding, random_bits, codec.overflow);
  const uint32_t mask = (codec.bits >= 32) ? 0xFFFFFFFFu : ((1u << codec.bits) - 1u);
  const int32_t q = IntQuantize(v, zero_point, codec.qmin, codec.qmax, rounding, random_bits);
  return static_cast<uint32_t>(q) & mask;
}

// Quantizes input x with dequantization scale s (zero_point: asymmetric integers, else 0).
// Returns the code in the low `bits` bits (two's complement for signed integers).
// `random_bits` is StochasticBits(seed, flat index) under stochastic rounding, else unused.
QUANTD_HD uint32_t QuantizeElement(const ElementCodec& codec, float x, float s, int32_t zero_point,
                                   uint32_t random_bits) {
  return QuantizeElementAs(codec.kind, codec.rounding, codec, x, s, /*reciprocal=*/0.0f, zero_point,
                           random_bits);
}

// Value of an element code before scaling: the integer (sign-extended) or the minifloat.
QUANTD_HD float DecodeElementAs(ElementKind kind, const ElementCodec& codec, uint32_t code,
                                int32_t zero_point) {
  if (kind == ElementKind::kMinifloat) return MinifloatDecode(codec.minifloat, code);
  if (kind == ElementKind::kHif8) return Hif8Decode(code);
  if (kind == ElementKind::kNf4) return Nf4Value(code);
  int32_t q = static_cast<int32_t>(code);
  if (codec.qmin < 0 && codec.bits < 32) {
    const uint32_t sign_bit = 1u << (codec.bits - 1);
    q = static_cast<int32_t>((code ^ sign_bit)) - static_cast<int32_t>(sign_bit);
  }
  return static_cast<float>(q - zero_point);  // exact: |q - zp| < 2^9
}

QUANTD_HD float DecodeElement(const ElementCodec& codec, uint32_t code, int32_t zero_point) {
  return DecodeElementAs(codec.kind, codec, code, zero_point);
}

// x̂ = fp32(s · decode(code)). A NaN code gives the one canonical NaN (0x7FC00000): what
// s · NaN returns differs between x86 (the operand's payload and sign) and GPUs (canonical).
QUANTD_HD float DequantizeElementAs(ElementKind kind, const ElementCodec& codec, uint32_t code,
                                    float s, int32_t zero_point) {
  const float decoded = DecodeElementAs(kind, codec, code, zero_point);
  const float x_hat = s * decoded;
  // NaN codes, and 0 · Inf where a double-quantized NF4 absmax overflowed on reconstruction:
  // every NaN is the canonical one, since what a product makes of NaN differs by machine.
  return x_hat != x_hat ? BitsToFloat(0x7FC00000u) : x_hat;
}

QUANTD_HD float DequantizeElement(const ElementCodec& codec, uint32_t code, float s,
                                  int32_t zero_point) {
  return DequantizeElementAs(codec.kind, codec, code, s, zero_point);
}

}  // namespace quantd

#endif  // QUANTD_CODEC_H_
