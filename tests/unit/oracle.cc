// The independent oracle (see oracle.h). Written from FORMATS.md; every formula below quotes the
// line of the document it implements. Must be compiled with -ffp-contract=off.
#include "oracle.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>

#include "absl/strings/str_cat.h"

namespace quantd::oracle {
namespace {

// The value magnitude code `c` would have if no code were special.
double RawMagnitude(const Minifloat& f, uint32_t c) {
  const uint32_t e = c >> f.man_bits;
  const uint32_t m = c & ((1u << f.man_bits) - 1u);
  if (e == 0) return std::ldexp(static_cast<double>(m), 1 - f.bias - f.man_bits);
  return std::ldexp(static_cast<double>((1u << f.man_bits) + m),
                    static_cast<int>(e) - f.bias - f.man_bits);
}

uint32_t SignBit(const Minifloat& f) { return 1u << (f.exp_bits + f.man_bits); }

}  // namespace

uint32_t MaxFiniteCode(const Minifloat& f) {
  const uint32_t all = (1u << (f.exp_bits + f.man_bits)) - 1u;
  switch (f.specials) {
    case Specials::kFiniteOnly:
      return all;
    case Specials::kNanAllOnes:
      return all - 1u;
    case Specials::kIeee:
      return (((1u << f.exp_bits) - 1u) << f.man_bits) - 1u;
  }
  return all;
}

uint32_t NanCode(const Minifloat& f) {
  switch (f.specials) {
    case Specials::kNanAllOnes:
      return (1u << (f.exp_bits + f.man_bits)) - 1u;
    case Specials::kIeee:  // quiet NaN: top mantissa bit set (E5M2 0x7E, F16 0x7E00)
      return (((1u << f.exp_bits) - 1u) << f.man_bits) | (1u << (f.man_bits - 1));
    default:
      return 0;
  }
}

uint32_t InfCode(const Minifloat& f) {
  if (f.specials != Specials::kIeee) return 0;
  return ((1u << f.exp_bits) - 1u) << f.man_bits;
}

double MinifloatValue(const Minifloat& f, uint32_t code) {
  const bool negative = (code & SignBit(f)) != 0;
  const uint32_t c = code & (SignBit(f) - 1u);
  double v;
  if (f.specials == Specials::kIeee && (c >> f.man_bits) == (1u << f.exp_bits) - 1u) {
    v = (c & ((1u << f.man_bits) - 1u)) == 0 ? std::numeric_limits<double>::infinity()
                                             : std::numeric_limits<double>::quiet_NaN();
  } else if (f.specials == Specials::kNanAllOnes && c == SignBit(f) - 1u) {
    v = std::numeric_limits<double>::quiet_NaN();
  } else {
    v = RawMagnitude(f, c);
  }
  return std::copysign(v, negative ? -1.0 : 1.0);
}

const std::vector<double>& FiniteMagnitudes(const Minifloat& f) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, int, int>, std::vector<double>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_tuple(f.exp_bits, f.man_bits, f.bias, static_cast<int>(f.specials));
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  std::vector<double> values;
  for (uint32_t c = 0; c <= MaxFiniteCode(f); ++c) values.push_back(MinifloatValue(f, c));
  return cache.emplace(key, std::move(values)).first->second;
}

double MaxFinite(const Minifloat& f) { return FiniteMagnitudes(f).back(); }

uint32_t EncodeMinifloat(const Minifloat& f, float v, Rounding rounding, uint32_t random_bits,
                         Overflow overflow) {
  // "NaN keeps its sign; zero keeps its sign": the sign bit is the input's, always.
  const uint32_t sign = std::signbit(v) ? SignBit(f) : 0u;
  if (std::isnan(v)) return sign | NanCode(f);
  const uint32_t max_code = MaxFiniteCode(f);
  auto overflowed = [&]() -> uint32_t {
    // "Overflow: saturate to ±max finite by default. Option NONFINITE: overflow becomes
    // Inf/NaN as the format allows (ml_dtypes behaviour)."
    if (overflow == Overflow::kNonfinite) {
      if (f.specials == Specials::kIeee) return sign | InfCode(f);
      if (f.specials == Specials::kNanAllOnes) return sign | NanCode(f);
    }
    return sign | max_code;
  };
  const std::vector<double>& mags = FiniteMagnitudes(f);
  const double a = std::fabs(static_cast<double>(v));
  // The value one step past the max finite one (480 for E4M3, 2^16 for E5M2): anything that
  // rounds there overflowed.
  const double past_max = RawMagnitude(f, max_code + 1u);
  if (std::isinf(a) || a >= past_max) return overflowed();
  const uint32_t below =
      static_cast<uint32_t>(std::upper_bound(mags.begin(), mags.end(), a) - mags.begin() - 1);
  const double lo = mags[below];
  if (lo == a) return sign | below;
  const double hi = below + 1u <= max_code ? mags[below + 1u] : past_max;
  // Both differences are exact in fp64 (24-bit significands a few binades apart).
  const double to_lo = a - lo, to_hi = hi - a;
  bool up = false;
  switch (rounding) {
    case Rounding::kNearestAway:
      up = to_hi <= to_lo;
      break;
    case Rounding::kStochastic: {
      const double u = static_cast<double>(random_bits >> 8) * 0x1p-24;
      up = u < to_lo / (hi - lo);
      break;
    }
    default:  // RNE: ties to the even code (= the even significand)
      up = to_hi < to_lo || (to_hi == to_lo && ((below + 1u) & 1u) == 0);
      break;
  }
  const uint32_t code = up ? below + 1u : below;
  if (code > max_code) return overflowed();
  return sign | code;
}

double Hif8Value(uint32_t code) {
  // "NaN 0x80, ±Inf 0x6F/0xEF"
  if (code == 0x80u) return std::numeric_limits<double>::quiet_NaN();
  const double sign = (code & 0x80u) ? -1.0 : 1.0;
  const uint32_t magnitude = code & 0x7Fu;
  if (magnitude == 0x6Fu) return sign * std::numeric_limits<double>::infinity();
  // The prefix ("dot") after the sign bit: 0000 denormal, 0001 D=0, 001 D=1, 01 D=2, 10 D=3,
  // 11 D=4; D exponent bits follow (the first is the exponent's sign, the rest the magnitude
  // below its implicit leading 1), then the mantissa fills the byte.
  int prefix_bits = 0, dot = 0;
  if ((magnitude >> 3) == 0) {
    // Denormal: "min denormal 2^-22": value 2^(M - 23) for the 3 bits M (M = 0: zero).
    return magnitude == 0 ? 0.0 : sign * std::ldexp(1.0, static_cast<int>(magnitude) - 23);
  } else if ((magnitude >> 3) == 1) {
    prefix_bits = 4, dot = 0;
  } else if ((magnitude >> 4) == 1) {
    prefix_bits = 3, dot = 1;
  } else {
    prefix_bits = 2, dot = static_cast<int>(magnitude >> 5) + 1;  // 01 → 2, 10 → 3, 11 → 4
  }
  const int mantissa_bits = 7 - prefix_bits - dot;
  const uint32_t field = (magnitude >> mantissa_bits) & ((1u << dot) - 1u);
  int exponent = 0;
  if (dot > 0) {
    const bool negative = (field >> (dot - 1)) & 1u;
    const int size = (1 << (dot - 1)) | static_cast<int>(field & ((1u << (dot - 1)) - 1u));
    exponent = negative ? -size : size;
  }
  const uint32_t mantissa = magnitude & ((1u << mantissa_bits) - 1u);
  return sign *
         std::ldexp(1.0 + std::ldexp(static_cast<double>(mantissa), -mantissa_bits), exponent);
}

