#include "compress.h"

#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "file_util.h"
#include "json.h"
#include "quantd/codec.h"
#include "quantd/status.h"
#include "quantd/tensor.h"
#include "re2/re2.h"

namespace quantd::compress {
namespace {

namespace fs = std::filesystem;
using safetensors::DType;

// ---- The schemes ----------------------------------------------------------------------------
//
// Each row reproduces a compressed-tensors preset (quantization/quant_scheme.py PRESET_SCHEMES)
// and its compressor's tensor layout (compressors/<format>/base.py), checked against
// compressed-tensors 0.20.0. The weights / input_activations JSON is what
// QuantizationConfig.model_dump() writes for the preset there (keys sorted as its update_config
// writes them). The numbers are quantd's (FORMATS.md), not compressed-tensors' observers: for
// example its symmetric INT8 scale is amax / 127.5 where ours is amax / 127. The layout says
// only x̂ = q · s (· per format), so both load the same way.
//
// NVFP4 and MXFP4 are the weight-only presets (NVFP4A16, MXFP4A16): NVFP4 with 4-bit
// activations needs an `input_global_scale` per layer calibrated on activations, which a
// data-free weight pass cannot produce, and vLLM runs both A16 forms (W4A16Fp4 / W4A16Mxfp4).
//
// MXFP4 asks for the EVEN scale rule: compressed-tensors' generate_mx_scales rounds amax to a
// power of two by adding 1 << (mantissa - 2) to its bits and masking the mantissa, then
// subtracts E2M1's emax 2 - FORMATS.md's EVEN rule (torchao's), so our E8M0 codes are the ones
// llm-compressor would write for the same weights.
const Scheme kFp8Dynamic = {
    /*name=*/"fp8-dynamic",
    /*preset=*/"FP8_DYNAMIC",
    /*format=*/"float-quantized",
    /*layout=*/WeightLayout::kFloat8,
    /*descriptor=*/"fp8-e4m3",
    /*granularity=*/v1::GRANULARITY_CHANNEL,
    /*group_size=*/0,
    /*block_rows=*/0,
    /*block_cols=*/0,
    /*packing=*/v1::PACKING_UNSPECIFIED,
    /*scale_rule=*/v1::SCALE_RULE_UNSPECIFIED,
    /*in_features_multiple=*/0,
    /*weights_json=*/R"({"dynamic": false, "group_size": null, "num_bits": 8,
        "strategy": "channel", "symmetric": true, "type": "float"})",
    /*input_activations_json=*/R"({"dynamic": true, "group_size": null, "num_bits": 8,
        "strategy": "token", "symmetric": true, "type": "float"})",
};

const Scheme kFp8Block = {
    /*name=*/"fp8-block",
    /*preset=*/"FP8_BLOCK",
    /*format=*/"float-quantized",
    /*layout=*/WeightLayout::kFloat8,
    /*descriptor=*/"fp8-e4m3",
    /*granularity=*/v1::GRANULARITY_BLOCK,
    /*group_size=*/0,
    /*block_rows=*/128,
    /*block_cols=*/128,
    /*packing=*/v1::PACKING_UNSPECIFIED,
    /*scale_rule=*/v1::SCALE_RULE_UNSPECIFIED,
    // Ragged edge blocks are fine: compressed-tensors pads the weight to whole blocks
    // (maybe_pad_tensor_for_block_quant) and the scales are [ceil(N/128), ceil(K/128)].
    /*in_features_multiple=*/0,
    /*weights_json=*/R"({"block_structure": [128, 128], "dynamic": false, "group_size": null,
        "num_bits": 8, "strategy": "block", "symmetric": true, "type": "float"})",
    /*input_activations_json=*/R"({"dynamic": true, "group_size": 128, "num_bits": 8,
        "strategy": "group", "symmetric": true, "type": "float"})",
};

const Scheme kW8A8Int8 = {
    /*name=*/"w8a8-int8",
    /*preset=*/"W8A8",
    /*format=*/"int-quantized",
    /*layout=*/WeightLayout::kInt8,
    /*descriptor=*/"int8",
    /*granularity=*/v1::GRANULARITY_CHANNEL,
    /*group_size=*/0,
    /*block_rows=*/0,
    /*block_cols=*/0,
    /*packing=*/v1::PACKING_UNSPECIFIED,
    /*scale_rule=*/v1::SCALE_RULE_UNSPECIFIED,
    /*in_features_multiple=*/0,
    /*weights_json=*/R"({"dynamic": false, "group_size": null, "num_bits": 8,
        "strategy": "channel", "symmetric": true, "type": "int"})",
    /*input_activations_json=*/R"({"dynamic": true, "group_size": null, "num_bits": 8,
        "strategy": "token", "symmetric": true, "type": "int"})",
};

// pack_to_int32 (compressors/pack_quantized/helpers.py) for 4 bits is FORMATS.md's
// INT32_OFFSET: q + 8 in nibble i % 8 of int32 word i / 8 of the row, ceil(K/8) words per row,
// the padding nibbles 0.
const Scheme kW4A16 = {
    /*name=*/"w4a16",
    /*preset=*/"W4A16",
    /*format=*/"pack-quantized",
    /*layout=*/WeightLayout::kPackedInt4,
    /*descriptor=*/"int4",
    /*granularity=*/v1::GRANULARITY_GROUP,
    /*group_size=*/128,
    /*block_rows=*/0,
    /*block_cols=*/0,
    /*packing=*/v1::PACKING_INT32_OFFSET,
    /*scale_rule=*/v1::SCALE_RULE_UNSPECIFIED,
    /*in_features_multiple=*/128,
    /*weights_json=*/R"({"dynamic": false, "group_size": 128, "num_bits": 4,
        "strategy": "group", "symmetric": true, "type": "int"})",
    /*input_activations_json=*/"null",
};

// NVFP4 (compressors/nvfp4/base.py, helpers.py): E2M1 codes two per byte, element 0 in the low
// nibble (unpack_fp4_from_uint8 takes `a & 0x0F` first) - FORMATS.md's bit stream; the block
// scales as float8_e4m3fn [N, K/16] - our E4M3 scale codes, byte for byte; and
// weight_global_scale F32 [1]. The global scale means the same on both sides: compressed-tensors
// makes it generate_gparam = FP8_E4M3 max · FP4_E2M1 max / amax = 448 · 6 / amax and
// dequantizes x̂ = e2m1 · (weight_scale / weight_global_scale) (forward_helpers.py _dequantize:
// `scale = scale / global_scale`); FORMATS.md's S_enc = 2688 / amax and x̂ = e2m1 · (s_b /
// S_enc). So weight_global_scale = S_enc as the service answers it (QuantizedTensor
// global_scale), not its reciprocal. (vLLM inverts it itself when it loads the layer.)
const Scheme kNvfp4 = {
    /*name=*/"nvfp4",
    /*preset=*/"NVFP4A16",
    /*format=*/"nvfp4-pack-quantized",
    /*layout=*/WeightLayout::kNvfp4,
    /*descriptor=*/"nvfp4",
    /*granularity=*/v1::GRANULARITY_UNSPECIFIED,
    /*group_size=*/0,
    /*block_rows=*/0,
    /*block_cols=*/0,
    /*packing=*/v1::PACKING_UNSPECIFIED,
    /*scale_rule=*/v1::SCALE_RULE_UNSPECIFIED,
    /*in_features_multiple=*/16,
    /*weights_json=*/R"({"dynamic": false, "group_size": 16, "num_bits": 4,
        "scale_dtype": "torch.float8_e4m3fn", "strategy": "tensor_group", "symmetric": true,
        "type": "float"})",
    /*input_activations_json=*/"null",
};

// MXFP4 (compressors/mxfp4/base.py, mx_utils.py): the NVFP4 packing, no global scale, and
// weight_scale U8 [N, K/32] holding the biased exponent (decompress_mx_scale: 2^(code - 127)) -
// FORMATS.md's E8M0 scale codes, byte for byte.
const Scheme kMxfp4 = {
    /*name=*/"mxfp4",
    /*preset=*/"MXFP4A16",
    /*format=*/"mxfp4-pack-quantized",
    /*layout=*/WeightLayout::kMxfp4,
    /*descriptor=*/"mxfp4",
    /*granularity=*/v1::GRANULARITY_UNSPECIFIED,
    /*group_size=*/0,
    /*block_rows=*/0,
    /*block_cols=*/0,
    /*packing=*/v1::PACKING_UNSPECIFIED,
    /*scale_rule=*/v1::SCALE_RULE_EVEN,
    /*in_features_multiple=*/32,
    /*weights_json=*/R"({"dynamic": false, "group_size": 32, "num_bits": 4,
        "scale_dtype": "torch.uint8", "strategy": "group", "symmetric": true, "type": "float"})",
    /*input_activations_json=*/"null",
};

