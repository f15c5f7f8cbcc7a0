#include "safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "json.h"
#include "quantd/status.h"

namespace quantd::safetensors {
namespace {

struct DTypeRow {
  DType dtype;
  absl::string_view name;
  int size;
};

// One row per DType, in enum order (checked below).
constexpr DTypeRow kDTypes[] = {
    {DType::kBool, "BOOL", 1},      {DType::kU8, "U8", 1},          {DType::kI8, "I8", 1},
    {DType::kF8E5M2, "F8_E5M2", 1}, {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kI16, "I16", 2},
    {DType::kU16, "U16", 2},        {DType::kF16, "F16", 2},        {DType::kBF16, "BF16", 2},
    {DType::kI32, "I32", 4},        {DType::kU32, "U32", 4},        {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},        {DType::kI64, "I64", 8},        {DType::kU64, "U64", 8},
};

constexpr bool RowsFollowTheEnum() {
  for (size_t i = 0; i < std::size(kDTypes); ++i) {
    if (static_cast<size_t>(kDTypes[i].dtype) != i) return false;
  }
  return std::size(kDTypes) == static_cast<size_t>(DType::kU64) + 1;
}
static_assert(RowsFollowTheEnum(), "kDTypes row i must describe DType value i, all of them");

constexpr absl::string_view kMetadataKey = "__metadata__";

absl::Status Invalid(absl::string_view tensor, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tensor \"", tensor, "\": ", what));
}

absl::StatusOr<TensorInfo> ParseEntry(const std::string& name, const Json& entry) {
  if (!entry.is_object()) return Invalid(name, "entry is not an object");
  for (const auto& [key, unused] : entry.members()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return Invalid(name, absl::StrCat("unexpected field \"", key,
                                        "\" (entries hold dtype, shape and data_offsets)"));
    }
  }
  TensorInfo info;
  info.name = name;
  const Json* dtype = entry.Find("dtype");
  if (dtype == nullptr || !dtype->is_string())
    return Invalid(name, "dtype is missing or not a string");
  absl::StatusOr<DType> parsed = DTypeFromName(dtype->text());
  if (!parsed.ok()) return Invalid(name, parsed.status().message());
  info.dtype = *parsed;

  const Json* shape = entry.Find("shape");
  if (shape == nullptr || !shape->is_array())
    return Invalid(name, "shape is missing or not a list");
  if (shape->items().size() > static_cast<size_t>(kMaxRank)) {
    return Invalid(
        name, absl::StrCat("rank ", shape->items().size(), " is above the maximum ", kMaxRank));
  }
  for (const Json& dim : shape->items()) {
    absl::StatusOr<int64_t> value = dim.AsInt64();
    if (!value.ok() || *value < 0) {
      return Invalid(
          name, absl::StrCat("shape holds ", SerializeJson(dim), ", not a non-negative integer"));
    }
    info.shape.push_back(*value);
  }
  absl::StatusOr<int64_t> bytes = ByteSize(info.dtype, info.shape);
  if (!bytes.ok()) return Invalid(name, bytes.status().message());

  const Json* offsets = entry.Find("data_offsets");
  if (offsets == nullptr || !offsets->is_array() || offsets->items().size() != 2) {
    return Invalid(name, "data_offsets is missing or not a [begin, end] pair");
  }
  absl::StatusOr<int64_t> begin = offsets->items()[0].AsInt64();
  absl::StatusOr<int64_t> end = offsets->items()[1].AsInt64();
  if (!begin.ok() || !end.ok() || *begin < 0 || *end < *begin) {
    return Invalid(name, absl::StrCat("data_offsets ", SerializeJson(*offsets),
                                      " is not a pair of integers 0 <= begin <= end"));
  }
  if (*end - *begin != *bytes) {
    return Invalid(name,
                   absl::StrCat("data_offsets ", SerializeJson(*offsets), " span ", *end - *begin,
                                " bytes but shape [", absl::StrJoin(info.shape, ", "), "] of ",
                                DTypeName(info.dtype), " needs ", *bytes));
  }
  info.offset = *begin;
  info.bytes = *bytes;
  return info;
}

}  // namespace

absl::string_view DTypeName(DType dtype) { return kDTypes[static_cast<int>(dtype)].name; }

int DTypeSize(DType dtype) { return kDTypes[static_cast<int>(dtype)].size; }