uint32_t EncodeHif8(float v, Overflow overflow) {
  if (std::isnan(v)) return 0x80u;
  // Every finite non-negative value with its code, by value.
  static const std::vector<std::pair<double, uint32_t>>* const table = [] {
    auto* t = new std::vector<std::pair<double, uint32_t>>();
    for (uint32_t c = 0; c < 0x80u; ++c) {
      if (c != 0x6Fu) t->emplace_back(Hif8Value(c), c);
    }
    std::sort(t->begin(), t->end());
    return t;
  }();
  const double a = std::fabs(static_cast<double>(v));
  const uint32_t sign = std::signbit(v) ? 0x80u : 0u;
  uint32_t magnitude;
  if (a > 32768.0) {
    magnitude = overflow == Overflow::kNonfinite && a >= 40960.0 ? 0x6Fu : 0x6Eu;
  } else {
    // The nearest entry, ties to the one farther from zero.
    size_t best = 0;
    for (size_t i = 1; i < table->size(); ++i) {
      if (std::fabs((*table)[i].first - a) <= std::fabs((*table)[best].first - a)) best = i;
    }
    magnitude = (*table)[best].second;
  }
  return magnitude == 0 ? 0u : (sign | magnitude);  // one zero: 0x80 is the NaN
}

const std::vector<float>& Nf4Values() {
  // bitsandbytes' NF4 table (functional.py get_4bit_type("nf4")).
  static const std::vector<float> values = {-1.0f,
                                            -0.6961928009986877f,
                                            -0.5250730514526367f,
                                            -0.39491748809814453f,
                                            -0.28444138169288635f,
                                            -0.18477343022823334f,
                                            -0.09105003625154495f,
                                            0.0f,
                                            0.07958029955625534f,
                                            0.16093020141124725f,
                                            0.24611230194568634f,
                                            0.33791524171829224f,
                                            0.44070982933044434f,
                                            0.5626170039176941f,
                                            0.7229568362236023f,
                                            1.0f};
  return values;
}

uint32_t EncodeNf4(float n) {
  // The tree's thresholds are the midpoints of neighbouring values, written in bitsandbytes as
  // fp32 literals (rounded from the decimal straight to fp32: four of them, e.g.
  // 0.8614784181118011f = 0x3F5C89D9, are one ulp off the fp32 of the double midpoint). The
  // tree visits them in another order; for a number, the count of thresholds it exceeds is the
  // same index, and NaN exceeds none (code 0), as in the tree.
  static constexpr float kThresholds[15] = {
      -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
      -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
      0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
      0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f};
  uint32_t code = 0;
  for (float threshold : kThresholds) {
    if (n > threshold) ++code;
  }
  return code;
}

float HalfBitsToFloat(uint16_t h) { return static_cast<float>(MinifloatValue(kF16, h)); }
uint16_t FloatToHalfBits(float v) {
  return static_cast<uint16_t>(
      EncodeMinifloat(kF16, v, Rounding::kNearestEven, 0, Overflow::kNonfinite));
}
float BF16BitsToFloat(uint16_t h) { return static_cast<float>(MinifloatValue(kBF16, h)); }
uint16_t FloatToBF16Bits(float v) {
  return static_cast<uint16_t>(
      EncodeMinifloat(kBF16, v, Rounding::kNearestEven, 0, Overflow::kNonfinite));
}

std::vector<uint8_t> ToBytes(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> bytes;
  for (float v : values) {
    if (dtype == DType::kF32) {
      uint8_t b[4];
      std::memcpy(b, &v, 4);
      bytes.insert(bytes.end(), b, b + 4);
    } else {
      const uint16_t h = dtype == DType::kF16 ? FloatToHalfBits(v) : FloatToBF16Bits(v);
      bytes.push_back(static_cast<uint8_t>(h & 0xFF));
      bytes.push_back(static_cast<uint8_t>(h >> 8));
    }
  }
  return bytes;
}

std::vector<float> FromBytes(const std::vector<uint8_t>& bytes, DType dtype) {
  std::vector<float> values;
  if (dtype == DType::kF32) {
    values.resize(bytes.size() / 4);
    if (!values.empty()) std::memcpy(values.data(), bytes.data(), bytes.size());
    return values;
  }
  for (size_t i = 0; i + 1 < bytes.size(); i += 2) {
    const uint16_t h = static_cast<uint16_t>(bytes[i] | (bytes[i + 1] << 8));
    values.push_back(dtype == DType::kF16 ? HalfBitsToFloat(h) : BF16BitsToFloat(h));
  }
  return values;
}

float RoundTrip(float v, DType dtype) {
  if (dtype == DType::kF16) return HalfBitsToFloat(FloatToHalfBits(v));
  if (dtype == DType::kBF16) return BF16BitsToFloat(FloatToBF16Bits(v));
  return v;
}

// Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC'11), Philox4x32 with the
// Random123 multipliers and Weyl key increments.
void Philox4x32_10(uint32_t ctr[4], uint32_t key0, uint32_t key1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key0 += 0x9E3779B9u;
      key1 += 0xBB67AE85u;
    }
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * ctr[0];
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * ctr[2];
    const uint32_t next[4] = {
        static_cast<uint32_t>(p1 >> 32) ^ ctr[1] ^ key0, static_cast<uint32_t>(p1),
        static_cast<uint32_t>(p0 >> 32) ^ ctr[3] ^ key1, static_cast<uint32_t>(p0)};
    for (int k = 0; k < 4; ++k) ctr[k] = next[k];
  }
}

uint32_t RandomBits(uint64_t seed, uint64_t flat_index) {
  const uint64_t block = flat_index / 4;
  uint32_t ctr[4] = {static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0, 0};
  Philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return ctr[flat_index % 4];
}

int32_t QuantizeInt(float v, int32_t zero_point, int32_t qmin, int32_t qmax, Rounding rounding,
                    uint32_t random_bits) {
  const double a = std::fabs(static_cast<double>(v));
  double r = a;
  if (!std::isinf(a)) {
    const double whole = std::floor(a);
    const double frac = a - whole;
    bool up = false;
    switch (rounding) {
      case Rounding::kNearestAway:
        up = frac >= 0.5;
        break;
      case Rounding::kStochastic:
        up = static_cast<double>(random_bits >> 8) * 0x1p-24 < frac;
        break;
      default:
        up = frac > 0.5 || (frac == 0.5 && std::fmod(whole, 2.0) == 1.0);
        break;
    }
    r = up ? whole + 1.0 : whole;
  }
  const double q = (std::signbit(v) ? -r : r) + zero_point;
  if (q < qmin) return qmin;
  if (q > qmax) return qmax;
  return static_cast<int32_t>(q);
}