constexpr char kIndexFile[] = "model.safetensors.index.json";
constexpr char kSingleFile[] = "model.safetensors";
constexpr char kConfigFile[] = "config.json";
constexpr char kManifestFile[] = "compress_manifest.json";
constexpr char kReportJson[] = "report.json";
constexpr char kReportCsv[] = "report.csv";
// Bumped when the output for the same input and options changes, so that a manifest written by
// an older quantctl does not resume into a mix of two layouts.
constexpr int kManifestVersion = 1;

// ---- Small helpers --------------------------------------------------------------------------

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int unit = 0;
  while (bytes >= 1000 && unit < 4) {
    bytes /= 1000;
    ++unit;
  }
  return unit == 0 ? absl::StrFormat("%.0f B", bytes)
                   : absl::StrFormat("%.2f %s", bytes, units[unit]);
}

std::string HumanDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const auto total = static_cast<int64_t>(seconds + 0.5);
  if (total >= 3600) {
    return absl::StrFormat("%d:%02d:%02d", total / 3600, total / 60 % 60, total % 60);
  }
  return absl::StrFormat("%d:%02d", total / 60, total % 60);
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  QUANTD_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  // Config, index and manifest files are kilobytes; a multi-megabyte one is not what we think.
  constexpr size_t kLimit = size_t{64} << 20;
  if (file.bytes().size() > kLimit) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", file.bytes().size(),
                                                   " bytes, more than a JSON file of this kind "
                                                   "holds (limit ",
                                                   kLimit, ")"));
  }
  return std::string(file.bytes());
}

absl::StatusOr<Json> ReadJsonFile(const std::string& path, const JsonParseOptions& options = {}) {
  QUANTD_ASSIGN_OR_RETURN(const std::string text, ReadSmallFile(path));
  absl::StatusOr<Json> json = ParseJson(text, options);
  if (!json.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", json.status().message()));
  }
  return json;
}

// SHA-256 of a byte range, lowercase hex.
std::string Sha256Hex(absl::string_view bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) absl::StrAppendFormat(&hex, "%02x", digest[i]);
  return hex;
}

absl::StatusOr<std::string> FileSha256(const std::string& path) {
  QUANTD_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  return Sha256Hex(file.bytes());
}

Json NumberOrNull(double value) { return std::isnan(value) ? Json() : Json::Double(value); }

double NumberOr(const Json* json, double fallback) {
  if (json == nullptr || !json->is_number()) return fallback;
  absl::StatusOr<double> value = json->AsDouble();
  return value.ok() ? *value : fallback;
}

// ---- The input checkpoint -------------------------------------------------------------------

struct InputTensor {
  const safetensors::File* file;
  const safetensors::TensorInfo* info;
};

struct Checkpoint {
  std::vector<std::unique_ptr<safetensors::File>> files;  // sorted by name
  std::vector<InputTensor> tensors;                       // file order, then data order
  Json config;
  std::vector<std::string> other_files;  // top-level files to copy
  std::vector<std::string> notes;        // what is left behind, and why
};

bool IsPlainFileName(absl::string_view name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find_first_of(std::string("/\\\0", 3)) == absl::string_view::npos;
}

// Weight files in other formats: copying them would carry the unquantized model along.
bool IsOtherWeightFile(absl::string_view name) {
  return absl::EndsWith(name, ".bin") || absl::EndsWith(name, ".pt") ||
         absl::EndsWith(name, ".pth") || absl::EndsWith(name, ".ckpt") ||
         absl::EndsWith(name, ".h5") || absl::EndsWith(name, ".msgpack") ||
         absl::EndsWith(name, ".gguf") || absl::EndsWith(name, ".bin.index.json") ||
         absl::EndsWith(name, ".safetensors");
}

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& dir) {
  Checkpoint checkpoint;
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    return absl::InvalidArgumentError(absl::StrCat("IN_DIR '", dir, "' is not a directory"));
  }
  const std::string index_path = (fs::path(dir) / kIndexFile).string();
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;  // tensor -> file, from the index
  const bool indexed = fs::exists(index_path, error);
  if (indexed) {
    QUANTD_ASSIGN_OR_RETURN(const Json index, ReadJsonFile(index_path));
    const Json* map = index.Find("weight_map");
    if (map == nullptr || !map->is_object() || map->members().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": no \"weight_map\" object naming each tensor's file"));
    }
    std::set<std::string> names;
    for (const auto& [tensor, file] : map->members()) {
      if (!file.is_string() || !IsPlainFileName(file.text()) ||
          !absl::EndsWith(file.text(), ".safetensors")) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": \"", tensor, "\" maps to ", SerializeJson(file),
                         ", not a .safetensors file name in the same directory"));
      }
      weight_map[tensor] = file.text();
      names.insert(file.text());
    }
    shard_names.assign(names.begin(), names.end());
  } else {
    if (!fs::exists(fs::path(dir) / kSingleFile, error)) {
      return absl::InvalidArgumentError(
          absl::StrCat("IN_DIR '", dir, "' has neither ", kIndexFile, " nor ", kSingleFile));
    }
    shard_names.push_back(std::string(kSingleFile));
  }

  std::set<std::string> seen;
  for (const std::string& name : shard_names) {
    QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<safetensors::File> file,
                            safetensors::File::Open((fs::path(dir) / name).string()));
    for (const safetensors::TensorInfo& tensor : file->tensors()) {
      if (!seen.insert(tensor.name).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor \"", tensor.name, "\" appears in more than one shard (again in ", name, ")"));
      }
      if (indexed) {
        const auto it = weight_map.find(tensor.name);
        if (it == weight_map.end() || it->second != name) {
          return absl::InvalidArgumentError(
              absl::StrCat(name, " holds \"", tensor.name, "\" but ", kIndexFile,
                           it == weight_map.end() ? " does not list it"
                                                  : absl::StrCat(" puts it in ", it->second)));
        }
      }
      checkpoint.tensors.push_back({file.get(), &tensor});
    }
    checkpoint.files.push_back(std::move(file));
  }
  if (indexed && seen.size() != weight_map.size()) {
    for (const auto& [tensor, file] : weight_map) {
      if (seen.count(tensor) == 0) {
        return absl::InvalidArgumentError(absl::StrCat(kIndexFile, " puts \"", tensor, "\" in ",
                                                       file, ", which does not hold it"));
      }
    }
  }

  const std::string config_path = (fs::path(dir) / kConfigFile).string();
  if (!fs::exists(config_path, error)) {
    return absl::InvalidArgumentError(
        absl::StrCat("IN_DIR '", dir,
                     "' has no config.json: a Hugging Face checkpoint needs one, and the "
                     "quantization_config goes into it"));
  }
  JsonParseOptions lenient;
  lenient.allow_non_finite = true;  // Python's json.dump writes NaN / Infinity
  QUANTD_ASSIGN_OR_RETURN(checkpoint.config, ReadJsonFile(config_path, lenient));
  if (!checkpoint.config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, " is not a JSON object"));
  }
  if (const Json* existing = checkpoint.config.Find("quantization_config");
      existing != nullptr && !existing->is_null()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path,
                     " already has a quantization_config: this checkpoint is quantized; "
                     "compress its unquantized original"));
  }

  std::vector<std::string> entries;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    entries.push_back(entry.path().filename().string());
  }
  if (error) return absl::ErrnoToStatus(error.value(), absl::StrCat("cannot list '", dir, "'"));
  std::sort(entries.begin(), entries.end());
  const std::set<std::string> shards(shard_names.begin(), shard_names.end());
  for (const std::string& name : entries) {
    const fs::path path = fs::path(dir) / name;
    if (name == kConfigFile || name == kIndexFile || shards.count(name) > 0) continue;
    if (fs::is_directory(path, error)) {
      checkpoint.notes.push_back(absl::StrCat("not copied: directory ", name, "/"));
    } else if (!fs::is_regular_file(path, error)) {
      checkpoint.notes.push_back(absl::StrCat("not copied: ", name, " (not a regular file)"));
    } else if (IsOtherWeightFile(name)) {
      checkpoint.notes.push_back(absl::StrCat(
          "not copied: ", name, " (weights outside the checkpoint's safetensors shards)"));
    } else {
      checkpoint.other_files.push_back(name);
    }
  }
  return checkpoint;
}

