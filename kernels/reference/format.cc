// Names of formats and granularities, read off the traits table.
#include "quantd/format.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace quantd {
namespace {

constexpr absl::string_view kGranularityNames[kNumGranularities] = {
    "unspecified", "none", "tensor", "channel", "token", "group", "block"};

}  // namespace

std::vector<Format> AllFormats() {
  std::vector<Format> formats;
  for (const FormatTraits& traits : kFormatTraits) {
    if (traits.format != Format::kUnspecified) formats.push_back(traits.format);
  }
  return formats;
}

absl::string_view FormatName(Format format) {
  if (!IsValidFormat(static_cast<int32_t>(format))) return "invalid";
  return Traits(format).name;
}

absl::string_view GranularityName(Granularity granularity) {
  const int index = static_cast<int>(granularity);
  if (index < 0 || index >= kNumGranularities) return "invalid";
  return kGranularityNames[index];
}

absl::StatusOr<Format> FormatFromName(absl::string_view name) {
  const std::string lowered = absl::AsciiStrToLower(name);
  std::vector<absl::string_view> accepted;
  for (Format format : AllFormats()) {
    if (Traits(format).name == lowered) return format;
    accepted.push_back(Traits(format).name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown format \"", name, "\"; accepted: ", absl::StrJoin(accepted, ", ")));
}

absl::StatusOr<Granularity> GranularityFromName(absl::string_view name) {
  const std::string lowered = absl::AsciiStrToLower(name);
  for (int i = 1; i < kNumGranularities; ++i) {
    if (kGranularityNames[i] == lowered) return static_cast<Granularity>(i);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown granularity \"", name, "\"; accepted: none, tensor, channel, token, group, block"));
}

}  // namespace quantd
