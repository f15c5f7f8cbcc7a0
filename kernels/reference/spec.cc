// Descriptor strings, spec resolution against the traits table, and output layouts.
#include "quantd/spec.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "quantd/flatquant.h"
#include "quantd/packing.h"
#include "quantd/status.h"

namespace quantd {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

template <typename Enum>
bool InRange(Enum value, int count) {
  const int v = static_cast<int>(value);
  return v >= 0 && v < count;
}

// Checked a * b for non-negative int64s.
absl::StatusOr<int64_t> CheckedMul(int64_t a, int64_t b, absl::string_view what) {
  if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) {
    return Invalid(absl::StrCat(what, " overflows int64"));
  }
  return a * b;
}

// ceil(a / b) for a >= 0, b > 0, without the overflow of (a + b - 1) / b.
int64_t CeilDiv(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

// Parses the N of "g128" or the R, C of "b128x128".
bool ParsePositive(absl::string_view text, int64_t* value) {
  return absl::SimpleAtoi(text, value) && *value > 0;
}

}  // namespace

namespace {

// The fake_quant_ops grammar e<E>m<M>k<K>b<B>[c] (FORMATS.md "Descriptor strings"): E2M1
// elements with 8-bit shared exponents over blocks of 32 is "e2m1k8b32" = mxfp4. K is the
// shared scale's width, which must be 8 (E8M0); B the block size along the last axis; `c`
// ("carry") rounds the shared exponent to nearest (ScaleRounding::kNearest) instead of down.
// False when `text` is not of that shape; an error when it is but names what quantd lacks.
absl::StatusOr<bool> ParseBlockGrammar(absl::string_view text, QuantSpec* parsed) {
  int64_t numbers[4] = {0, 0, 0, 0};
  const char kLetters[] = {'e', 'm', 'k', 'b'};
  size_t at = 0;
  for (int i = 0; i < 4; ++i) {
    if (at >= text.size() || text[at] != kLetters[i]) return false;
    const size_t begin = ++at;
    while (at < text.size() && absl::ascii_isdigit(static_cast<unsigned char>(text[at]))) ++at;
    if (at == begin || at - begin > 6 ||
        !absl::SimpleAtoi(text.substr(begin, at - begin), &numbers[i])) {
      return false;
    }
  }
  const bool carry = at < text.size() && text[at] == 'c';
  if (carry) ++at;
  if (at != text.size()) return false;
  struct Element {
    int64_t e, m;
    Format format;
  };
  constexpr Element kElements[] = {{4, 3, Format::kMxfp8E4M3},
                                   {5, 2, Format::kMxfp8E5M2},
                                   {3, 2, Format::kMxfp6E3M2},
                                   {2, 3, Format::kMxfp6E2M3},
                                   {2, 1, Format::kMxfp4}};
  const Element* element = nullptr;
  for (const Element& candidate : kElements) {
    if (candidate.e == numbers[0] && candidate.m == numbers[1]) element = &candidate;
  }
  if (element == nullptr) {
    return Invalid(absl::StrCat("descriptor \"", text, "\": quantd has no e", numbers[0], "m",
                                numbers[1],
                                " elements; e<E>m<M>k8b<B>[c] takes e4m3, e5m2, e3m2, e2m3 and "
                                "e2m1"));
  }
  if (numbers[2] != 8) {
    return Invalid(absl::StrCat("descriptor \"", text, "\": shared scales are E8M0, k8 (not k",
                                numbers[2], ")"));
  }
  if (numbers[3] <= 0) {
    return Invalid(absl::StrCat("descriptor \"", text, "\": the block size b<B> must be > 0"));
  }
  parsed->format = element->format;
  parsed->granularity = Granularity::kGroup;
  parsed->group_size = numbers[3];
  parsed->scale_rounding = carry ? ScaleRounding::kNearest : ScaleRounding::kUnspecified;
  return true;
}

// The side of a square matrix of `values` entries, or -1 when that is not a square.
int64_t SquareSide(size_t values) {
  const int64_t side = IntegerSqrt(static_cast<int64_t>(values));
  return side * side == static_cast<int64_t>(values) ? side : -1;
}

// FlatQuant's P1 and P2 for `shape` (its last dim is hidden = n1 · n2): as given (both square,
// finite, their sizes multiplying to hidden, each side at most kMaxTransformSide), or
// identities of DecomposeDim(hidden).
absl::Status ResolveTransform(const Shape& shape, QuantSpec* spec) {
  const int64_t hidden = shape.empty() ? 1 : shape.back();
  const auto [d1, d2] = DecomposeDim(hidden);
  const bool has_identities = d1 > 0 || hidden == 0;
  if (spec->transform_left.empty() && spec->transform_right.empty()) {
    if (!has_identities) {
      return Invalid(absl::StrCat(
          "flatquant-int4: get_decompose_dim cannot split the last dim ", hidden,
          hidden % 4 == 2 ? " (it is 2 mod 4, and n1 · n2 needs n2 - n1 even)"
                          : absl::StrCat(" into factors of at most ", kMaxTransformSide),
          "; give the transform matrices (flatquant_left / flatquant_right)"));
    }
    spec->transform_left.assign(static_cast<size_t>(d1 * d1), 0.0f);
    spec->transform_right.assign(static_cast<size_t>(d2 * d2), 0.0f);
    for (int64_t i = 0; i < d1; ++i) spec->transform_left[i * d1 + i] = 1.0f;
    for (int64_t i = 0; i < d2; ++i) spec->transform_right[i * d2 + i] = 1.0f;
    return absl::OkStatus();
  }
  const int64_t n1 = SquareSide(spec->transform_left.size());
  const int64_t n2 = SquareSide(spec->transform_right.size());
  if (n1 <= 0 || n2 <= 0) {
    return Invalid(absl::StrCat("flatquant-int4 needs both transform matrices, square: left has ",
                                spec->transform_left.size(), " values and right ",
                                spec->transform_right.size(),
                                " (give n1 × n1 and n2 × n2 with n1 · n2 = ", hidden,
                                has_identities ? ", or neither for identities" : "", ")"));
  }
  if (n1 * n2 != hidden) {
    return Invalid(absl::StrCat("flatquant-int4 transform matrices are ", n1, " × ", n1, " and ",
                                n2, " × ", n2, ", but ", n1, " · ", n2, " != ", hidden,
                                ", the last dim of shape ", ShapeToString(shape)));
  }
  if (std::max(n1, n2) > kMaxTransformSide) {
    return Invalid(absl::StrCat("flatquant-int4 transform matrices are ", n1, " × ", n1, " and ",
                                n2, " × ", n2, "; each side must be at most ", kMaxTransformSide));
  }
  for (const std::vector<float>* m : {&spec->transform_left, &spec->transform_right}) {
    for (size_t i = 0; i < m->size(); ++i) {
      if (!std::isfinite((*m)[i])) {
        return Invalid(absl::StrCat("flatquant-int4 transform ",
                                    m == &spec->transform_left ? "left" : "right", "[", i,
                                    "] is not finite"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

// Grammar: <format>[-asym|-sym][-tensor|-channel|-token|-g<N>|-b<R>x<C>], e.g. "int8",
// "int8-asym", "int4-g128", "fp8-e4m3-b128x128", "int8-token"; and e<E>m<M>k<K>b<B>[c].
absl::Status ApplyDescriptor(absl::string_view descriptor, QuantSpec* spec) {
  std::string text = absl::AsciiStrToLower(absl::StripAsciiWhitespace(descriptor));
  // FORMATS.md: "mxfp8 (= mxfp8e4m3)".
  if (absl::StartsWith(text, "mxfp8e4m3")) text = absl::StrCat("mxfp8", text.substr(9));
  auto unknown = [&](absl::string_view why) {
    return Invalid(absl::StrCat("unknown descriptor \"", descriptor, "\" (", why,
                                "); accepted: ", DescriptorHelp()));
  };
  auto conflict = [&](absl::string_view field) {
    return Invalid(absl::StrCat("descriptor \"", descriptor, "\" contradicts the spec's ", field,
                                "; set one or the other"));
  };
  {
    QuantSpec grammar;
    QUANTD_ASSIGN_OR_RETURN(const bool matched, ParseBlockGrammar(text, &grammar));
    if (matched) {
      if (spec->format != Format::kUnspecified && spec->format != grammar.format) {
        return conflict("format");
      }
      if ((spec->granularity != Granularity::kUnspecified &&
           spec->granularity != Granularity::kGroup) ||
          (spec->group_size != 0 && spec->group_size != grammar.group_size)) {
        return conflict("granularity or group size");
      }
      if (grammar.scale_rounding != ScaleRounding::kUnspecified &&
          spec->scale_rounding != ScaleRounding::kUnspecified &&
          spec->scale_rounding != grammar.scale_rounding) {
        return conflict("scale rule");
      }
      spec->format = grammar.format;
      spec->granularity = Granularity::kGroup;
      spec->group_size = grammar.group_size;
      if (grammar.scale_rounding != ScaleRounding::kUnspecified) {
        spec->scale_rounding = grammar.scale_rounding;
      }
      return absl::OkStatus();
    }
  }
  // The longest format name that is a prefix ending at '-' or the end ("fp8-e4m3" before "fp8").
  Format format = Format::kUnspecified;
  size_t name_length = 0;
  for (Format candidate : AllFormats()) {
    const absl::string_view name = Traits(candidate).name;
    if (absl::StartsWith(text, name) && (text.size() == name.size() || text[name.size()] == '-') &&
        name.size() > name_length) {
      format = candidate;
      name_length = name.size();
    }
  }
  if (format == Format::kUnspecified) return unknown("no such format");

  QuantSpec parsed;
  parsed.format = format;
  bool symmetry_named = false;
  const absl::string_view rest = absl::string_view(text).substr(name_length);
  // Tokens after the name, e.g. "asym" and "g128" in "int4-asym-g128".
  for (absl::string_view token : absl::StrSplit(rest, '-', absl::SkipEmpty())) {
    int64_t a = 0, b = 0;
    if (token == "asym" || token == "sym") {
      if (symmetry_named) return unknown("symmetry named twice");
      symmetry_named = true;
      parsed.asymmetric = token == "asym";
      continue;
    }
    if (parsed.granularity != Granularity::kUnspecified) {
      return unknown(absl::StrCat("unexpected \"", token, "\" after the granularity"));
    }
    if (token == "tensor") {
      parsed.granularity = Granularity::kTensor;
    } else if (token == "channel") {
      parsed.granularity = Granularity::kChannel;
    } else if (token == "token") {
      parsed.granularity = Granularity::kToken;
    } else if (token.size() > 1 && token[0] == 'g' && ParsePositive(token.substr(1), &a)) {
      parsed.granularity = Granularity::kGroup;
      parsed.group_size = a;
    } else if (std::vector<absl::string_view> rc = absl::StrSplit(token.substr(1), 'x');
               token.size() > 1 && token[0] == 'b' && rc.size() == 2 && ParsePositive(rc[0], &a) &&
               ParsePositive(rc[1], &b)) {
      parsed.granularity = Granularity::kBlock;
      parsed.block_rows = a;
      parsed.block_cols = b;
    } else {
      return unknown(absl::StrCat("cannot read \"", token, "\""));
    }
  }

  if (spec->format != Format::kUnspecified && spec->format != parsed.format) {
    return conflict("format");
  }
  spec->format = parsed.format;
  if (parsed.granularity != Granularity::kUnspecified) {
    if (spec->granularity != Granularity::kUnspecified && spec->granularity != parsed.granularity) {
      return conflict("granularity");
    }
    if ((spec->group_size != 0 && spec->group_size != parsed.group_size) ||
        (spec->block_rows != 0 && spec->block_rows != parsed.block_rows) ||
        (spec->block_cols != 0 && spec->block_cols != parsed.block_cols)) {
      return conflict("group or block size");
    }
    spec->granularity = parsed.granularity;
    spec->group_size = parsed.group_size;
    spec->block_rows = parsed.block_rows;
    spec->block_cols = parsed.block_cols;
  }
  if (!Traits(parsed.format).symmetric_ok) {
    if (symmetry_named && !parsed.asymmetric) {
      return unknown(absl::StrCat(Traits(parsed.format).name, " is asymmetric only"));
    }
    symmetry_named = true;
    parsed.asymmetric = true;
  }
  if (symmetry_named) {
    if (spec->asymmetric && !parsed.asymmetric) return conflict("asymmetric flag");
    spec->asymmetric = parsed.asymmetric;
  }
  return absl::OkStatus();
}

std::vector<std::string> DescriptorExamples() {
  std::vector<std::string> examples;
  for (Format format : AllFormats()) {
    const FormatTraits& t = Traits(format);
    examples.emplace_back(t.name);
    if (t.asymmetric_ok && t.symmetric_ok) examples.push_back(absl::StrCat(t.name, "-asym"));
  }
  examples.emplace_back("int4-g128");
  examples.emplace_back("int8-token");
  examples.emplace_back("fp8-e4m3-b128x128");
  examples.emplace_back("e2m1k8b32");
  examples.emplace_back("e4m3k8b32c");
  return examples;
}

std::string DescriptorHelp() {
  return absl::StrCat(absl::StrJoin(DescriptorExamples(), ", "),
                      "; in general <format>[-asym|-sym][-tensor|-channel|-token|-g<N>|-b<R>x<C>] "
                      "or e<E>m<M>k8b<B>[c] (E,M: 4,3 5,2 3,2 2,3 2,1; c: shared exponent "
                      "rounded to nearest)");
}

std::string DescriptorOf(const QuantSpec& spec) {
  std::string name(FormatName(spec.format));
  const FormatTraits& t = Traits(spec.format);
  if (t.block.size > 0) {
    // The name implies the blocks; MX blocks of another size are a group.
    if (spec.group_size != t.block.size) absl::StrAppend(&name, "-g", spec.group_size);
    return name;
  }
  if (spec.asymmetric && t.symmetric_ok) absl::StrAppend(&name, "-asym");
  if (spec.granularity == DefaultGranularity(spec.format)) return name;
  switch (spec.granularity) {
    case Granularity::kChannel:
      absl::StrAppend(&name, "-channel");
      break;
    case Granularity::kToken:
      absl::StrAppend(&name, "-token");
      break;
    case Granularity::kGroup:
      absl::StrAppend(&name, "-g", spec.group_size);
      break;
    case Granularity::kBlock:
      absl::StrAppend(&name, "-b", spec.block_rows, "x", spec.block_cols);
      break;
    default:
      break;
  }
  return name;
}

absl::StatusOr<QuantSpec> ResolveSpec(const QuantSpec& requested, const Shape& shape) {
  QuantSpec spec = requested;
  if (!IsValidFormat(static_cast<int32_t>(spec.format)) || spec.format == Format::kUnspecified) {
    return Invalid(absl::StrCat(
        "spec names no format; set format or descriptor (accepted: ", DescriptorHelp(), ")"));
  }
  const FormatTraits& t = Traits(spec.format);
  const absl::string_view name = t.name;
  if (!InRange(spec.granularity, kNumGranularities)) {
    return Invalid(
        absl::StrCat("granularity ", static_cast<int>(spec.granularity), " is not a granularity"));
  }
  if (!InRange(spec.rounding, 4) || !InRange(spec.overflow, 3) || !InRange(spec.nan_policy, 4) ||
      !InRange(spec.packing, 4)) {
    return Invalid("spec has an unknown rounding, overflow, nan_policy or packing value");
  }
  QUANTD_ASSIGN_OR_RETURN(const int64_t numel, NumElements(shape));
  (void)numel;
  const int rank = static_cast<int>(shape.size());

  // Block formats (MX, NVFP4, NF4): blocks of a size the traits bound, scales computed from
  // each block.
  if (!InRange(spec.scale_rounding, 5)) {
    return Invalid(absl::StrCat("scale_rule ", static_cast<int>(spec.scale_rounding),
                                " is not a scale rule; use floor, rceil, even or nearest"));
  }
  if (t.block.size > 0) {
    if (spec.granularity == Granularity::kUnspecified)
      spec.granularity = DefaultGranularity(spec.format);
    if (spec.granularity == Granularity::kGroup && spec.group_size == 0) {
      spec.group_size = t.block.size;
    }
    const BlockParams& b = t.block;
    // MX: any size (the fake_quant_ops grammar's b<B>); NF4: bitsandbytes' 32..4096.
    const std::string sizes =
        b.min_size == b.max_size
            ? ""
            : (b.min_size == 1 ? " (or group_size)"
                               : absl::StrCat(" (group_size ", b.min_size, "..", b.max_size, ")"));
    if (spec.granularity != Granularity::kGroup || spec.group_size < b.min_size ||
        spec.group_size > b.max_size) {
      return Invalid(absl::StrCat(name, " scales blocks of ", b.size, sizes, " elements ",
                                  b.flattened ? "over the flattened tensor" : "along the last axis",
                                  ": leave granularity and group_size unset (or group, ", b.size,
                                  ")"));
    }
    if (spec.has_static_scales()) {
      return Invalid(absl::StrCat(name, " block scales are computed from each block",
                                  t.scale_kind == ScaleKind::kE8M0 ? " (powers of two)" : "",
                                  "; static scales are not supported"));
    }
    if (spec.clip_ratio != 0.0f && spec.clip_ratio != 1.0f) {
      return Invalid(absl::StrCat("clip_ratio does not apply to ", name,
                                  ": the block scales come from each block's amax"));
    }
    if (spec.overflow == Overflow::kNonfinite) {
      return Invalid(absl::StrCat(name, " elements saturate: use overflow saturate"));
    }
  }
  if (t.scale_kind == ScaleKind::kE8M0) {
    if (spec.scale_rounding == ScaleRounding::kUnspecified) {
      spec.scale_rounding = ScaleRounding::kFloor;
    }
  } else if (spec.scale_rounding != ScaleRounding::kUnspecified) {
    return Invalid(absl::StrCat(
        "scale_rule applies to MX formats (mxfp8, mxfp4, ...); ", name,
        t.scale_kind == ScaleKind::kE4M3 ? " has E4M3 block scales" : " has fp32 scales",
        ": leave it unset"));
  }

  // FlatQuant: the transform's matrices, square and as large as the last dim's factors.
  if (t.kronecker_transform) {
    QUANTD_RETURN_IF_ERROR(ResolveTransform(shape, &spec));
  } else if (!spec.transform_left.empty() || !spec.transform_right.empty()) {
    return Invalid(
        absl::StrCat("transform matrices are for flatquant-int4; ", name, " takes none"));
  }
  if (spec.static_global_scale != 0.0f) {
    if (t.scale_kind != ScaleKind::kE4M3) {
      return Invalid(absl::StrCat("static_global_scale is NVFP4's per-tensor S_enc; ", name,
                                  " has no global scale: leave it unset"));
    }
    if (!(std::isfinite(spec.static_global_scale) && spec.static_global_scale > 0.0f)) {
      return Invalid(absl::StrCat("static_global_scale is ", spec.static_global_scale,
                                  "; it must be finite and > 0 (or unset: S_enc from the "
                                  "tensor's amax)"));
    }
  }
  if (spec.double_quant && t.kind != ElementKind::kNf4) {
    return Invalid(
        absl::StrCat("double_quant (bitsandbytes' nested absmax quantization) is for "
                     "nf4; ",
                     name, " takes no double quantization"));
  }

  // Granularity and its parameters.
  if (spec.granularity == Granularity::kUnspecified)
    spec.granularity = DefaultGranularity(spec.format);
  if (!FormatAllows(spec.format, spec.granularity)) {
    if (spec.granularity == Granularity::kNone) {
      return Invalid(absl::StrCat("granularity none is a plain cast for minifloat formats; ", name,
                                  " needs a scale: use tensor, channel, token, group or block"));
    }
    return Invalid(
        absl::StrCat(name, " does not support granularity ", GranularityName(spec.granularity)));
  }
  if (spec.granularity == Granularity::kChannel) {
    if (rank == 0) return Invalid("granularity channel needs a tensor of rank >= 1");
    if (spec.axis < -rank || spec.axis >= rank) {
      return Invalid(absl::StrCat("axis ", spec.axis, " is out of range for shape ",
                                  ShapeToString(shape), "; use -", rank, "..", rank - 1));
    }
    if (spec.axis < 0) spec.axis += rank;
  } else if (spec.axis != 0) {
    return Invalid(absl::StrCat("axis is set but granularity is ",
                                GranularityName(spec.granularity),
                                "; axis applies to granularity channel"));
  }
  if (spec.granularity == Granularity::kGroup) {
    if (spec.group_size <= 0) {
      return Invalid(
          absl::StrCat("granularity group needs group_size > 0 (e.g. 128), got ", spec.group_size));
    }
  } else if (spec.group_size != 0) {
    return Invalid(absl::StrCat("group_size is set but granularity is ",
                                GranularityName(spec.granularity),
                                "; use granularity group or drop group_size"));
  }
  if (spec.granularity == Granularity::kBlock) {
    if (spec.block_rows == 0 && spec.block_cols == 0) {
      spec.block_rows = spec.block_cols = 128;  // the DeepSeek / TE weight tile
    }
    if (spec.block_rows <= 0 || spec.block_cols <= 0) {
      return Invalid(
          absl::StrCat("granularity block needs block_rows and block_cols > 0 (e.g. "
                       "128x128), got ",
                       spec.block_rows, "x", spec.block_cols));
    }
  } else if (spec.block_rows != 0 || spec.block_cols != 0) {
    return Invalid(absl::StrCat("block size is set but granularity is ",
                                GranularityName(spec.granularity),
                                "; use granularity block or drop the block size"));
  }

  // Symmetry.
  if (spec.asymmetric && !t.asymmetric_ok) {
    return Invalid(absl::StrCat(name, " is symmetric only; drop asymmetric"));
  }
  // Asymmetric-only formats (uint8, uint4) need no flag: proto3 cannot tell an unset bool
  // from false, so "symmetric" is only ever the default, and the applied spec says asymmetric.
  if (!t.symmetric_ok) spec.asymmetric = true;

  // Rounding, overflow, NaN policy, packing.
  if (t.kind == ElementKind::kNf4 && spec.rounding != Rounding::kUnspecified &&
      spec.rounding != Rounding::kNearestEven) {
    return Invalid(absl::StrCat(name,
                                " takes the nearest of its 16 values by bitsandbytes' "
                                "decision tree: rounding does not apply; leave it unset"));
  }
  if (t.kind == ElementKind::kHif8) {
    // FORMATS.md: ties away from zero is HiF8's only rounding.
    if (spec.rounding == Rounding::kUnspecified) spec.rounding = Rounding::kNearestAway;
    if (spec.rounding != Rounding::kNearestAway) {
      return Invalid(absl::StrCat(name,
                                  " rounds half away from zero only (HiFloat8): use "
                                  "rounding away or leave it unset"));
    }
  }
  if (spec.rounding == Rounding::kUnspecified) spec.rounding = Rounding::kNearestEven;
  if (spec.overflow == Overflow::kUnspecified) spec.overflow = Overflow::kSaturate;
  if (spec.overflow == Overflow::kNonfinite && !t.has_inf && !t.has_nan) {
    return Invalid(absl::StrCat(name,
                                " has no Inf or NaN, so overflow nonfinite cannot apply; use "
                                "saturate"));
  }
  if (spec.nan_policy == NanPolicy::kUnspecified) {
    spec.nan_policy = t.has_nan ? NanPolicy::kPropagate : NanPolicy::kReject;
  }
  if (spec.nan_policy == NanPolicy::kPropagate && !t.has_nan) {
    return Invalid(absl::StrCat(name, " has no NaN to propagate; use nan_policy reject or zero"));
  }
  if (spec.packing == Packing::kUnspecified) {
    // NF4 packs as bitsandbytes does: element 0 in the high nibble.
    spec.packing = t.kind == ElementKind::kNf4 ? Packing::kHighNibbleFirst : Packing::kBitstream;
  }
  if (spec.packing == Packing::kHighNibbleFirst && t.kind != ElementKind::kNf4) {
    return Invalid(absl::StrCat("packing high_nibble_first (bitsandbytes) is for nf4; ", name,
                                " uses bitstream"));
  }
  if (spec.packing == Packing::kInt32Offset &&
      !(t.kind == ElementKind::kInt && t.bits == 4 && t.is_signed)) {
    return Invalid(
        absl::StrCat("packing int32_offset (compressed-tensors pack_to_int32) is for "
                     "int4; ",
                     name, " uses bitstream"));
  }

  // Clip ratio.
  if (spec.clip_ratio == 0.0f) spec.clip_ratio = 1.0f;
  if (!(spec.clip_ratio > 0.0f && spec.clip_ratio <= 1.0f)) {
    return Invalid(absl::StrFormat("clip_ratio must be in (0, 1], got %g", spec.clip_ratio));
  }
  if (spec.clip_ratio != 1.0f &&
      (spec.granularity == Granularity::kNone || spec.has_static_scales())) {
    return Invalid(spec.has_static_scales()
                       ? "clip_ratio shapes dynamic scales; with static scales leave it unset"
                       : "clip_ratio needs a scale; granularity none is a plain cast");
  }

  // Static scales and zero-points.
  QUANTD_ASSIGN_OR_RETURN(const QuantLayout layout, ComputeLayout(spec, shape));
  const int64_t num_scales = layout.geometry.num_scales;
  if (spec.has_static_scales()) {
    if (spec.granularity == Granularity::kNone) {
      return Invalid("static scales need a scale granularity; granularity none is a plain cast");
    }
    if (static_cast<int64_t>(spec.static_scales.size()) != num_scales) {
      return Invalid(absl::StrCat("static_scales has ", spec.static_scales.size(),
                                  " values; granularity ", GranularityName(spec.granularity),
                                  " on shape ", ShapeToString(shape), " needs ", num_scales,
                                  " (shaped ", ShapeToString(layout.scale_shape), ")"));
    }
    for (size_t i = 0; i < spec.static_scales.size(); ++i) {
      const float s = spec.static_scales[i];
      if (!(std::isfinite(s) && s > 0.0f)) {
        return Invalid(
            absl::StrFormat("static_scales[%d] = %g; scales must be finite and > 0", i, s));
      }
    }
  }
  if (!spec.static_zero_points.empty()) {
    if (!spec.asymmetric) {
      return Invalid(
          "static_zero_points are for asymmetric quantization; set asymmetric or drop "
          "them");
    }
    if (!spec.has_static_scales()) {
      return Invalid("static_zero_points need static_scales too");
    }
    if (static_cast<int64_t>(spec.static_zero_points.size()) != num_scales) {
      return Invalid(absl::StrCat("static_zero_points has ", spec.static_zero_points.size(),
                                  " values; needs ", num_scales, " like static_scales"));
    }
    for (size_t i = 0; i < spec.static_zero_points.size(); ++i) {
      const int32_t zp = spec.static_zero_points[i];
      if (zp < t.qmin || zp > t.qmax) {
        return Invalid(absl::StrCat("static_zero_points[", i, "] = ", zp, " is outside ", name,
                                    "'s range [", t.qmin, ", ", t.qmax, "]"));
      }
    }
  } else if (spec.asymmetric && spec.has_static_scales()) {
    return Invalid("asymmetric static quantization needs static_zero_points beside static_scales");
  }
  return spec;
}

absl::StatusOr<QuantLayout> ComputeLayout(const QuantSpec& spec, const Shape& shape) {
  QuantLayout layout;
  layout.shape = shape;
  QUANTD_ASSIGN_OR_RETURN(layout.numel, NumElements(shape));
  const int rank = static_cast<int>(shape.size());
  ScaleGeometry& g = layout.geometry;
  g.granularity = spec.granularity;
  g.cols = rank == 0 ? 1 : shape.back();
  g.rows = 1;
  for (int i = 0; i + 1 < rank; ++i) g.rows *= shape[i];  // ≤ numel, or a factor of 0 dims
  // NF4's blocks run over the flattened tensor: its 2-D view is one row.
  const bool flattened = Traits(spec.format).block.flattened;
  if (flattened) {
    g.rows = 1;
    g.cols = layout.numel;
  }

  switch (spec.granularity) {
    case Granularity::kNone:
    case Granularity::kTensor:
      layout.scale_shape = {1};
      g.num_scales = 1;
      break;
    case Granularity::kChannel: {
      if (spec.axis < 0 || spec.axis >= rank) return Invalid("channel axis out of range");
      g.channels = shape[spec.axis];
      g.channel_is_last = spec.axis == rank - 1;
      g.rows_per_channel = 1;
      for (int i = spec.axis + 1; i + 1 < rank; ++i) g.rows_per_channel *= shape[i];
      if (g.rows_per_channel == 0) g.rows_per_channel = 1;  // empty tensor: never indexed
      if (g.channels == 0) g.channels = 1;
      layout.scale_shape.assign(rank, 1);
      layout.scale_shape[spec.axis] = shape[spec.axis];
      g.num_scales = shape[spec.axis];
      break;
    }
    case Granularity::kToken:
      layout.scale_shape = {g.rows, 1};
      g.num_scales = g.rows;
      break;
    case Granularity::kGroup:
    case Granularity::kBlock: {
      const bool block = spec.granularity == Granularity::kBlock;
      const int64_t group_cols = block ? spec.block_cols : spec.group_size;
      const int64_t group_rows = block ? spec.block_rows : 1;
      if (group_cols <= 0 || group_rows <= 0) return Invalid("group or block size must be > 0");
      g.group_cols = group_cols;
      g.group_rows = group_rows;
      g.groups_per_row = CeilDiv(g.cols, group_cols);
      const int64_t scale_rows = CeilDiv(g.rows, group_rows);
      layout.scale_shape = {scale_rows, g.groups_per_row};
      if (flattened) layout.scale_shape = {g.groups_per_row};  // bitsandbytes' absmax
      QUANTD_ASSIGN_OR_RETURN(g.num_scales,
                              CheckedMul(scale_rows, g.groups_per_row, "number of scales"));
      break;
    }
    default:
      return Invalid("spec granularity is unresolved");
  }

  // Scales are 4 bytes each (plus as many zero-points); their byte count must fit int64.
  QUANTD_ASSIGN_OR_RETURN(const int64_t scale_bytes,
                          CheckedMul(g.num_scales, 8, "size of the scales"));
  (void)scale_bytes;

  const FormatTraits& t = Traits(spec.format);
  const Packing packing =
      spec.packing == Packing::kUnspecified ? Packing::kBitstream : spec.packing;
  layout.code_row_bytes = PackedRowBytes(g.cols, t.bits, packing);
  QUANTD_ASSIGN_OR_RETURN(layout.code_bytes,
                          CheckedMul(g.rows, layout.code_row_bytes, "packed code size"));
  layout.code_dtype = packing == Packing::kInt32Offset
                          ? DType::kI32
                          : (spec.format == Format::kInt8 ? DType::kI8 : DType::kU8);
  if (t.bits == 8) {
    layout.code_shape = shape;
  } else if (flattened) {
    layout.code_shape = {layout.code_row_bytes};  // bitsandbytes packs the flattened tensor
  } else {
    layout.code_shape = rank == 0 ? Shape{} : Shape(shape.begin(), shape.end() - 1);
    layout.code_shape.push_back(packing == Packing::kInt32Offset ? layout.code_row_bytes / 4
                                                                 : layout.code_row_bytes);
  }
  return layout;
}

absl::string_view RoundingName(Rounding rounding) {
  switch (rounding) {
    case Rounding::kNearestEven:
      return "rne";
    case Rounding::kStochastic:
      return "stochastic";
    case Rounding::kNearestAway:
      return "away";
    default:
      return "unspecified";
  }
}

absl::string_view OverflowName(Overflow overflow) {
  switch (overflow) {
    case Overflow::kSaturate:
      return "saturate";
    case Overflow::kNonfinite:
      return "nonfinite";
    default:
      return "unspecified";
  }
}

absl::StatusOr<Rounding> RoundingFromName(absl::string_view name) {
  const std::string lowered = absl::AsciiStrToLower(name);
  if (lowered == "rne" || lowered == "nearest_even") return Rounding::kNearestEven;
  if (lowered == "stochastic") return Rounding::kStochastic;
  if (lowered == "away" || lowered == "nearest_away") return Rounding::kNearestAway;
  return Invalid(absl::StrCat("unknown rounding \"", name, "\"; accepted: rne, stochastic, away"));
}

absl::StatusOr<Overflow> OverflowFromName(absl::string_view name) {
  const std::string lowered = absl::AsciiStrToLower(name);
  if (lowered == "saturate") return Overflow::kSaturate;
  if (lowered == "nonfinite") return Overflow::kNonfinite;
  return Invalid(absl::StrCat("unknown overflow \"", name, "\"; accepted: saturate, nonfinite"));
}

std::string SpecToString(const QuantSpec& spec) {
  std::string text = absl::StrCat(FormatName(spec.format), " ", GranularityName(spec.granularity));
  switch (spec.granularity) {
    case Granularity::kChannel:
      absl::StrAppend(&text, "(axis ", spec.axis, ")");
      break;
    case Granularity::kGroup:
      absl::StrAppend(&text, "(", spec.group_size, ")");
      break;
    case Granularity::kBlock:
      absl::StrAppend(&text, "(", spec.block_rows, "x", spec.block_cols, ")");
      break;
    default:
      break;
  }
  absl::StrAppend(&text, spec.asymmetric ? " asymmetric " : " symmetric ",
                  RoundingName(spec.rounding), " ", OverflowName(spec.overflow));
  if (spec.clip_ratio != 1.0f && spec.clip_ratio != 0.0f) {
    absl::StrAppend(&text, absl::StrFormat(" clip %g", spec.clip_ratio));
  }
  if (spec.has_static_scales()) absl::StrAppend(&text, " static");
  if (spec.static_global_scale != 0.0f) {
    absl::StrAppend(&text, absl::StrFormat(" global %g", spec.static_global_scale));
  }
  if (spec.double_quant) absl::StrAppend(&text, " double-quant");
  return text;
}

}  // namespace quantd