const FormatInfo* FindFormat(Format format) {
  // FORMATS.md "Integer formats" and the minifloat table.
  static const FormatInfo kInt8Info{"int8", true,   8,    -128, 127,   {},   0,
                                    0,      127.0f, true, true, false, false};
  static const FormatInfo kInt4Info{"int4", true, 4,    -8,   7,     {},   0,
                                    0,      7.0f, true, true, false, false};
  static const FormatInfo kUint8Info{"uint8", true,   8,     0,    255,   {},   0,
                                     0,       255.0f, false, true, false, false};
  static const FormatInfo kUint4Info{"uint4", true,  4,     0,    15,    {},   0,
                                     0,       15.0f, false, true, false, false};
  static const FormatInfo kE4M3Info{"fp8-e4m3", false,  8,    0,     0,    kE4M3, 448.0,
                                    0x1p-9,     448.0f, true, false, true, false};
  static const FormatInfo kE5M2Info{"fp8-e5m2", false,    8,    0,     0,    kE5M2, 57344.0,
                                    0x1p-16,    57344.0f, true, false, true, true};
  // "MX (OCP MX v1.0): blocks of 32 ... emax: E4M3 8, E5M2 15, E3M2 4, E2M3 2, E2M1 2, INT8 0";
  // the minifloat table gives max finite and min subnormal. The mantissa bits are the
  // element's; MXINT8's "clamp(rne(v · 64), -127, 127)" makes its largest element 127/64 and
  // its fraction 6 bits (quantd's reading for RCEIL and EVEN, where FORMATS.md names none).
  auto mx = [](FormatInfo info, int emax, int mbits, double max_element) {
    info.mx_block = 32;
    info.mx_emax = emax;
    info.mx_mbits = mbits;
    info.mx_max_element = max_element;
    info.asymmetric_ok = false;
    return info;
  };
  static const FormatInfo kMxE4M3Info = [&] {
    FormatInfo info = mx(kE4M3Info, 8, 3, 448.0);
    info.name = "mxfp8";
    return info;
  }();
  static const FormatInfo kMxE5M2Info = [&] {
    FormatInfo info = mx(kE5M2Info, 15, 2, 57344.0);
    info.name = "mxfp8e5m2";
    return info;
  }();
  static const FormatInfo kMxE3M2Info =
      mx({"mxfp6e3m2", false, 6, 0, 0, kE3M2, 28.0, 0x1p-4, 28.0f, true, false, false, false}, 4, 2,
         28.0);
  static const FormatInfo kMxE2M3Info =
      mx({"mxfp6e2m3", false, 6, 0, 0, kE2M3, 7.5, 0x1p-3, 7.5f, true, false, false, false}, 2, 3,
         7.5);
  static const FormatInfo kMxE2M1Info =
      mx({"mxfp4", false, 4, 0, 0, kE2M1, 6.0, 0.5, 6.0f, true, false, false, false}, 2, 1, 6.0);
  static const FormatInfo kMxInt8Info = [&] {
    FormatInfo info =
        mx({"mxint8", true, 8, -127, 127, {}, 0, 0, 127.0f, true, false, false, false}, 0, 6,
           127.0 / 64.0);
    info.mx_implicit_exponent = 6;
    return info;
  }();
  // "NVFP4: E2M1 in blocks of 16, block scale E4M3, plus a per-tensor F32 global scale".
  static const FormatInfo kNvfp4Info = [&] {
    FormatInfo info{"nvfp4", false, 4, 0, 0, kE2M1, 6.0, 0.5, 6.0f, true, false, false, false};
    info.nvfp4_block = 16;
    return info;
  }();
  // "HiF8 ... max 32768, min denormal 2^-22, NaN 0x80, ±Inf 0x6F/0xEF ... With a scale,
  // s = amax / 8".
  static const FormatInfo kHif8Info = [&] {
    FormatInfo info{"hif8", false, 8, 0, 0, {}, 32768.0, 0x1p-22, 8.0f, true, false, true, true};
    info.hif8 = true;
    return info;
  }();
  // "NF4 (bitsandbytes): blocks of 64 (32..4096) over the flattened tensor, F32 absmax per
  // block".
  static const FormatInfo kNf4Info = [&] {
    FormatInfo info{"nf4", false, 4, 0, 15, {}, 1.0, 0.0, 1.0f, true, false, false, false};
    info.nf4_block = 64;
    return info;
  }();
  static const FormatInfo kFlatquantInfo = [&] {
    FormatInfo info = kInt4Info;
    info.name = "flatquant-int4";
    info.asymmetric_ok = false;
    info.flatquant = true;
    return info;
  }();
  switch (format) {
    case Format::kFlatquantInt4:
      return &kFlatquantInfo;
    case Format::kNf4:
      return &kNf4Info;
    case Format::kHif8:
      return &kHif8Info;
    case Format::kNvfp4:
      return &kNvfp4Info;
    case Format::kMxfp8E4M3:
      return &kMxE4M3Info;
    case Format::kMxfp8E5M2:
      return &kMxE5M2Info;
    case Format::kMxfp6E3M2:
      return &kMxE3M2Info;
    case Format::kMxfp6E2M3:
      return &kMxE2M3Info;
    case Format::kMxfp4:
      return &kMxE2M1Info;
    case Format::kMxint8:
      return &kMxInt8Info;
    case Format::kInt8:
      return &kInt8Info;
    case Format::kInt4:
      return &kInt4Info;
    case Format::kUint8:
      return &kUint8Info;
    case Format::kUint4:
      return &kUint4Info;
    case Format::kFp8E4M3:
      return &kE4M3Info;
    case Format::kFp8E5M2:
      return &kE5M2Info;
    default:
      return nullptr;
  }
}

std::vector<double> ElementMagnitudes(const FormatInfo& info) {
  if (info.nf4_block > 0) {
    std::vector<double> values;
    for (float v : Nf4Values()) {
      if (v >= 0.0f) values.push_back(v);
    }
    return values;
  }
  if (!info.hif8) return FiniteMagnitudes(info.minifloat);
  std::vector<double> values;
  for (uint32_t code = 0; code < 0x6Fu; ++code) {
    const double v = Hif8Value(code);
    if (v <= info.symmetric_divisor) values.push_back(v);
  }
  std::sort(values.begin(), values.end());
  return values;
}

Metrics ComputeMetrics(const std::vector<float>& x, const std::vector<float>& x_hat) {
  double sx2 = 0, sy2 = 0, sxy = 0, se2 = 0;
  Metrics m;
  bool nan_err = false;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) {
      ++m.nonfinite_count;
      continue;
    }
    const double a = x[i], b = x_hat[i], d = a - b;
    sx2 += a * a;
    sy2 += b * b;
    sxy += a * b;
    se2 += d * d;
    if (std::isnan(d)) nan_err = true;
    m.max_abs_err = std::max(m.max_abs_err, std::fabs(d));
    ++m.count;
  }
  if (nan_err) m.max_abs_err = std::numeric_limits<double>::quiet_NaN();
  m.mse = m.count ? se2 / static_cast<double>(m.count) : 0.0;
  m.rmse = std::sqrt(m.mse);
  m.sqnr_db = se2 == 0 ? std::numeric_limits<double>::infinity() : 10.0 * std::log10(sx2 / se2);
  if (sx2 == 0 && sy2 == 0) {
    m.cosine = 1.0;
  } else if (sx2 == 0 || sy2 == 0) {
    m.cosine = 0.0;
  } else {
    m.cosine = sxy / (std::sqrt(sx2) * std::sqrt(sy2));
  }
  if (se2 == 0) {
    m.rel_fro_err = 0.0;
  } else if (sx2 == 0) {
    m.rel_fro_err = std::numeric_limits<double>::infinity();
  } else {
    m.rel_fro_err = std::sqrt(se2) / std::sqrt(sx2);
  }
  return m;
}