// ---- The plan -------------------------------------------------------------------------------

struct PlannedTensor {
  InputTensor input;
  std::string module;  // the name without ".weight" (quantized or listed in `ignore`)
  bool quantize = false;
  std::string note;
  // NVFP4: the S_enc this weight shares with the other members of its fused group; 0: its own.
  float static_global_scale = 0;
  std::vector<safetensors::TensorEntry> outputs;
  int64_t output_bytes = 0;
  int shard = -1;
  size_t position = 0;     // among the shard's tensors
  size_t first_entry = 0;  // index of outputs[0] among the shard's entries
};

struct PlannedShard {
  std::string file_name;
  std::vector<size_t> tensors;  // indices into Plan::tensors
  std::vector<safetensors::TensorEntry> entries;
  safetensors::Layout layout;
};

struct Plan {
  std::vector<PlannedTensor> tensors;
  std::vector<PlannedShard> shards;
  std::vector<std::string> ignore;  // config.json's ignore list
};

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool IsFloatInput(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

// The compressed-tensors tensors of one [N, K] weight.
std::vector<safetensors::TensorEntry> QuantizedOutputs(const Scheme& scheme,
                                                       const std::string& module, int64_t n,
                                                       int64_t k) {
  const auto entry = [&](absl::string_view param, DType dtype, std::vector<int64_t> shape) {
    return safetensors::TensorEntry{absl::StrCat(module, ".", param), dtype, std::move(shape)};
  };
  std::vector<int64_t> scale_shape = {n, 1};
  if (scheme.granularity == v1::GRANULARITY_BLOCK) {
    scale_shape = {CeilDiv(n, scheme.block_rows), CeilDiv(k, scheme.block_cols)};
  } else if (scheme.granularity == v1::GRANULARITY_GROUP) {
    scale_shape = {n, CeilDiv(k, scheme.group_size)};
  }
  switch (scheme.layout) {
    case WeightLayout::kFloat8:
      return {entry("weight", DType::kF8E4M3, {n, k}),
              entry("weight_scale", DType::kF32, scale_shape)};
    case WeightLayout::kInt8:
      return {entry("weight", DType::kI8, {n, k}), entry("weight_scale", DType::kF32, scale_shape)};
    case WeightLayout::kPackedInt4:
      return {entry("weight_packed", DType::kI32, {n, CeilDiv(k, 8)}),
              entry("weight_scale", DType::kF32, scale_shape),
              entry("weight_shape", DType::kI64, {2})};
    case WeightLayout::kNvfp4:
      return {entry("weight_packed", DType::kU8, {n, CeilDiv(k, 2)}),
              entry("weight_scale", DType::kF8E4M3, {n, CeilDiv(k, 16)}),
              entry("weight_global_scale", DType::kF32, {1})};
    case WeightLayout::kMxfp4:
      return {entry("weight_packed", DType::kU8, {n, CeilDiv(k, 2)}),
              entry("weight_scale", DType::kU8, {n, CeilDiv(k, 32)})};
  }
  return {};
}

absl::StatusOr<std::unique_ptr<RE2>> CompileRegex(absl::string_view flag,
                                                  absl::string_view pattern) {
  auto regex = std::make_unique<RE2>(std::string(pattern), RE2::Quiet);
  if (!regex->ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, "=", pattern, " is not an RE2 regular expression: ", regex->error()));
  }
  return regex;
}

absl::StatusOr<Plan> MakePlan(const Checkpoint& checkpoint, const CompressOptions& options) {
  const Scheme& scheme = *options.scheme;
  QUANTD_ASSIGN_OR_RETURN(const std::unique_ptr<RE2> default_ignore,
                          CompileRegex("default ignore", kDefaultIgnoreRegex));
  std::unique_ptr<RE2> ignore, include;
  if (!options.ignore_regex.empty()) {
    QUANTD_ASSIGN_OR_RETURN(ignore, CompileRegex("--ignore", options.ignore_regex));
  }
  if (!options.include_regex.empty()) {
    QUANTD_ASSIGN_OR_RETURN(include, CompileRegex("--include", options.include_regex));
  }

  Plan plan;
  for (const InputTensor& input : checkpoint.tensors) {
    const safetensors::TensorInfo& info = *input.info;
    PlannedTensor planned;
    planned.input = input;
    const bool named_weight = absl::EndsWith(info.name, ".weight");
    if (named_weight) planned.module = info.name.substr(0, info.name.size() - 7);
    if (named_weight && info.shape.size() == 2 && IsFloatInput(info.dtype)) {
      const int64_t n = info.shape[0], k = info.shape[1];
      const bool default_target = !RE2::PartialMatch(planned.module, *default_ignore);
      const bool included = include != nullptr && RE2::PartialMatch(planned.module, *include);
      const bool ignored = ignore != nullptr && RE2::PartialMatch(planned.module, *ignore);
      if (ignored) {
        planned.note = "ignored by --ignore";
      } else if (!default_target && !included) {
        planned.note = "";  // embeddings, lm_head, norms: dense as llm-compressor leaves them
      } else if (n == 0 || k == 0) {
        planned.note = "empty";
      } else if (scheme.in_features_multiple > 0 && k % scheme.in_features_multiple != 0) {
        planned.note =
            absl::StrCat("in_features ", k, " is not a multiple of ", scheme.in_features_multiple,
                         " (compressed-tensors refuses a ragged last group)");
      } else {
        planned.quantize = true;
      }
    }
    if (planned.quantize) {
      planned.outputs = QuantizedOutputs(scheme, planned.module, info.shape[0], info.shape[1]);
    } else {
      planned.outputs = {{info.name, info.dtype, info.shape}};
      // compressed-tensors' model-free matching (utils/match.py match_quantizable_tensors)
      // treats every "<module>.weight" outside a module ending in "norm" as a Linear weight of
      // the "Linear" target, so each dense one must be in `ignore`; vLLM needs the same for
      // real Linear layers.
      if (named_weight && !absl::EndsWith(planned.module, "norm")) {
        plan.ignore.push_back(planned.module);
      }
    }
    for (const safetensors::TensorEntry& entry : planned.outputs) {
      QUANTD_ASSIGN_OR_RETURN(const int64_t bytes, safetensors::ByteSize(entry.dtype, entry.shape));
      planned.output_bytes += bytes;
    }
    plan.tensors.push_back(std::move(planned));
  }

  // transformers' sharding: in order, a new shard when the next group would overflow this one.
  int64_t shard_bytes = 0;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    PlannedTensor& tensor = plan.tensors[i];
    if (plan.shards.empty() || (!plan.shards.back().tensors.empty() &&
                                shard_bytes + tensor.output_bytes > options.max_shard_bytes)) {
      plan.shards.emplace_back();
      shard_bytes = 0;
    }
    PlannedShard& shard = plan.shards.back();
    tensor.shard = static_cast<int>(plan.shards.size() - 1);
    tensor.position = shard.tensors.size();
    tensor.first_entry = shard.entries.size();
    shard.tensors.push_back(i);
    for (const safetensors::TensorEntry& entry : tensor.outputs) shard.entries.push_back(entry);
    shard_bytes += tensor.output_bytes;
  }
  const int count = static_cast<int>(plan.shards.size());
  for (int s = 0; s < count; ++s) {
    PlannedShard& shard = plan.shards[static_cast<size_t>(s)];
    shard.file_name = absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, count);
    QUANTD_ASSIGN_OR_RETURN(shard.layout, safetensors::LayOut(shard.entries, {{"format", "pt"}}));
  }
  return plan;
}

// ---- NVFP4 global scales of fused layers -----------------------------------------------------
//
// vLLM runs q/k/v (qkv_proj) and gate/up (gate_up_proj) as one fused layer with one NVFP4 global
// scale: its W4A16Fp4 scheme keeps 1 / max(weight_global_scale) over the fused members. So, as
// llm-compressor does (update_fused_layer_weight_global_scales: the minimum global scale over
// q/k/v, over MLA's q_a_proj / kv_a_proj_with_mqa, and over gate/up), the members share one
// S_enc: FORMATS.md's fp32(2688 / amax) of the group's amax, which is the minimum of the
// members' own S_enc (fp32 division rounds monotonically). It reaches the service as
// QuantSpec.static_global_scale, the proto's "448 * 6 / an amax the caller tracks".