absl::StatusOr<DType> DTypeFromName(absl::string_view name) {
  std::vector<absl::string_view> names;
  for (const DTypeRow& row : kDTypes) {
    if (row.name == name) return row.dtype;
    names.push_back(row.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype \"", name, "\"; accepted: ", absl::StrJoin(names, ", ")));
}

absl::StatusOr<int64_t> ByteSize(DType dtype, const std::vector<int64_t>& shape) {
  int64_t bytes = DTypeSize(dtype);
  for (const int64_t dim : shape) {
    if (dim < 0) return absl::InvalidArgumentError(absl::StrCat("negative dim ", dim));
    if (dim != 0 && bytes > std::numeric_limits<int64_t>::max() / dim) {
      return absl::InvalidArgumentError(absl::StrCat("shape [", absl::StrJoin(shape, ", "),
                                                     "] holds more bytes than int64 counts"));
    }
    bytes *= dim;
  }
  return bytes;
}

absl::StatusOr<Header> ParseHeader(absl::string_view json, int64_t data_bytes) {
  absl::StatusOr<Json> parsed = ParseJson(json);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("header is not valid JSON: ", parsed.status().message()));
  }
  if (!parsed->is_object()) return absl::InvalidArgumentError("header is not a JSON object");
  Header header;
  for (const auto& [name, entry] : parsed->members()) {
    if (name == kMetadataKey) {
      if (!entry.is_object()) {
        return absl::InvalidArgumentError("__metadata__ is not an object of strings");
      }
      for (const auto& [key, value] : entry.members()) {
        if (!value.is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat("__metadata__ \"", key, "\" is not a string"));
        }
        header.metadata.emplace_back(key, value.text());
      }
      continue;
    }
    if (name.empty()) return absl::InvalidArgumentError("a tensor has an empty name");
    QUANTD_ASSIGN_OR_RETURN(TensorInfo info, ParseEntry(name, entry));
    header.tensors.push_back(std::move(info));
  }
  // Dense packing, as the reference reader checks: sorted by offset, each tensor starts where
  // the previous one ended and the last one ends at the end of the file. (Zero-byte tensors
  // may share an offset.)
  std::stable_sort(header.tensors.begin(), header.tensors.end(),
                   [](const TensorInfo& a, const TensorInfo& b) {
                     return a.offset != b.offset ? a.offset < b.offset : a.bytes < b.bytes;
                   });
  int64_t expected = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& tensor : header.tensors) {
    if (tensor.offset != expected) {
      if (tensor.offset < expected) {
        return Invalid(tensor.name, absl::StrCat("data starting at ", tensor.offset, " overlaps \"",
                                                 previous->name, "\", which ends at ", expected));
      }
      return Invalid(tensor.name,
                     absl::StrCat("data starts at ", tensor.offset, ", leaving a gap of ",
                                  tensor.offset - expected, " unused bytes before it"));
    }
    // tensor.offset == expected <= data_bytes here, so the subtraction cannot overflow.
    if (tensor.bytes > data_bytes - tensor.offset) {
      return Invalid(tensor.name, absl::StrCat(tensor.bytes, " bytes from offset ", tensor.offset,
                                               " run past the end of the data section (",
                                               data_bytes, " bytes): is the file truncated?"));
    }
    expected = tensor.offset + tensor.bytes;
    previous = &tensor;
  }
  if (expected != data_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("the tensors hold ", expected,
                                                   " bytes but the data section has ", data_bytes,
                                                   " (trailing bytes that no tensor describes)"));
  }
  return header;
}

absl::StatusOr<std::unique_ptr<File>> File::Open(const std::string& path) {
  QUANTD_ASSIGN_OR_RETURN(MappedFile mapping, MappedFile::Open(path));
  const absl::string_view bytes = mapping.bytes();
  const auto refuse = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  if (bytes.size() < 8) {
    return refuse(absl::StrCat("not a safetensors file: ", bytes.size(),
                               " bytes, fewer than the 8-byte header length"));
  }
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) {
    header_bytes = (header_bytes << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  }
  const uint64_t available = bytes.size() - 8;
  if (header_bytes == 0) return refuse("header length is 0");
  if (header_bytes > static_cast<uint64_t>(kMaxHeaderBytes)) {
    return refuse(absl::StrCat("header length ", header_bytes, " is above safetensors' limit of ",
                               kMaxHeaderBytes, " bytes: not a safetensors file, or corrupt"));
  }
  if (header_bytes > available) {
    return refuse(absl::StrCat("header length ", header_bytes, " runs past the end of the file (",
                               bytes.size(), " bytes): truncated or not a safetensors file"));
  }
  absl::StatusOr<Header> header =
      ParseHeader(bytes.substr(8, header_bytes), static_cast<int64_t>(available - header_bytes));
  if (!header.ok()) return refuse(header.status().message());
  return std::unique_ptr<File>(
      new File(path, std::move(mapping), *std::move(header), static_cast<int64_t>(header_bytes)));
}