absl::Status Resolve(const QuantSpec& q, const Shape& shape, Resolved* out) {
  auto refuse = [](const std::string& why) { return absl::InvalidArgumentError("oracle: " + why); };
  Resolved r;
  r.info = FindFormat(q.format);
  if (r.info == nullptr) return refuse("unknown format");
  r.format = q.format;
  const int rank = static_cast<int>(shape.size());
  r.granularity = q.granularity == Granularity::kUnspecified ? Granularity::kTensor : q.granularity;
  if (r.info->flatquant) {
    // "per-token ... INT4": token is its granularity, and the default.
    if (q.granularity == Granularity::kUnspecified) r.granularity = Granularity::kToken;
    if (r.granularity != Granularity::kToken) return refuse("FlatQuant is per token");
    const int64_t hidden = rank == 0 ? 1 : shape[rank - 1];
    if (q.transform_left.empty() && q.transform_right.empty()) {
      // kernels/ choice (FORMATS.md: "get_decompose_dim"): identities of its factors; a size
      // 2 mod 4 has none (n = (a-b)(a+b) needs factors of one parity) and is refused.
      if (hidden % 4 == 2) return refuse("no get_decompose_dim");
      const auto [n1, n2] = GetDecomposeDim(hidden);
      if (n1 == 0 && hidden != 0) return refuse("get_decompose_dim's factors above 4096");
      r.n1 = n1;
      r.n2 = n2;
      r.transform_left.assign(static_cast<size_t>(n1 * n1), 0.0f);
      r.transform_right.assign(static_cast<size_t>(n2 * n2), 0.0f);
      for (int64_t i = 0; i < n1; ++i) r.transform_left[static_cast<size_t>(i * n1 + i)] = 1.0f;
      for (int64_t i = 0; i < n2; ++i) r.transform_right[static_cast<size_t>(i * n2 + i)] = 1.0f;
    } else {
      const auto side = [](size_t n) {
        const auto s = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n))));
        return s * s == static_cast<int64_t>(n) ? s : int64_t{-1};
      };
      r.n1 = side(q.transform_left.size());
      r.n2 = side(q.transform_right.size());
      if (r.n1 <= 0 || r.n2 <= 0 || r.n1 * r.n2 != hidden || std::max(r.n1, r.n2) > 4096) {
        return refuse("FlatQuant matrices");
      }
      for (float v : q.transform_left) {
        if (!std::isfinite(v)) return refuse("FlatQuant matrix value");
      }
      for (float v : q.transform_right) {
        if (!std::isfinite(v)) return refuse("FlatQuant matrix value");
      }
      r.transform_left = q.transform_left;
      r.transform_right = q.transform_right;
    }
  } else if (!q.transform_left.empty() || !q.transform_right.empty()) {
    return refuse("transform matrices without FlatQuant");
  }
  if (r.info->block() > 0) {
    // "blocks of 32 along the last axis" (MX), "blocks of 16" (NVFP4): a group of the block
    // size is the only granularity, and the default one. Block scales come from each block: no
    // clip ratio, no static scales (kernels/ choices: FORMATS.md gives them no way to pass
    // either).
    // kernels/ choice: MX blocks of other sizes along the last axis serve the fake_quant_ops
    // grammar ("e<E>m<M>k<K>b<B>"); NVFP4's are 16.
    if (q.granularity == Granularity::kUnspecified) r.granularity = Granularity::kGroup;
    const int64_t size = q.group_size == 0 ? r.info->block() : q.group_size;
    if (r.granularity != Granularity::kGroup || size <= 0 ||
        (r.info->nvfp4_block > 0 && size != r.info->nvfp4_block) ||
        (r.info->nf4_block > 0 && (size < 32 || size > 4096))) {
      return refuse("block formats take blocks along the last axis");
    }
    if (q.clip_ratio != 0.0f && q.clip_ratio != 1.0f) return refuse("clip ratio on a block format");
    // "elements = quantize(v / 2^X), RNE, saturating"; NVFP4's E2M1 has no Inf or NaN.
    if (q.overflow == Overflow::kNonfinite) return refuse("nonfinite overflow on a block format");
    if (q.has_static_scales()) return refuse("static scales on a block format");
  }
  if (r.info->mx_block > 0) {
    r.scale_rounding =
        q.scale_rounding == ScaleRounding::kUnspecified ? ScaleRounding::kFloor : q.scale_rounding;
    if (static_cast<int>(r.scale_rounding) < 1 || static_cast<int>(r.scale_rounding) > 4) {
      return refuse("scale rule");
    }
  } else if (q.scale_rounding != ScaleRounding::kUnspecified) {
    return refuse("scale rule on a format without E8M0 scales");
  }
  switch (r.granularity) {
    case Granularity::kNone:
      // "`none` = a plain cast with scale 1 (minifloat formats only)."
      if (r.info->is_int) return refuse("none on an integer format");
      break;
    case Granularity::kTensor:
    case Granularity::kToken:
      break;
    case Granularity::kChannel:
      if (q.axis < -rank || q.axis >= rank) return refuse("axis out of range");
      r.axis = q.axis < 0 ? q.axis + rank : q.axis;
      break;
    case Granularity::kGroup:
      r.group = r.info->block() > 0 && q.group_size == 0 ? r.info->block() : q.group_size;
      if (r.group <= 0) return refuse("group size");
      break;
    case Granularity::kBlock:
      if (q.block_rows <= 0 || q.block_cols <= 0) return refuse("block size");
      r.block_rows = q.block_rows;
      r.block_cols = q.block_cols;
      break;
    default:
      return refuse("granularity");
  }
  // Asymmetric-only formats (uint8, uint4) imply asymmetric: a proto3 bool cannot say
  // "unset", so symmetric is only ever the default (docs/FORMATS.md, quantd's readings).
  r.asymmetric = q.asymmetric || !r.info->symmetric_ok;
  if (r.asymmetric && !r.info->asymmetric_ok) return refuse("asymmetric");
  if (r.asymmetric && r.granularity == Granularity::kNone) return refuse("asymmetric cast");
  // NF4's tree has no rounding mode to choose (kernels/ choice: anything but RNE, the default,
  // is refused).
  if (r.info->nf4_block > 0 && q.rounding != Rounding::kUnspecified &&
      q.rounding != Rounding::kNearestEven) {
    return refuse("NF4 takes no rounding mode");
  }
  // HiF8: "ties away from zero", its only rounding.
  if (r.info->hif8 && q.rounding != Rounding::kUnspecified &&
      q.rounding != Rounding::kNearestAway) {
    return refuse("HiF8 rounds half away from zero only");
  }
  switch (q.rounding) {
    case Rounding::kUnspecified:
      r.rounding = r.info->hif8 ? Rounding::kNearestAway : Rounding::kNearestEven;
      break;
    case Rounding::kNearestEven:
      r.rounding = Rounding::kNearestEven;
      break;
    case Rounding::kNearestAway:
    case Rounding::kStochastic:
      r.rounding = q.rounding;
      break;
    default:
      return refuse("rounding");
  }
  r.seed = q.seed;
  switch (q.overflow) {
    case Overflow::kUnspecified:
    case Overflow::kSaturate:
      r.overflow = Overflow::kSaturate;
      break;
    case Overflow::kNonfinite:
      // "overflow becomes Inf/NaN as the format allows": integers allow neither.
      if (!r.info->has_inf && !r.info->has_nan) return refuse("nonfinite overflow");
      r.overflow = Overflow::kNonfinite;
      break;
    default:
      return refuse("overflow");
  }
  // "clip_ratio c ∈ (0, 1]"; 0 is the proto default and means 1.
  if (std::isnan(q.clip_ratio) || q.clip_ratio < 0.0f || q.clip_ratio > 1.0f) {
    return refuse("clip ratio");
  }
  r.clip = q.clip_ratio == 0.0f ? 1.0f : q.clip_ratio;
  // kernels/ choice: a plain cast has no amax for a clip ratio to multiply.
  if (r.granularity == Granularity::kNone && r.clip != 1.0f) return refuse("clip without scale");
  switch (q.nan_policy) {
    case NanPolicy::kUnspecified:
      r.nan_policy = r.info->has_nan ? NanPolicy::kPropagate : NanPolicy::kReject;
      break;
    case NanPolicy::kPropagate:
      if (!r.info->has_nan) return refuse("propagate without NaN");
      r.nan_policy = q.nan_policy;
      break;
    case NanPolicy::kReject:
    case NanPolicy::kZero:
      r.nan_policy = q.nan_policy;
      break;
    default:
      return refuse("nan policy");
  }
  switch (q.packing) {
    case Packing::kUnspecified:
      // "NF4: element 0 in the high nibble (bitsandbytes compatibility)".
      r.packing = r.info->nf4_block > 0 ? Packing::kHighNibbleFirst : Packing::kBitstream;
      break;
    case Packing::kBitstream:
      r.packing = Packing::kBitstream;
      break;
    case Packing::kHighNibbleFirst:
      if (r.info->nf4_block == 0) return refuse("high-nibble-first packing is NF4's");
      r.packing = Packing::kHighNibbleFirst;
      break;
    case Packing::kInt32Offset:
      // "INT32_OFFSET (compressed-tensors pack_to_int32): value + 8": signed 4-bit codes.
      if (!(r.info->is_int && r.info->bits == 4 && r.info->qmin < 0)) return refuse("packing");
      r.packing = Packing::kInt32Offset;
      break;
    default:
      return refuse("packing");
  }
  for (int64_t d : shape) {
    if (d < 0) return refuse("negative dim");
  }
  if (rank > kMaxRank) return refuse("rank");
  if (q.has_static_scales()) {
    // kernels/ choices: static scales replace the dynamic amax that a clip ratio would shape,
    // and a plain cast has no scale to give.
    if (r.clip != 1.0f) return refuse("clip ratio with static scales");
    if (r.granularity == Granularity::kNone) return refuse("static scales on a plain cast");
    const Grouping g = GroupElements(r, shape);
    if (static_cast<int64_t>(q.static_scales.size()) != g.num_scales) {
      return refuse("static scale count");
    }
    for (float s : q.static_scales) {
      if (!std::isfinite(s) || !(s > 0.0f)) return refuse("static scale value");
    }
    if (r.asymmetric) {
      if (q.static_zero_points.size() != q.static_scales.size()) return refuse("zero points");
      for (int32_t zp : q.static_zero_points) {
        if (zp < r.info->qmin || zp > r.info->qmax) return refuse("zero point range");
      }
    } else if (!q.static_zero_points.empty()) {
      return refuse("zero points on a symmetric spec");
    }
    r.static_scales = q.static_scales;
    r.static_zero_points = q.static_zero_points;
  } else if (!q.static_zero_points.empty()) {
    return refuse("zero points without scales");
  }
  *out = r;
  return absl::OkStatus();
}