// "<parent>#qkv", "<parent>#mla", "<parent>#gate_up", or empty for a layer fused with no other.
std::string FusedGroup(absl::string_view module) {
  const size_t dot = module.rfind('.');
  const absl::string_view parent = dot == absl::string_view::npos ? "" : module.substr(0, dot);
  const absl::string_view leaf = dot == absl::string_view::npos ? module : module.substr(dot + 1);
  if (leaf == "q_proj" || leaf == "k_proj" || leaf == "v_proj") return absl::StrCat(parent, "#qkv");
  if (leaf == "q_a_proj" || leaf == "kv_a_proj_with_mqa") return absl::StrCat(parent, "#mla");
  if (leaf == "gate_proj" || leaf == "up_proj") return absl::StrCat(parent, "#gate_up");
  return "";
}

// max |x| over the finite elements (FORMATS.md: non-finite inputs never enter a scale). The
// mapped data need not be aligned for its dtype, hence the memcpy per element.
float FiniteAmax(const safetensors::TensorInfo& info, absl::string_view data) {
  const int size = safetensors::DTypeSize(info.dtype);
  float amax = 0;
  for (size_t at = 0; at + static_cast<size_t>(size) <= data.size(); at += size) {
    float value;
    if (info.dtype == DType::kF32) {
      std::memcpy(&value, data.data() + at, 4);
    } else {
      uint16_t bits;
      std::memcpy(&bits, data.data() + at, 2);
      value = info.dtype == DType::kF16 ? HalfToFloat(bits) : BF16ToFloat(bits);
    }
    if (std::isfinite(value)) amax = std::max(amax, std::fabs(value));
  }
  return amax;
}

// Sets static_global_scale on every quantized member of a fused group of two or more. Returns
// the number of groups.
int ShareFusedGlobalScales(Plan* plan, int threads) {
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i = 0; i < plan->tensors.size(); ++i) {
    const PlannedTensor& tensor = plan->tensors[i];
    if (!tensor.quantize) continue;
    std::string group = FusedGroup(tensor.module);
    if (!group.empty()) groups[group].push_back(i);
  }
  std::vector<size_t> members;
  for (const auto& [group, indices] : groups) {
    if (indices.size() > 1) members.insert(members.end(), indices.begin(), indices.end());
  }
  std::vector<float> amax(plan->tensors.size(), 0);
  std::atomic<size_t> next{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < std::clamp(threads, 1, 16); ++w) {
    workers.emplace_back([&] {
      for (size_t m = next.fetch_add(1); m < members.size(); m = next.fetch_add(1)) {
        const InputTensor& input = plan->tensors[members[m]].input;
        amax[members[m]] = FiniteAmax(*input.info, input.file->Data(*input.info));
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  int shared = 0;
  for (const auto& [group, indices] : groups) {
    if (indices.size() < 2) continue;
    float group_amax = 0;
    for (const size_t i : indices) group_amax = std::max(group_amax, amax[i]);
    // The service's own S_enc, applied to the group's amax (a subnormal amax clamps to FLT_MAX).
    const float s_enc = Nvfp4GlobalScale(group_amax);
    for (const size_t i : indices) plan->tensors[i].static_global_scale = s_enc;
    ++shared;
  }
  return shared;
}

// ---- Fingerprint and manifest ---------------------------------------------------------------

// What makes two runs the same job: the input files (size, modification time, header), the
// scheme and every option that changes the output.
absl::StatusOr<Json> JobFingerprint(const Checkpoint& checkpoint, const CompressOptions& options) {
  Json inputs = Json::Array();
  for (const auto& file : checkpoint.files) {
    struct stat st;
    if (stat(file->path().c_str(), &st) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot stat '", file->path(), "'"));
    }
    const int64_t mtime_ns = int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
    inputs.Append(Json::Object({
        {"file", Json::String(fs::path(file->path()).filename().string())},
        {"bytes", Json::Int(file->file_bytes())},
        {"mtime_ns", Json::Int(mtime_ns)},
        {"header_sha256", Json::String(Sha256Hex(file->header_json()))},
    }));
  }
  return Json::Object({
      {"manifest_version", Json::Int(kManifestVersion)},
      {"scheme", Json::String(std::string(options.scheme->name))},
      {"ignore", Json::String(options.ignore_regex)},
      {"include", Json::String(options.include_regex)},
      {"max_shard_bytes", Json::Int(options.max_shard_bytes)},
      {"inputs", std::move(inputs)},
  });
}

Json ReportRowJson(const TensorReport& row) {
  std::vector<Json> shape;
  for (const int64_t dim : row.shape) shape.push_back(Json::Int(dim));
  return Json::Object({
      {"name", Json::String(row.name)},
      {"shape", Json::Array(std::move(shape))},
      {"dtype", Json::String(row.dtype)},
      {"scheme", Json::String(row.scheme)},
      {"bytes_before", Json::Int(row.bytes_before)},
      {"bytes_after", Json::Int(row.bytes_after)},
      {"sqnr_db", NumberOrNull(row.sqnr_db)},
      {"cosine", NumberOrNull(row.cosine)},
      {"max_abs_err", NumberOrNull(row.max_abs_err)},
      {"backend", Json::String(row.backend)},
      {"shard", Json::String(row.shard)},
      {"note", Json::String(row.note)},
  });
}

// The metrics of a manifest row (what a resumed shard reports). Missing pieces read as NaN.
TensorReport ReportRowFromJson(const Json& json) {
  TensorReport row;
  const auto text = [&](absl::string_view key) {
    const Json* value = json.Find(key);
    return value != nullptr && value->is_string() ? value->text() : std::string();
  };
  row.name = text("name");
  row.dtype = text("dtype");
  row.scheme = text("scheme");
  row.backend = text("backend");
  row.shard = text("shard");
  row.note = text("note");
  if (const Json* shape = json.Find("shape"); shape != nullptr) {
    for (const Json& dim : shape->items()) row.shape.push_back(dim.AsInt64().value_or(0));
  }
  const auto integer = [&](absl::string_view key) {
    const Json* value = json.Find(key);
    return value == nullptr ? 0 : value->AsInt64().value_or(0);
  };
  row.bytes_before = integer("bytes_before");
  row.bytes_after = integer("bytes_after");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  row.sqnr_db = NumberOr(json.Find("sqnr_db"), nan);
  row.cosine = NumberOr(json.Find("cosine"), nan);
  row.max_abs_err = NumberOr(json.Find("max_abs_err"), nan);
  return row;
}

// A finished shard as the manifest records it.
struct FinishedShard {
  std::string file_name;
  int64_t bytes = 0;
  std::string sha256;
  std::vector<TensorReport> rows;
};

Json FinishedShardJson(const FinishedShard& shard) {
  Json rows = Json::Array();
  for (const TensorReport& row : shard.rows) rows.Append(ReportRowJson(row));
  return Json::Object({{"file", Json::String(shard.file_name)},
                       {"bytes", Json::Int(shard.bytes)},
                       {"sha256", Json::String(shard.sha256)},
                       {"tensors", std::move(rows)}});
}

// The manifest's finished shards when it describes this very job; empty otherwise (the reason
// goes to `why`).
std::map<std::string, FinishedShard> ReadManifest(const std::string& path, const Json& fingerprint,
                                                  std::string* why) {
  std::map<std::string, FinishedShard> finished;
  std::error_code error;
  if (!fs::exists(path, error)) return finished;
  JsonParseOptions options;
  options.allow_non_finite = true;
  absl::StatusOr<Json> manifest = ReadJsonFile(path, options);
  if (!manifest.ok()) {
    *why = absl::StrCat("the manifest is unreadable (", manifest.status().message(), ")");
    return finished;
  }
  const Json* job = manifest->Find("job");
  if (job == nullptr || *job != fingerprint) {
    *why = "the manifest describes another job (input files, scheme or options changed)";
    return finished;
  }
  const Json* shards = manifest->Find("shards");
  if (shards == nullptr) return finished;
  for (const Json& entry : shards->items()) {
    FinishedShard shard;
    const Json* file = entry.Find("file");
    const Json* bytes = entry.Find("bytes");
    const Json* sha = entry.Find("sha256");
    const Json* rows = entry.Find("tensors");
    if (file == nullptr || !file->is_string() || bytes == nullptr || sha == nullptr ||
        !sha->is_string() || rows == nullptr) {
      continue;
    }
    shard.file_name = file->text();
    shard.bytes = bytes->AsInt64().value_or(-1);
    shard.sha256 = sha->text();
    for (const Json& row : rows->items()) shard.rows.push_back(ReportRowFromJson(row));
    finished[shard.file_name] = std::move(shard);
  }
  return finished;
}

// ---- Progress -------------------------------------------------------------------------------

class Reporter {
 public:
  Reporter(const CompressOptions& options, int64_t total_tensors, int64_t total_bytes)
      : mode_(options.progress),
        write_(options.write_log),
        total_tensors_(total_tensors),
        total_bytes_(total_bytes),
        start_(absl::Now()),
        last_line_(start_) {
    if (mode_ == CompressOptions::Progress::kBar && write_) {
      redraw_ = std::thread([this] {
        absl::MutexLock lock(&mu_);
        while (!done_) {
          mu_.AwaitWithTimeout(absl::Condition(&done_), absl::Milliseconds(200));
          DrawBarLocked();
        }
      });
    }
  }

  ~Reporter() { Finish(); }

  void Log(absl::string_view line) {
    absl::MutexLock lock(&mu_);
    if (!write_) return;
    write_(absl::StrCat(bar_shown_ ? "\r\033[K" : "", line, "\n"));
    bar_shown_ = false;
  }

  void Advance(int64_t tensors, int64_t bytes) {
    absl::MutexLock lock(&mu_);
    done_tensors_ += tensors;
    done_bytes_ += bytes;
    if (mode_ == CompressOptions::Progress::kLines && write_ &&
        absl::Now() - last_line_ >= absl::Seconds(5)) {
      last_line_ = absl::Now();
      write_(absl::StrCat(StatusTextLocked(), "\n"));
    }
  }

  void Finish() {
    {
      absl::MutexLock lock(&mu_);
      if (done_) return;
      done_ = true;
    }
    if (redraw_.joinable()) redraw_.join();
    absl::MutexLock lock(&mu_);
    if (mode_ == CompressOptions::Progress::kBar && write_) {
      DrawBarLocked();
      write_("\n");
    } else if (mode_ == CompressOptions::Progress::kLines && write_) {
      write_(absl::StrCat(StatusTextLocked(), "\n"));
    }
  }

 private:
  std::string StatusTextLocked() const {
    const double seconds = absl::ToDoubleSeconds(absl::Now() - start_);
    const double rate = seconds > 0 ? done_bytes_ / seconds : 0;
    const double eta = rate > 0 ? (total_bytes_ - done_bytes_) / rate : NAN;
    return absl::StrFormat("%d/%d tensors  %s / %s  %s/s  ETA %s", done_tensors_, total_tensors_,
                           HumanBytes(done_bytes_), HumanBytes(total_bytes_), HumanBytes(rate),
                           HumanDuration(eta));
  }

  void DrawBarLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    constexpr int kWidth = 30;
    const double fraction =
        total_bytes_ > 0 ? static_cast<double>(done_bytes_) / total_bytes_ : 1.0;
    const int filled = std::clamp(static_cast<int>(fraction * kWidth), 0, kWidth);
    write_(absl::StrFormat("\r\033[Kcompress [%s%s] %3.0f%%  %s", std::string(filled, '#'),
                           std::string(kWidth - filled, '.'), 100 * fraction, StatusTextLocked()));
    bar_shown_ = true;
  }

  const CompressOptions::Progress mode_;
  const std::function<void(absl::string_view)> write_;
  const int64_t total_tensors_;
  const int64_t total_bytes_;
  const absl::Time start_;
  absl::Mutex mu_;
  absl::Time last_line_ ABSL_GUARDED_BY(mu_);
  int64_t done_tensors_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t done_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool bar_shown_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread redraw_;
};

// ---- Quantizing one tensor ------------------------------------------------------------------

v1::DType ProtoDType(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return v1::DTYPE_F16;
    case DType::kBF16:
      return v1::DTYPE_BF16;
    default:
      return v1::DTYPE_F32;
  }
}

v1::QuantSpec SpecFor(const Scheme& scheme, float static_global_scale) {
  v1::QuantSpec spec;
  spec.set_descriptor_string(std::string(scheme.descriptor));
  spec.set_granularity(scheme.granularity);
  spec.set_group_size(scheme.group_size);
  spec.set_block_rows(scheme.block_rows);
  spec.set_block_cols(scheme.block_cols);
  spec.set_packing(scheme.packing);
  spec.set_scale_rule(scheme.scale_rule);
  spec.set_static_global_scale(static_global_scale);
  return spec;
}

// Transient failures worth another try: a replica restarting (UNAVAILABLE) or a full queue.
bool IsRetryable(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable ||
         status.code() == absl::StatusCode::kResourceExhausted;
}

// `make_request` builds the request for each attempt: the client takes it by value, so handing
// it a fresh one (copied from the mapped input) keeps one copy of a large weight in memory
// rather than two.
absl::StatusOr<v1::QuantizeResponse> QuantizeWithRetries(
    Client& client, const std::function<v1::QuantizeRequest()>& make_request) {
  absl::Duration backoff = absl::Milliseconds(500);
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<v1::QuantizeResponse> response = client.Quantize(make_request());
    if (response.ok() || !IsRetryable(response.status()) || attempt == 4) return response;
    absl::SleepFor(backoff);
    backoff *= 2;
  }
}