const TensorInfo* File::Find(absl::string_view name) const {
  for (const TensorInfo& tensor : header_.tensors) {
    if (tensor.name == name) return &tensor;
  }
  return nullptr;
}

absl::string_view File::Data(const TensorInfo& tensor) const {
  return mapping_.bytes().substr(static_cast<size_t>(8 + header_bytes_ + tensor.offset),
                                 static_cast<size_t>(tensor.bytes));
}

absl::string_view File::header_json() const {
  return mapping_.bytes().substr(8, static_cast<size_t>(header_bytes_));
}

absl::StatusOr<Layout> LayOut(const std::vector<TensorEntry>& entries, const Metadata& metadata) {
  // Members are collected directly (names are checked unique here), not through Json::Set,
  // which searches: a shard may hold tens of thousands of tensors.
  Json::Members members;
  if (!metadata.empty()) {
    Json::Members meta;
    for (const auto& [key, value] : metadata) meta.emplace_back(key, Json::String(value));
    members.emplace_back(std::string(kMetadataKey), Json::Object(std::move(meta)));
  }
  Layout layout;
  std::set<absl::string_view> names;
  int64_t offset = 0;
  for (const TensorEntry& entry : entries) {
    if (entry.name.empty() || entry.name == kMetadataKey || !names.insert(entry.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor name \"", entry.name, "\" is empty, reserved or repeated"));
    }
    absl::StatusOr<int64_t> bytes = ByteSize(entry.dtype, entry.shape);
    if (!bytes.ok()) return Invalid(entry.name, bytes.status().message());
    std::vector<Json> dims;
    for (const int64_t dim : entry.shape) dims.push_back(Json::Int(dim));
    members.emplace_back(
        entry.name, Json::Object({{"dtype", Json::String(std::string(DTypeName(entry.dtype)))},
                                  {"shape", Json::Array(std::move(dims))},
                                  {"data_offsets",
                                   Json::Array({Json::Int(offset), Json::Int(offset + *bytes)})}}));
    layout.data_offsets.push_back(offset);
    layout.data_bytes.push_back(*bytes);
    offset += *bytes;
  }
  std::string json = SerializeJson(Json::Object(std::move(members)));
  json.append((8 - json.size() % 8) % 8, ' ');
  const uint64_t length = json.size();
  layout.header.resize(8);
  for (int i = 0; i < 8; ++i) {
    layout.header[static_cast<size_t>(i)] = static_cast<char>(length >> (8 * i));
  }
  layout.header += json;
  const auto start = static_cast<int64_t>(layout.header.size());
  for (int64_t& data_offset : layout.data_offsets) data_offset += start;
  layout.file_bytes = start + offset;
  return layout;
}

absl::Status WriteFile(const std::string& path,
                       const std::vector<std::pair<TensorEntry, std::string>>& tensors,
                       const Metadata& metadata) {
  std::vector<TensorEntry> entries;
  for (const auto& [entry, unused] : tensors) entries.push_back(entry);
  QUANTD_ASSIGN_OR_RETURN(const Layout layout, LayOut(entries, metadata));
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (static_cast<int64_t>(tensors[i].second.size()) != layout.data_bytes[i]) {
      return Invalid(tensors[i].first.name,
                     absl::StrCat(tensors[i].second.size(), " bytes given, the shape needs ",
                                  layout.data_bytes[i]));
    }
  }
  AtomicFile file(path);
  QUANTD_RETURN_IF_ERROR(file.Open());
  QUANTD_RETURN_IF_ERROR(file.Write(layout.header));
  for (const auto& [entry, bytes] : tensors) QUANTD_RETURN_IF_ERROR(file.Write(bytes));
  return file.Commit();
}

}  // namespace quantd::safetensors