Grouping GroupElements(const Resolved& spec, const Shape& shape) {
  Grouping g;
  const size_t rank = shape.size();
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  // "For token, group and block, the leading dims of an N-D input fold into rows."
  g.cols = rank == 0 ? 1 : shape[rank - 1];
  g.rows = 1;
  for (size_t k = 0; k + 1 < rank; ++k) g.rows *= shape[k];
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  if (spec.info->nf4_block > 0) {
    // "blocks ... over the flattened tensor": one row of numel codes, block k = elements
    // [k·B, (k+1)·B).
    g.rows = 1;
    g.cols = numel;
    g.scale_shape = {ceil_div(numel, spec.group)};
    g.num_scales = g.scale_shape[0];
    g.group_of.resize(static_cast<size_t>(numel));
    for (int64_t i = 0; i < numel; ++i) g.group_of[static_cast<size_t>(i)] = i / spec.group;
    return g;
  }
  switch (spec.granularity) {
    case Granularity::kChannel:
      // "reduces over every other dim and keeps the input's rank with 1 elsewhere"
      g.scale_shape.assign(rank, 1);
      g.scale_shape[spec.axis] = shape[spec.axis];
      break;
    case Granularity::kToken:
      g.scale_shape = {g.rows, 1};
      break;
    case Granularity::kGroup:
      g.scale_shape = {g.rows, ceil_div(g.cols, spec.group)};
      break;
    case Granularity::kBlock:
      g.scale_shape = {ceil_div(g.rows, spec.block_rows), ceil_div(g.cols, spec.block_cols)};
      break;
    default:  // tensor → [1]; none: the one scale 1
      g.scale_shape = {1};
      break;
  }
  g.num_scales = 1;
  for (int64_t d : g.scale_shape) g.num_scales *= d;
  g.group_of.resize(static_cast<size_t>(numel));
  std::vector<int64_t> index(rank, 0);
  for (int64_t i = 0; i < numel; ++i) {
    // Multi-index of flat element i, row-major.
    int64_t rest = i;
    for (size_t k = rank; k-- > 0;) {
      index[k] = rest % shape[k];
      rest /= shape[k];
    }
    int64_t row = 0;
    for (size_t k = 0; k + 1 < rank; ++k) row = row * shape[k] + index[k];
    const int64_t col = rank == 0 ? 0 : index[rank - 1];
    int64_t group = 0;
    switch (spec.granularity) {
      case Granularity::kChannel:
        group = index[spec.axis];
        break;
      case Granularity::kToken:
        group = row;
        break;
      case Granularity::kGroup:
        group = row * g.scale_shape[1] + col / spec.group;
        break;
      case Granularity::kBlock:
        group = (row / spec.block_rows) * g.scale_shape[1] + col / spec.block_cols;
        break;
      default:
        break;
    }
    g.group_of[static_cast<size_t>(i)] = group;
  }
  return g;
}

// "Shared exponent X = floor(log2(amax)) - emax_elem ... clamped to [-127, 127]", and the
// RCEIL / EVEN alternatives, from the block's finite values.
int MxExponent(const FormatInfo& info, ScaleRounding rule, const std::vector<float>& group) {
  float amax = 0.0f;
  for (float v : group) amax = std::max(amax, std::fabs(v));
  int x = -127;  // log2(0) = -inf, clamped
  switch (rule) {
    case ScaleRounding::kRceil: {
      // "X = ceil(log2(fp32(amax / max_elem)))"
      const float y = amax / static_cast<float>(info.mx_max_element);
      if (y > 0.0f) {
        int e = 0;
        const double m = std::frexp(static_cast<double>(y), &e);  // y = m · 2^e, m in [0.5, 1)
        x = m == 0.5 ? e - 1 : e;
      }
      break;
    }
    case ScaleRounding::kEven: {
      // "X = unbiased exponent of (bits(amax) + (1 << (22 - mbits))) - emax_elem"
      uint32_t bits = 0;
      std::memcpy(&bits, &amax, 4);
      bits += 1u << (22 - info.mx_mbits);
      const int biased = static_cast<int>((bits >> 23) & 0xFFu);
      if (biased != 0) x = biased - 127 - info.mx_emax;
      break;
    }
    case ScaleRounding::kNearest:
      // The `c` (carry) of e<E>m<M>k<K>b<B>c: floor(log2(amax) + 0.5), in fp64 (exact enough:
      // no fp32 value lies within 1e-8 of √2 · 2^k).
      if (amax > 0.0f) {
        x = static_cast<int>(std::floor(std::log2(static_cast<double>(amax)) + 0.5)) - info.mx_emax;
      }
      break;
    default:
      if (amax > 0.0f) x = std::ilogb(amax) - info.mx_emax;  // floor(log2(amax)), subnormals too
      break;
  }
  return std::min(127, std::max(-127, x));
}

