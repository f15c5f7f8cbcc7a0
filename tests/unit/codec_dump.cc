// quantd_codec_dump: the minifloat engine of codec.h as a filter, so that Python tests can
// compare it with ml_dtypes without bindings.
//
//   quantd_codec_dump fp8-e4m3 encode rne saturate  < float32 values  > uint8 codes
//   quantd_codec_dump fp8-e5m2 encode away nonfinite < float32 values > uint8 codes
//   quantd_codec_dump fp8-e4m3 decode               < uint8 codes     > float32 values
//   quantd_codec_dump mxfp4 decode                  < uint8 codes     > float32 values
//   quantd_codec_dump e8m0 decode                   < uint8 codes     > float32 scales
//
// Raw little-endian bytes on stdin and stdout; a usage error or an unknown name exits 2 with
// the reason on stderr.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "quantd/codec.h"
#include "quantd/format.h"

namespace {

int Usage(const std::string& why) {
  std::cerr << "quantd_codec_dump: " << why
            << "\nusage: quantd_codec_dump FORMAT encode (rne|away) (saturate|nonfinite)"
               "\n       quantd_codec_dump FORMAT decode"
               "\n       quantd_codec_dump e8m0 decode\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return Usage("missing arguments");
  if (std::string(argv[1]) == "e8m0") {
    // MX block scales: code c is 2^(c - 127), 0xFF is NaN.
    if (std::string(argv[2]) != "decode" || argc != 3) return Usage("e8m0 only decodes");
    std::vector<char> in((std::istreambuf_iterator<char>(std::cin)),
                         std::istreambuf_iterator<char>());
    std::vector<char> out;
    for (char byte : in) {
      const float v = quantd::ScaleOfE8M0Code(static_cast<uint8_t>(byte), 0);
      const char* p = reinterpret_cast<const char*>(&v);
      out.insert(out.end(), p, p + sizeof(v));
    }
    std::cout.write(out.data(), static_cast<std::streamsize>(out.size()));
    std::cout.flush();
    return std::cout ? 0 : 1;
  }
  absl::StatusOr<quantd::Format> format = quantd::FormatFromName(argv[1]);
  if (!format.ok()) return Usage(std::string(format.status().message()));
  const quantd::FormatTraits& traits = quantd::Traits(*format);
  if (traits.kind != quantd::ElementKind::kMinifloat) {
    return Usage(std::string(argv[1]) + " is not a minifloat format");
  }
  const std::string mode = argv[2];
  std::vector<char> in((std::istreambuf_iterator<char>(std::cin)),
                       std::istreambuf_iterator<char>());
  std::vector<char> out;
  if (mode == "decode") {
    if (argc != 3) return Usage("decode takes no options");
    for (char byte : in) {
      const float v = quantd::MinifloatDecode(traits.minifloat, static_cast<uint8_t>(byte));
      const char* p = reinterpret_cast<const char*>(&v);
      out.insert(out.end(), p, p + sizeof(v));
    }
  } else if (mode == "encode") {
    if (argc != 5) return Usage("encode takes a rounding and an overflow");
    const std::string rounding_name = argv[3], overflow_name = argv[4];
    quantd::Rounding rounding;
    if (rounding_name == "rne") {
      rounding = quantd::Rounding::kNearestEven;
    } else if (rounding_name == "away") {
      rounding = quantd::Rounding::kNearestAway;
    } else {
      return Usage("unknown rounding " + rounding_name);
    }
    quantd::Overflow overflow;
    if (overflow_name == "saturate") {
      overflow = quantd::Overflow::kSaturate;
    } else if (overflow_name == "nonfinite") {
      overflow = quantd::Overflow::kNonfinite;
    } else {
      return Usage("unknown overflow " + overflow_name);
    }
    if (in.size() % sizeof(float) != 0) return Usage("input is not whole float32 values");
    for (size_t i = 0; i < in.size(); i += sizeof(float)) {
      float v;
      std::memcpy(&v, in.data() + i, sizeof(v));
      const uint32_t code =
          quantd::MinifloatEncode(traits.minifloat, v, rounding, /*random_bits=*/0, overflow);
      out.push_back(static_cast<char>(code));
    }
  } else {
    return Usage("unknown mode " + mode);
  }
  std::cout.write(out.data(), static_cast<std::streamsize>(out.size()));
  std::cout.flush();
  return std::cout ? 0 : 1;
}