// Checks one tensor of the answer against what the plan expects, byte for byte in size.
absl::Status CheckAnswer(absl::string_view what, const v1::Tensor& tensor, v1::DType dtype,
                         int64_t bytes) {
  if (tensor.dtype() != dtype || static_cast<int64_t>(tensor.data().size()) != bytes) {
    return absl::InternalError(
        absl::StrCat("the service answered ", what, " as ", v1::DType_Name(tensor.dtype()), " of ",
                     tensor.data().size(), " bytes where ", v1::DType_Name(dtype), " of ", bytes,
                     " bytes were expected: a server of another version?"));
  }
  return absl::OkStatus();
}

// The bytes of each output tensor of a quantized weight, from the service's answer.
absl::StatusOr<std::vector<std::string>> RepackAnswer(const Scheme& scheme,
                                                      const PlannedTensor& planned,
                                                      const std::vector<int64_t>& output_bytes,
                                                      v1::QuantizeResponse* response) {
  v1::QuantizedTensor* quantized = response->mutable_quantized();
  std::vector<std::string> bytes;
  v1::DType codes_dtype = v1::DTYPE_U8;
  v1::DType scales_dtype = v1::DTYPE_F32;
  switch (scheme.layout) {
    case WeightLayout::kInt8:
      codes_dtype = v1::DTYPE_I8;
      break;
    case WeightLayout::kPackedInt4:
      codes_dtype = v1::DTYPE_I32;
      break;
    case WeightLayout::kNvfp4:
    case WeightLayout::kMxfp4:
      scales_dtype = v1::DTYPE_U8;
      break;
    case WeightLayout::kFloat8:
      break;
  }
  QUANTD_RETURN_IF_ERROR(CheckAnswer("codes", quantized->codes(), codes_dtype, output_bytes[0]));
  QUANTD_RETURN_IF_ERROR(CheckAnswer("scales", quantized->scales(), scales_dtype, output_bytes[1]));
  // The codes and scales are already in compressed-tensors' byte layout (see the scheme rows);
  // moving them is the whole repacking.
  bytes.push_back(std::move(*quantized->mutable_codes()->mutable_data()));
  bytes.push_back(std::move(*quantized->mutable_scales()->mutable_data()));
  if (scheme.layout == WeightLayout::kPackedInt4) {
    std::string shape(16, '\0');
    const int64_t dims[2] = {planned.input.info->shape[0], planned.input.info->shape[1]};
    std::memcpy(shape.data(), dims, sizeof(dims));  // little-endian hosts only, as the server
    bytes.push_back(std::move(shape));
  }
  if (scheme.layout == WeightLayout::kNvfp4) {
    const float global_scale = quantized->global_scale();
    if (!(global_scale > 0) || !std::isfinite(global_scale) ||
        (planned.static_global_scale != 0 && global_scale != planned.static_global_scale)) {
      return absl::InternalError(absl::StrCat(
          "the service answered NVFP4 global_scale ", global_scale, " where a positive finite ",
          "S_enc", planned.static_global_scale != 0 ? " equal to the one requested" : "",
          " was expected"));
    }
    std::string value(sizeof(float), '\0');
    std::memcpy(value.data(), &global_scale, sizeof(float));
    bytes.push_back(std::move(value));
  }
  return bytes;
}

// ---- The job --------------------------------------------------------------------------------