bool ScaleOf(const FormatInfo& info, bool asymmetric, float clip, const std::vector<float>& group,
             float* scale, int32_t* zero_point, ScaleRounding mx_rule) {
  *zero_point = 0;
  *scale = 1.0f;
  if (info.mx_block > 0) {
    const int x = MxExponent(info, mx_rule, group);
    *scale = static_cast<float>(std::ldexp(1.0, x - info.mx_implicit_exponent));
    return true;
  }
  if (info.nf4_block > 0) {
    // "F32 absmax per block" (0 for an all-zero block).
    float absmax = 0.0f;
    for (float v : group) absmax = std::max(absmax, std::fabs(v));
    *scale = absmax;
    return true;
  }
  if (!asymmetric) {
    // "Symmetric: s = fp32(amax / qmax)", amax times clip_ratio first.
    float amax = 0.0f;
    for (float v : group) amax = std::max(amax, std::fabs(v));
    const float clipped = amax * clip;
    float s = clipped / info.symmetric_divisor;
    // "a scale is never 0; an all-zero group gets scale 1"
    if (s == 0.0f) s = 1.0f;
    *scale = s;
    return true;
  }
  // "scale = (max - min) / 255 over the group (max ≥ 0 ≥ min enforced)"
  float mx = 0.0f, mn = 0.0f;
  for (float v : group) {
    mx = std::max(mx, v);
    mn = std::min(mn, v);
  }
  mx = mx * clip;
  mn = mn * clip;
  const float range = mx - mn;
  // FORMATS.md is silent when max - min overflows fp32 (s would be Inf and every x̂ NaN);
  // kernels/ refuses the request, and so does the oracle.
  if (std::isinf(range)) return false;
  float s = range / static_cast<float>(info.qmax - info.qmin);
  if (s == 0.0f) s = 1.0f;
  // "zp = clamp(rne(fp32(qmin - fp32(min / s))))"
  const float shifted = mn / s;
  const float zp_real = static_cast<float>(info.qmin) - shifted;
  double zp = std::nearbyint(static_cast<double>(zp_real));  // default FE_TONEAREST
  zp = std::min<double>(std::max<double>(zp, info.qmin), info.qmax);
  *scale = s;
  *zero_point = static_cast<int32_t>(zp);
  return true;
}

int64_t PackedRowBytes(int64_t cols, int bits, Packing packing) {
  if (packing == Packing::kInt32Offset) return 4 * ((cols + 7) / 8);
  return (cols * bits + 7) / 8;
}

std::vector<uint8_t> Pack(const std::vector<uint32_t>& codes, int64_t rows, int64_t cols, int bits,
                          Packing packing) {
  const int64_t row_bytes = PackedRowBytes(cols, bits, packing);
  std::vector<uint8_t> out(static_cast<size_t>(rows * row_bytes), 0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      uint32_t stored = codes[static_cast<size_t>(r * cols + c)];
      if (packing == Packing::kInt32Offset) {
        // value + 8, where value is the signed 4-bit integer.
        const int32_t value = static_cast<int32_t>(stored) - ((stored & 8u) ? 16 : 0);
        stored = static_cast<uint32_t>(value + 8);
      }
      // "element i occupies bits [b·i, b·i + b) counting from bit 0 of byte 0"; NF4's
      // "element 0 in the high nibble" puts element i in the other nibble of the same byte.
      const int64_t first_bit =
          packing == Packing::kHighNibbleFirst ? (c / 2) * 8 + (c % 2 == 0 ? 4 : 0) : c * bits;
      for (int b = 0; b < bits; ++b) {
        if ((stored >> b) & 1u) {
          const int64_t bit = first_bit + b;
          out[static_cast<size_t>(r * row_bytes + bit / 8)] |=
              static_cast<uint8_t>(1u << (bit % 8));
        }
      }
    }
  }
  return out;
}

std::vector<uint32_t> Unpack(const std::vector<uint8_t>& packed, int64_t rows, int64_t cols,
                             int bits, Packing packing) {
  const int64_t row_bytes = PackedRowBytes(cols, bits, packing);
  std::vector<uint32_t> codes(static_cast<size_t>(rows * cols), 0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      uint32_t stored = 0;
      const int64_t first_bit =
          packing == Packing::kHighNibbleFirst ? (c / 2) * 8 + (c % 2 == 0 ? 4 : 0) : c * bits;
      for (int b = 0; b < bits; ++b) {
        const int64_t bit = first_bit + b;
        if ((packed[static_cast<size_t>(r * row_bytes + bit / 8)] >> (bit % 8)) & 1u) {
          stored |= 1u << b;
        }
      }
      if (packing == Packing::kInt32Offset) {
        const int32_t value = static_cast<int32_t>(stored) - 8;
        stored = static_cast<uint32_t>(value) & 0xFu;
      }
      codes[static_cast<size_t>(r * cols + c)] = stored;
    }
  }
  return codes;
}

float DequantizeCode(const FormatInfo& info, uint32_t code, float scale, int32_t zero_point) {
  if (info.is_int) {
    int32_t q = static_cast<int32_t>(code & ((1u << info.bits) - 1u));
    if (info.qmin < 0 && (q & (1 << (info.bits - 1)))) q -= 1 << info.bits;
    // "x̂ = fp32(s · (q - zp)) with (q - zp) an exact integer"
    const float level = static_cast<float>(q - zero_point);
    return scale * level;
  }
  if (info.nf4_block > 0) return Nf4Values()[code & 15u] * scale;  // bitsandbytes' order
  const float value =
      static_cast<float>(info.hif8 ? Hif8Value(code) : MinifloatValue(info.minifloat, code));
  return scale * value;
}

namespace {

uint32_t QuantizeOne(const Resolved& spec, float x, float s, int32_t zp, uint64_t flat_index) {
  const FormatInfo& info = *spec.info;
  // NVFP4: "element = e2m1(x / d_b) (codes 0 when d_b is 0)".
  if (info.nvfp4_block > 0 && s == 0.0f) return 0u;
  if (info.nf4_block > 0) {
    // "absmax 0 gives code 7, the 0.0 entry"; "n = fp32(x · fp32(1 / absmax))".
    if (s == 0.0f) return 7u;
    if (std::isnan(x)) x = 0.0f;  // nan_policy ZERO (REJECT never gets here)
    const float reciprocal = 1.0f / s;
    return EncodeNf4(x * reciprocal);
  }
  const uint32_t random_bits =
      spec.rounding == Rounding::kStochastic ? RandomBits(spec.seed, flat_index) : 0u;
  if (std::isnan(x)) {
    if (spec.nan_policy == NanPolicy::kZero) {
      x = 0.0f;  // "nan_policy = ZERO": quantized as the value 0
    } else if (info.hif8) {
      return 0x80u;
    } else if (!info.is_int) {
      return EncodeMinifloat(info.minifloat, x, spec.rounding, random_bits, spec.overflow);
    }
  }
  // "x / s is a true fp32 division"
  const float v = x / s;
  if (info.is_int) {
    const int32_t q = QuantizeInt(v, zp, info.qmin, info.qmax, spec.rounding, random_bits);
    return static_cast<uint32_t>(q) & ((1u << info.bits) - 1u);
  }
  if (info.hif8) return EncodeHif8(v, spec.overflow);
  return EncodeMinifloat(info.minifloat, v, spec.rounding, random_bits, spec.overflow);
}

std::vector<std::vector<float>> FiniteByGroup(const std::vector<float>& x, const Grouping& g) {
  std::vector<std::vector<float>> groups(static_cast<size_t>(g.num_scales));
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isfinite(x[i])) groups[static_cast<size_t>(g.group_of[i])].push_back(x[i]);
  }
  return groups;
}

absl::Status CheckNans(const std::vector<float>& x, const Resolved& spec) {
  if (spec.nan_policy != NanPolicy::kReject) return absl::OkStatus();
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      return absl::InvalidArgumentError(absl::StrCat("oracle: element ", i, " is NaN"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::pair<int64_t, int64_t> GetDecomposeDim(int64_t n) {
  // "a = ceil(√n), grow a until a²-n is a square b², return (a-b, a+b)"
  auto a = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n))));
  while (a * a < n) ++a;
  // kernels/ choice: factors above 4096 (a P2 of 64 MiB) are refused; a + b >= a bounds the
  // search.
  for (; a <= 4096; ++a) {
    const int64_t d = a * a - n;
    const auto b = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(d))));
    if (b * b == d)
      return a + b <= 4096 ? std::pair<int64_t, int64_t>{a - b, a + b}
                           : std::pair<int64_t, int64_t>{0, 0};
  }
  return {0, 0};
}

std::vector<float> FlatquantTransform(const std::vector<float>& x, int64_t rows,
                                      const Resolved& spec) {
  const int64_t n1 = spec.n1, n2 = spec.n2, cols = n1 * n2;
  std::vector<float> y(x.size());
  std::vector<float> t(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * cols;
    // X · P2: X is the row as n1 × n2, row-major.
    for (int64_t i = 0; i < n1; ++i) {
      for (int64_t j = 0; j < n2; ++j) {
        float acc = 0.0f;
        for (int64_t l = 0; l < n2; ++l) {
          acc += xr[i * n2 + l] * spec.transform_right[static_cast<size_t>(l * n2 + j)];
        }
        t[static_cast<size_t>(i * n2 + j)] = acc;
      }
    }
    // P1ᵀ · (X · P2).
    for (int64_t i = 0; i < n1; ++i) {
      for (int64_t j = 0; j < n2; ++j) {
        float acc = 0.0f;
        for (int64_t k = 0; k < n1; ++k) {
          acc += spec.transform_left[static_cast<size_t>(k * n1 + i)] *
                 t[static_cast<size_t>(k * n2 + j)];
        }
        y[static_cast<size_t>(r * cols + i * n2 + j)] = acc;
      }
    }
  }
  return y;
}

Result Quantize(const std::vector<float>& input, const Shape& shape, const QuantSpec& requested) {
  Result r;
  r.status = Resolve(requested, shape, &r.spec);
  if (!r.status.ok()) return r;
  // FlatQuant quantizes the transformed rows, and its metrics compare with them. kernels/
  // choice: the transform would spread a non-finite value over its row, so NaN is refused (or,
  // nan_policy ZERO, zeroed first) and ±Inf refused, naming the first such input element.
  int64_t rows = 1;
  for (size_t k = 0; k + 1 < shape.size(); ++k) rows *= shape[k];
  std::vector<float> cleaned = input;
  if (r.spec.info->flatquant) {
    for (size_t i = 0; i < cleaned.size(); ++i) {
      if (std::isnan(cleaned[i]) && r.spec.nan_policy == NanPolicy::kZero) {
        cleaned[i] = 0.0f;
      } else if (!std::isfinite(cleaned[i])) {
        r.status = absl::InvalidArgumentError(absl::StrCat(
            "oracle: element ", i, std::isnan(cleaned[i]) ? " is NaN" : " is infinite"));
        return r;
      }
    }
  }
  const std::vector<float> x =
      r.spec.info->flatquant ? FlatquantTransform(cleaned, rows, r.spec) : input;
  r.status = CheckNans(x, r.spec);
  if (!r.status.ok()) return r;
  const FormatInfo& info = *r.spec.info;
  r.grouping = GroupElements(r.spec, shape);
  const Grouping& g = r.grouping;
  const size_t n = static_cast<size_t>(g.num_scales);
  r.scales.assign(n, 1.0f);
  std::vector<int32_t> zps(n, 0);
  if (r.spec.granularity == Granularity::kNone) {
    // plain cast: scale 1
  } else if (!r.spec.static_scales.empty()) {
    r.scales = r.spec.static_scales;
    if (r.spec.asymmetric) zps = r.spec.static_zero_points;
  } else if (info.nvfp4_block > 0) {
    // "S_enc = fp32(2688 / amax_tensor) (1 when amax is 0); s_b = e4m3(fp32(amax_b ·
    // fp32(S_enc / 6))); d_b = fp32(decode(s_b) / S_enc)". amax over finite elements, as for
    // every scale; a quotient that overflows fp32 becomes FLT_MAX (TransformerEngine's clamp,
    // where FORMATS.md is silent).
    const auto groups = FiniteByGroup(x, g);
    std::vector<float> block_amax(n, 0.0f);
    float tensor_amax = 0.0f;
    for (size_t k = 0; k < n; ++k) {
      for (float v : groups[k]) block_amax[k] = std::max(block_amax[k], std::fabs(v));
      tensor_amax = std::max(tensor_amax, block_amax[k]);
    }
    float s_enc = 1.0f;
    if (tensor_amax > 0.0f) {
      s_enc = 2688.0f / tensor_amax;
      if (std::isinf(s_enc)) s_enc = std::numeric_limits<float>::max();
    }
    r.global_scale = s_enc;
    const float per_element = s_enc / 6.0f;
    std::vector<float> element_scales(n);
    for (size_t k = 0; k < n; ++k) {
      const float product = block_amax[k] * per_element;
      const uint32_t s_b =
          EncodeMinifloat(kE4M3, product, Rounding::kNearestEven, 0u, Overflow::kSaturate);
      r.scales[k] = static_cast<float>(MinifloatValue(kE4M3, s_b));
      element_scales[k] = r.scales[k] / s_enc;
    }
    r.codes.resize(x.size());
    r.x_hat.resize(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const size_t k = static_cast<size_t>(g.group_of[i]);
      r.codes[i] = QuantizeOne(r.spec, x[i], element_scales[k], 0, i);
      // "x̂ = fp32(e2m1 · d_b)"
      r.x_hat[i] = DequantizeCode(info, r.codes[i], element_scales[k], 0);
    }
    r.packed_codes = Pack(r.codes, g.rows, g.cols, info.bits, r.spec.packing);
    r.metrics = ComputeMetrics(x, r.x_hat);
    return r;
  } else {
    const auto groups = FiniteByGroup(x, g);
    for (size_t k = 0; k < n; ++k) {
      if (!ScaleOf(info, r.spec.asymmetric, r.spec.clip, groups[k], &r.scales[k], &zps[k],
                   r.spec.scale_rounding)) {
        r.status = absl::InvalidArgumentError(
            absl::StrCat("oracle: asymmetric range of scale group ", k, " overflows float32"));
        return r;
      }
    }
  }
  if (r.spec.asymmetric) r.zero_points = zps;
  r.codes.resize(x.size());
  r.x_hat.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const size_t k = static_cast<size_t>(g.group_of[i]);
    r.codes[i] = QuantizeOne(r.spec, x[i], r.scales[k], zps[k], i);
    r.x_hat[i] = DequantizeCode(info, r.codes[i], r.scales[k], zps[k]);
  }
  r.packed_codes = Pack(r.codes, g.rows, g.cols, info.bits, r.spec.packing);
  r.metrics = ComputeMetrics(x, r.x_hat);
  return r;
}