class Job {
 public:
  Job(Client& client, const CompressOptions& options, Checkpoint& checkpoint, Plan& plan,
      Json fingerprint, std::map<std::string, FinishedShard> finished)
      : client_(client),
        options_(options),
        checkpoint_(checkpoint),
        plan_(plan),
        fingerprint_(std::move(fingerprint)),
        finished_(std::move(finished)),
        shard_states_(plan.shards.size()) {}

  absl::StatusOr<CompressSummary> Run() {
    const absl::Time start = absl::Now();
    CompressSummary summary;
    summary.scheme = options_.scheme;
    summary.shards_total = static_cast<int>(plan_.shards.size());
    // char, not bool: the checking threads write their own elements.
    std::vector<char> keep(plan_.shards.size(), 0);
    CheckFinishedShards(&keep);

    std::vector<std::pair<int, size_t>> tasks;  // (shard, tensor)
    int64_t total_tensors = 0, total_bytes = 0;
    for (size_t s = 0; s < plan_.shards.size(); ++s) {
      if (keep[s]) {
        ++summary.shards_resumed;
        continue;
      }
      shard_states_[s].remaining = static_cast<int>(plan_.shards[s].tensors.size());
      for (const size_t t : plan_.shards[s].tensors) {
        tasks.emplace_back(static_cast<int>(s), t);
        ++total_tensors;
        total_bytes += plan_.tensors[t].input.info->bytes;
      }
    }
    // The manifest keeps the shards we keep; a shard being redone is not in it until it is
    // written again.
    {
      absl::MutexLock lock(&mu_);
      for (size_t s = 0; s < plan_.shards.size(); ++s) {
        if (keep[s]) manifest_shards_[s] = finished_.at(plan_.shards[s].file_name);
      }
      QUANTD_RETURN_IF_ERROR(WriteManifestLocked());
    }

    reporter_ = std::make_unique<Reporter>(options_, total_tensors, total_bytes);
    if (summary.shards_resumed > 0) {
      reporter_->Log(absl::StrFormat("resuming: %d of %d shards are already written",
                                     summary.shards_resumed, summary.shards_total));
    }
    std::atomic<size_t> next{0};
    const int workers = std::clamp<int>(options_.in_flight, 1, 256);
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w) {
      threads.emplace_back([&] {
        while (!failed_.load()) {
          const size_t i = next.fetch_add(1);
          if (i >= tasks.size()) break;
          absl::Status status = RunTask(tasks[i].first, tasks[i].second);
          if (!status.ok()) Fail(std::move(status));
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    reporter_->Finish();
    {
      absl::MutexLock lock(&mu_);
      if (!first_error_.ok()) {
        // Unfinished shards: their temporaries go with the AtomicFiles; finished ones stay
        // recorded for the next run.
        shard_states_.clear();
        return first_error_;
      }
    }

    {
      absl::MutexLock lock(&mu_);
      for (const auto& [index, shard] : manifest_shards_) {
        for (const TensorReport& row : shard.rows) summary.tensors.push_back(row);
      }
    }
    summary.shards_written = summary.shards_total - summary.shards_resumed;
    QUANTD_RETURN_IF_ERROR(WriteIndex());
    QUANTD_RETURN_IF_ERROR(WriteConfig());
    QUANTD_ASSIGN_OR_RETURN(summary.copied_files, CopyOtherFiles());
    summary.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    QUANTD_RETURN_IF_ERROR(WriteReports(summary));
    return summary;
  }

 private:
  struct ShardState {
    absl::Mutex mu;
    std::unique_ptr<AtomicFile> file ABSL_GUARDED_BY(mu);
    std::vector<TensorReport> rows ABSL_GUARDED_BY(mu);
    int remaining ABSL_GUARDED_BY(mu) = 0;
  };

  std::string OutputPath(absl::string_view name) const {
    return (fs::path(options_.output_dir) / std::string(name)).string();
  }

  // Which of the manifest's shards are still on disk as written (size and SHA-256), checked
  // `in_flight` at a time: a 5 GB shard takes seconds to hash.
  void CheckFinishedShards(std::vector<char>* keep) {
    std::atomic<size_t> next{0};
    std::vector<std::thread> threads;
    std::vector<std::string> problems(plan_.shards.size());
    const int workers = std::clamp<int>(options_.in_flight, 1, 16);
    for (int w = 0; w < workers; ++w) {
      threads.emplace_back([&] {
        for (size_t s = next.fetch_add(1); s < plan_.shards.size(); s = next.fetch_add(1)) {
          const PlannedShard& shard = plan_.shards[s];
          const auto it = finished_.find(shard.file_name);
          if (it == finished_.end()) continue;
          const std::string path = OutputPath(shard.file_name);
          std::error_code error;
          const auto size = fs::file_size(path, error);
          if (error || static_cast<int64_t>(size) != it->second.bytes ||
              it->second.bytes != shard.layout.file_bytes ||
              it->second.rows.size() != shard.tensors.size()) {
            problems[s] = absl::StrCat(shard.file_name, " is missing or has another size");
            continue;
          }
          absl::StatusOr<std::string> sha = FileSha256(path);
          if (!sha.ok() || *sha != it->second.sha256) {
            problems[s] = absl::StrCat(shard.file_name, " does not match its checksum");
            continue;
          }
          (*keep)[s] = 1;
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    for (const std::string& problem : problems) {
      if (!problem.empty() && options_.write_log) {
        options_.write_log(absl::StrCat("redoing ", problem, "\n"));
      }
    }
  }

  void Fail(absl::Status status) {
    absl::MutexLock lock(&mu_);
    if (first_error_.ok()) first_error_ = std::move(status);
    failed_.store(true);
  }

  absl::Status RunTask(int shard_index, size_t tensor_index) {
    const PlannedShard& shard = plan_.shards[static_cast<size_t>(shard_index)];
    const PlannedTensor& planned = plan_.tensors[tensor_index];
    ShardState& state = shard_states_[static_cast<size_t>(shard_index)];
    AtomicFile* file = nullptr;
    {
      absl::MutexLock lock(&state.mu);
      if (state.file == nullptr) {
        auto opened = std::make_unique<AtomicFile>(OutputPath(shard.file_name));
        QUANTD_RETURN_IF_ERROR(opened->Open());
        QUANTD_RETURN_IF_ERROR(opened->WriteAt(0, shard.layout.header));
        state.file = std::move(opened);
        state.rows.resize(shard.tensors.size());
      }
      file = state.file.get();
    }

    const safetensors::TensorInfo& info = *planned.input.info;
    TensorReport row;
    row.name = info.name;
    row.shape = info.shape;
    row.dtype = std::string(safetensors::DTypeName(info.dtype));
    row.bytes_before = info.bytes;
    row.bytes_after = planned.output_bytes;
    row.note = planned.note;
    row.shard = shard.file_name;
    row.sqnr_db = row.cosine = row.max_abs_err = std::numeric_limits<double>::quiet_NaN();
    const absl::string_view data = planned.input.file->Data(info);
    if (!planned.quantize) {
      row.scheme = "dense";
      QUANTD_RETURN_IF_ERROR(file->WriteAt(
          static_cast<uint64_t>(shard.layout.data_offsets[planned.first_entry]), data));
    } else {
      const Scheme& scheme = *options_.scheme;
      row.scheme = std::string(scheme.name);
      const auto make_request = [&] {
        v1::QuantizeRequest request;
        request.mutable_input()->set_dtype(ProtoDType(info.dtype));
        for (const int64_t dim : info.shape) request.mutable_input()->add_shape(dim);
        request.mutable_input()->set_data(data.data(), data.size());
        *request.mutable_spec() = SpecFor(scheme, planned.static_global_scale);
        return request;
      };
      absl::StatusOr<v1::QuantizeResponse> response = QuantizeWithRetries(client_, make_request);
      if (!response.ok()) {
        return absl::Status(response.status().code(),
                            absl::StrCat("quantizing \"", info.name, "\" ", ShapeText(info.shape),
                                         ": ", response.status().message()));
      }
      std::vector<int64_t> output_bytes;
      for (size_t e = 0; e < planned.outputs.size(); ++e) {
        output_bytes.push_back(shard.layout.data_bytes[planned.first_entry + e]);
      }
      absl::StatusOr<std::vector<std::string>> outputs =
          RepackAnswer(scheme, planned, output_bytes, &*response);
      if (!outputs.ok()) {
        return absl::Status(
            outputs.status().code(),
            absl::StrCat("quantizing \"", info.name, "\": ", outputs.status().message()));
      }
      for (size_t e = 0; e < outputs->size(); ++e) {
        QUANTD_RETURN_IF_ERROR(
            file->WriteAt(static_cast<uint64_t>(shard.layout.data_offsets[planned.first_entry + e]),
                          (*outputs)[e]));
      }
      if (response->has_metrics()) {
        row.sqnr_db = response->metrics().sqnr_db();
        row.cosine = response->metrics().cosine();
        row.max_abs_err = response->metrics().max_abs_err();
      }
      row.backend = response->backend();
    }
    reporter_->Advance(1, info.bytes);

    std::unique_ptr<AtomicFile> finished_file;
    std::vector<TensorReport> rows;
    {
      absl::MutexLock lock(&state.mu);
      state.rows[planned.position] = std::move(row);
      if (--state.remaining > 0) return absl::OkStatus();
      finished_file = std::move(state.file);
      rows = std::move(state.rows);
    }
    return FinishShard(shard_index, std::move(finished_file), std::move(rows));
  }

  absl::Status FinishShard(int shard_index, std::unique_ptr<AtomicFile> file,
                           std::vector<TensorReport> rows) {
    const PlannedShard& shard = plan_.shards[static_cast<size_t>(shard_index)];
    QUANTD_RETURN_IF_ERROR(file->Commit());
    FinishedShard finished;
    finished.file_name = shard.file_name;
    finished.bytes = shard.layout.file_bytes;
    QUANTD_ASSIGN_OR_RETURN(finished.sha256, FileSha256(file->path()));
    finished.rows = std::move(rows);
    {
      absl::MutexLock lock(&mu_);
      manifest_shards_[static_cast<size_t>(shard_index)] = std::move(finished);
      QUANTD_RETURN_IF_ERROR(WriteManifestLocked());
    }
    reporter_->Log(absl::StrFormat("wrote %s (%s)", shard.file_name,
                                   HumanBytes(static_cast<double>(shard.layout.file_bytes))));
    return absl::OkStatus();
  }

  absl::Status WriteManifestLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Json shards = Json::Array();
    for (const auto& [index, shard] : manifest_shards_) shards.Append(FinishedShardJson(shard));
    const Json manifest = Json::Object({{"job", fingerprint_}, {"shards", std::move(shards)}});
    return WriteFileAtomically(OutputPath(kManifestFile),
                               absl::StrCat(SerializeJson(manifest, /*indent=*/1), "\n"));
  }

  absl::Status WriteIndex() {
    int64_t total = 0;
    // Collected directly, not through Json::Set (a search per name): a large MoE checkpoint
    // has hundreds of thousands of tensors. The names are unique: the plan's.
    Json::Members weight_map;
    for (const PlannedShard& shard : plan_.shards) {
      for (size_t e = 0; e < shard.entries.size(); ++e) {
        total += shard.layout.data_bytes[e];
        weight_map.emplace_back(shard.entries[e].name, Json::String(shard.file_name));
      }
    }
    const Json index = Json::Object({{"metadata", Json::Object({{"total_size", Json::Int(total)}})},
                                     {"weight_map", Json::Object(std::move(weight_map))}});
    return WriteFileAtomically(OutputPath(kIndexFile),
                               absl::StrCat(SerializeJson(index, /*indent=*/2), "\n"));
  }

  absl::StatusOr<Json> QuantizationConfig() const {
    const Scheme& scheme = *options_.scheme;
    QUANTD_ASSIGN_OR_RETURN(Json weights, ParseJson(scheme.weights_json));
    QUANTD_ASSIGN_OR_RETURN(Json activations, ParseJson(scheme.input_activations_json));
    Json ignore = Json::Array();
    for (const std::string& module : plan_.ignore) ignore.Append(Json::String(module));
    const Json format = Json::String(std::string(scheme.format));
    Json group = Json::Object({
        {"format", format},
        {"input_activations", std::move(activations)},
        {"output_activations", Json()},
        {"targets", Json::Array({Json::String("Linear")})},
        {"weights", std::move(weights)},
    });
    // As compressed-tensors' ModelCompressor.update_config writes it (keys sorted).
    return Json::Object({
        {"config_groups", Json::Object({{"group_0", std::move(group)}})},
        {"format", format},
        {"global_compression_ratio", Json()},
        {"ignore", std::move(ignore)},
        {"kv_cache_scheme", Json()},
        {"moe_sparsity_config", Json()},
        {"quant_method", Json::String("compressed-tensors")},
        {"quantization_status", Json::String("compressed")},
        {"sparsity_config", Json::Object()},
        {"transform_config", Json::Object()},
        {"version", Json::String(std::string(kCompressedTensorsVersion))},
    });
  }

  absl::Status WriteConfig() {
    Json config = checkpoint_.config;
    QUANTD_ASSIGN_OR_RETURN(Json quantization, QuantizationConfig());
    config.Set("quantization_config", std::move(quantization));
    return WriteFileAtomically(OutputPath(kConfigFile),
                               absl::StrCat(SerializeJson(config, /*indent=*/2), "\n"));
  }

  absl::StatusOr<std::vector<std::string>> CopyOtherFiles() {
    for (const std::string& name : checkpoint_.other_files) {
      const std::string from = (fs::path(options_.input_dir) / name).string();
      QUANTD_ASSIGN_OR_RETURN(MappedFile source, MappedFile::Open(from));
      QUANTD_RETURN_IF_ERROR(WriteFileAtomically(OutputPath(name), source.bytes()));
    }
    return checkpoint_.other_files;
  }

  absl::Status WriteReports(const CompressSummary& summary) {
    Json rows = Json::Array();
    std::string csv =
        "name,shape,dtype,scheme,bytes_before,bytes_after,sqnr_db,cosine,max_abs_err,backend,"
        "shard,note\n";
    const auto number = [](double value) {
      return std::isnan(value) ? std::string() : absl::StrFormat("%.9g", value);
    };
    const auto quoted = [](absl::string_view text) {
      return absl::StrCat("\"", absl::StrReplaceAll(text, {{"\"", "\"\""}}), "\"");
    };
    int64_t before = 0, after = 0;
    for (const TensorReport& row : summary.tensors) {
      rows.Append(ReportRowJson(row));
      before += row.bytes_before;
      after += row.bytes_after;
      absl::StrAppend(&csv, quoted(row.name), ",", absl::StrJoin(row.shape, "x"), ",", row.dtype,
                      ",", row.scheme, ",", row.bytes_before, ",", row.bytes_after, ",",
                      number(row.sqnr_db), ",", number(row.cosine), ",", number(row.max_abs_err),
                      ",", row.backend, ",", row.shard, ",", quoted(row.note), "\n");
    }
    const Scheme& scheme = *summary.scheme;
    const Json report = Json::Object({
        {"scheme", Json::String(std::string(scheme.name))},
        {"preset", Json::String(std::string(scheme.preset))},
        {"format", Json::String(std::string(scheme.format))},
        {"shards", Json::Int(summary.shards_total)},
        {"shards_written", Json::Int(summary.shards_written)},
        {"shards_resumed", Json::Int(summary.shards_resumed)},
        {"bytes_before", Json::Int(before)},
        {"bytes_after", Json::Int(after)},
        {"seconds", Json::Double(summary.seconds)},
        {"tensors", std::move(rows)},
    });
    QUANTD_RETURN_IF_ERROR(WriteFileAtomically(
        OutputPath(kReportJson), absl::StrCat(SerializeJson(report, /*indent=*/2), "\n")));
    return WriteFileAtomically(OutputPath(kReportCsv), csv);
  }

  Client& client_;
  const CompressOptions& options_;
  Checkpoint& checkpoint_;
  Plan& plan_;
  const Json fingerprint_;
  const std::map<std::string, FinishedShard> finished_;
  std::vector<ShardState> shard_states_;
  std::unique_ptr<Reporter> reporter_;
  std::atomic<bool> failed_{false};
  absl::Mutex mu_;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  std::map<size_t, FinishedShard> manifest_shards_ ABSL_GUARDED_BY(mu_);
};

// Removes what an interrupted run left (AtomicFile temporaries of our output names) and shards
// of an earlier job with another shard count, which a loader globbing *.safetensors would
// otherwise pick up beside ours.
void SweepOutputDir(const std::string& dir, const Plan& plan, const Checkpoint& checkpoint,
                    const std::function<void(absl::string_view)>& log) {
  std::vector<std::string> targets = {std::string(kIndexFile), std::string(kConfigFile),
                                      std::string(kManifestFile), std::string(kReportJson),
                                      std::string(kReportCsv)};
  std::set<std::string> shards;
  for (const PlannedShard& shard : plan.shards) {
    targets.push_back(shard.file_name);
    shards.insert(shard.file_name);
  }
  for (const std::string& name : checkpoint.other_files) targets.push_back(name);
  static const LazyRE2 kShardName = {R"(model-\d{5}-of-\d{5}\.safetensors)"};
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (RE2::FullMatch(name, *kShardName) && shards.count(name) == 0) {
      log(absl::StrCat("removing ", name, ": a shard of an earlier job with another layout"));
      fs::remove(entry.path(), error);
      continue;
    }
    for (const std::string& target : targets) {
      if (IsAtomicFileTemporary(name, target)) {
        fs::remove(entry.path(), error);
        break;
      }
    }
  }
}

}  // namespace

const std::vector<const Scheme*>& Schemes() {
  static const auto* schemes = new std::vector<const Scheme*>{&kFp8Dynamic, &kFp8Block, &kW8A8Int8,
                                                              &kW4A16,      &kNvfp4,    &kMxfp4};
  return *schemes;
}

absl::StatusOr<const Scheme*> FindScheme(absl::string_view name) {
  std::vector<absl::string_view> names;
  for (const Scheme* scheme : Schemes()) {
    if (absl::AsciiStrToLower(name) == scheme->name) return scheme;
    names.push_back(scheme->name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown --scheme=", name, "; accepted: ", absl::StrJoin(names, ", ")));
}

absl::StatusOr<int64_t> ParseShardSize(absl::string_view text) {
  const std::string lowered = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  absl::string_view number = lowered;
  int64_t unit = 1;
  const std::pair<absl::string_view, int64_t> units[] = {{"kib", int64_t{1} << 10},
                                                         {"mib", int64_t{1} << 20},
                                                         {"gib", int64_t{1} << 30},
                                                         {"tib", int64_t{1} << 40},
                                                         {"kb", 1'000},
                                                         {"mb", 1'000'000},
                                                         {"gb", 1'000'000'000},
                                                         {"tb", 1'000'000'000'000},
                                                         {"b", 1}};
  for (const auto& [suffix, factor] : units) {
    if (absl::ConsumeSuffix(&number, suffix)) {
      unit = factor;
      break;
    }
  }
  double value = 0;
  if (!absl::SimpleAtod(number, &value) || !(value > 0) ||
      value * static_cast<double>(unit) > 9e18) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shard size \"", text, "\" is not a positive size such as 5GB, 500MB, 2GiB or 1048576"));
  }
  return static_cast<int64_t>(value * static_cast<double>(unit));
}

absl::StatusOr<CompressSummary> CompressCheckpoint(Client& client, const CompressOptions& options) {
  if (options.scheme == nullptr) return absl::InvalidArgumentError("no scheme given");
  if (options.max_shard_bytes <= 0) {
    return absl::InvalidArgumentError("the shard size must be positive");
  }
  std::error_code error;
  fs::create_directories(options.output_dir, error);
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create OUT_DIR '", options.output_dir, "': ", error.message()));
  }
  if (fs::equivalent(options.input_dir, options.output_dir, error)) {
    return absl::InvalidArgumentError(
        "OUT_DIR is IN_DIR: the output would overwrite the checkpoint it is read from");
  }
  // We delete stale shards and overwrite config.json in OUT_DIR: only in a directory of our
  // own (it has our manifest) or an empty one, never in, say, another model's directory.
  const fs::path manifest_path = fs::path(options.output_dir) / kManifestFile;
  if (!fs::exists(manifest_path, error) && !fs::is_empty(options.output_dir, error)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "OUT_DIR '", options.output_dir, "' is not empty and has no ", kManifestFile,
        ": it is not an earlier `quantctl compress` output; give a new or empty directory"));
  }
  QUANTD_ASSIGN_OR_RETURN(Checkpoint checkpoint, LoadCheckpoint(options.input_dir));
  QUANTD_ASSIGN_OR_RETURN(Plan plan, MakePlan(checkpoint, options));
  QUANTD_ASSIGN_OR_RETURN(Json fingerprint, JobFingerprint(checkpoint, options));
  const auto log = [&](absl::string_view line) {
    if (options.write_log) options.write_log(absl::StrCat(line, "\n"));
  };
  for (const std::string& note : checkpoint.notes) log(note);
  int quantized = 0;
  for (const PlannedTensor& tensor : plan.tensors) quantized += tensor.quantize ? 1 : 0;
  log(absl::StrFormat("%s (%s, %s): %d of %d tensors to quantize, %d shards", options.scheme->name,
                      options.scheme->preset, options.scheme->format, quantized,
                      plan.tensors.size(), plan.shards.size()));
  for (const PlannedTensor& tensor : plan.tensors) {
    if (!tensor.quantize && absl::StartsWith(tensor.note, "in_features")) {
      log(absl::StrCat("dense: ", tensor.input.info->name, ": ", tensor.note));
    }
  }

  if (options.scheme->layout == WeightLayout::kNvfp4) {
    const int groups = ShareFusedGlobalScales(&plan, options.in_flight);
    if (groups > 0) {
      log(
          absl::StrFormat("nvfp4: %d fused groups (q/k/v, gate/up) share one global scale each, "
                          "as vLLM needs",
                          groups));
    }
  }
  SweepOutputDir(options.output_dir, plan, checkpoint, log);
  std::string why;
  std::map<std::string, FinishedShard> finished =
      ReadManifest(manifest_path.string(), fingerprint, &why);
  if (!why.empty()) log(absl::StrCat("starting over: ", why));
  Job job(client, options, checkpoint, plan, std::move(fingerprint), std::move(finished));
  return job.Run();
}

std::string SummaryTable(const CompressSummary& summary) {
  struct Kind {
    int64_t tensors = 0, before = 0, after = 0;
    double min_sqnr = INFINITY, sum_sqnr = 0, min_cosine = INFINITY, max_err = 0;
    int64_t measured = 0, finite = 0;
    std::string worst;
  };
  std::vector<std::pair<std::string, Kind>> kinds;
  const auto kind_of = [&](const std::string& name) -> Kind& {
    for (auto& [kind_name, kind] : kinds) {
      if (kind_name == name) return kind;
    }
    kinds.emplace_back(name, Kind());
    return kinds.back().second;
  };
  Kind total;
  for (const TensorReport& row : summary.tensors) {
    for (Kind* kind : {&kind_of(row.scheme), &total}) {
      ++kind->tensors;
      kind->before += row.bytes_before;
      kind->after += row.bytes_after;
      if (std::isnan(row.sqnr_db)) continue;
      ++kind->measured;
      if (std::isfinite(row.sqnr_db)) {
        kind->sum_sqnr += row.sqnr_db;
        ++kind->finite;
      }
      if (row.sqnr_db < kind->min_sqnr) {
        kind->min_sqnr = row.sqnr_db;
        kind->worst = row.name;
      }
      kind->min_cosine = std::min(kind->min_cosine, row.cosine);
      kind->max_err = std::max(kind->max_err, row.max_abs_err);
    }
  }
  std::string out =
      "| tensors | count | bytes before | bytes after | ratio | min SQNR dB | mean SQNR dB | "
      "min cosine | max abs err | worst tensor |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n";
  const auto line = [&](const std::string& name, const Kind& kind) {
    const bool measured = kind.measured > 0;
    absl::StrAppendFormat(
        &out, "| %s | %d | %s | %s | %.2fx | %s | %s | %s | %s | %s |\n", name, kind.tensors,
        HumanBytes(kind.before), HumanBytes(kind.after),
        kind.after > 0 ? static_cast<double>(kind.before) / kind.after : 0.0,
        measured ? absl::StrFormat("%.2f", kind.min_sqnr) : "-",
        kind.finite > 0 ? absl::StrFormat("%.2f", kind.sum_sqnr / kind.finite) : "-",
        measured ? absl::StrFormat("%.6f", kind.min_cosine) : "-",
        measured ? absl::StrFormat("%.4g", kind.max_err) : "-", measured ? kind.worst : "-");
  };
  for (const auto& [name, kind] : kinds) line(name, kind);
  line("total", total);
  absl::StrAppendFormat(&out, "\n%d shards: %d written, %d kept from an earlier run; %.1f s\n",
                        summary.shards_total, summary.shards_written, summary.shards_resumed,
                        summary.seconds);
  return out;
}

}  // namespace quantd::compress