std::vector<float> Dequantize(const std::vector<uint8_t>& packed, const std::vector<float>& scales,
                              const std::vector<int32_t>& zero_points, const Shape& shape,
                              const Resolved& spec, float global_scale) {
  const Grouping g = GroupElements(spec, shape);
  const std::vector<uint32_t> codes = Unpack(packed, g.rows, g.cols, spec.info->bits, spec.packing);
  std::vector<float> out(codes.size());
  for (size_t i = 0; i < codes.size(); ++i) {
    const size_t k = static_cast<size_t>(g.group_of[i]);
    const int32_t zp = spec.asymmetric ? zero_points[k] : 0;
    // NVFP4: "d_b = fp32(decode(s_b) / S_enc)", "x̂ = fp32(e2m1 · d_b)".
    const float s = spec.info->nvfp4_block > 0 ? scales[k] / global_scale : scales[k];
    out[i] = DequantizeCode(*spec.info, codes[i], s, zp);
  }
  return out;
}

double NumpyPercentile(std::vector<double> values, double q) {
  // numpy.percentile(a, q, method='linear') (numpy >= 1.22): virtual index (n - 1)·q/100 into
  // the sorted values, then _lerp(prev, next, gamma) which evaluates b - (b - a)·(1 - t) when
  // t >= 0.5 (monotone and exact at the ends).
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const double n = static_cast<double>(values.size());
  const double quantile = q / 100.0;
  const double virtual_index = (n - 1.0) * quantile;
  double prev_index = std::floor(virtual_index);
  double next_index = prev_index + 1.0;
  if (virtual_index >= n - 1.0) prev_index = next_index = n - 1.0;
  if (virtual_index < 0.0) prev_index = next_index = 0.0;
  const double a = values[static_cast<size_t>(prev_index)];
  const double b = values[static_cast<size_t>(next_index)];
  const double gamma = virtual_index - prev_index;
  const double diff = b - a;
  if (gamma >= 0.5) return b - diff * (1.0 - gamma);
  return a + diff * gamma;
}

std::vector<float> MseGrid(const CalibrationOptions& options) {
  std::vector<float> grid;
  const int steps = options.search_steps;
  grid.push_back(1.0f);
  for (int k = 1; k < steps; ++k) {
    grid.push_back(static_cast<float>(1.0 - static_cast<double>(k) *
                                                (1.0 - options.search_min_ratio) / (steps - 1)));
  }
  return grid;
}

Calibration Calibrate(const std::vector<float>& x, const Shape& shape, const QuantSpec& requested,
                      const CalibrationOptions& options) {
  Calibration c;
  Resolved spec;
  c.status = Resolve(requested, shape, &spec);
  if (!c.status.ok()) return c;
  if (spec.info->block() > 0) {
    // kernels/ choice: MX and NVFP4 scales come from each block when it is quantized, and
    // cannot be given back as static scales, so there is nothing to calibrate.
    c.status = absl::InvalidArgumentError("oracle: calibrating a block format");
    return c;
  }
  c.status = CheckNans(x, spec);
  if (!c.status.ok()) return c;
  // kernels/ choice: MSE candidates are scored under RNE even when the spec rounds
  // stochastically (the expected error, not one draw's, should pick the ratio).
  Resolved scoring = spec;
  scoring.rounding = Rounding::kNearestEven;
  const FormatInfo& info = *spec.info;
  const Grouping g = GroupElements(spec, shape);
  const auto groups = FiniteByGroup(x, g);
  // Flat indices of every finite element of each group (stochastic draws need them).
  std::vector<std::vector<size_t>> members(static_cast<size_t>(g.num_scales));
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isfinite(x[i])) members[static_cast<size_t>(g.group_of[i])].push_back(i);
  }
  const size_t n = static_cast<size_t>(g.num_scales);
  c.scales.assign(n, 1.0f);
  c.zero_points.assign(n, 0);
  c.amax.assign(n, 0.0f);
  c.clip_ratios.assign(n, spec.clip);
  c.mse_of_choice.assign(n, 0.0);
  for (size_t k = 0; k < n; ++k) {
    for (float v : groups[k]) c.amax[k] = std::max(c.amax[k], std::fabs(v));
    switch (options.method) {
      case CalibrationMethod::kPercentile: {
        std::vector<float> stand_in;
        if (!groups[k].empty()) {
          if (spec.asymmetric) {
            std::vector<double> values(groups[k].begin(), groups[k].end());
            stand_in.push_back(static_cast<float>(NumpyPercentile(values, options.percentile)));
            stand_in.push_back(
                static_cast<float>(NumpyPercentile(values, 100.0 - options.percentile)));
          } else {
            std::vector<double> magnitudes;
            for (float v : groups[k]) magnitudes.push_back(std::fabs(static_cast<double>(v)));
            stand_in.push_back(static_cast<float>(NumpyPercentile(magnitudes, options.percentile)));
          }
        }
        if (!ScaleOf(info, spec.asymmetric, spec.clip, stand_in, &c.scales[k], &c.zero_points[k])) {
          c.status = absl::InvalidArgumentError("oracle: asymmetric range overflows float32");
          return c;
        }
        break;
      }
      case CalibrationMethod::kMse: {
        double best = std::numeric_limits<double>::infinity();
        for (float ratio : MseGrid(options)) {
          float s;
          int32_t zp;
          if (!ScaleOf(info, spec.asymmetric, ratio, groups[k], &s, &zp)) {
            c.status = absl::InvalidArgumentError("oracle: asymmetric range overflows float32");
            return c;
          }
          double err = 0.0;
          for (size_t i : members[k]) {
            const uint32_t code = QuantizeOne(scoring, x[i], s, zp, i);
            const double d = static_cast<double>(x[i]) - DequantizeCode(info, code, s, zp);
            err += d * d;
          }
          if (err < best) {  // strict: a tie keeps the larger ratio tried first
            best = err;
            c.scales[k] = s;
            c.zero_points[k] = zp;
            c.clip_ratios[k] = ratio;
            c.mse_of_choice[k] = err;
          }
        }
        break;
      }
      default:
        if (!ScaleOf(info, spec.asymmetric, spec.clip, groups[k], &c.scales[k],
                     &c.zero_points[k])) {
          c.status = absl::InvalidArgumentError("oracle: asymmetric range overflows float32");
          return c;
        }
        break;
    }
  }
  if (!spec.asymmetric) c.zero_points.clear();
  return c;
}

}  // namespace quantd::oracle
