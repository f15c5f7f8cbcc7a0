// Tests for client/safetensors.h: files written and read back for every dtype and awkward
// shapes, the layout the reference writer uses (8-byte aligned data, __metadata__), and
// refusal of corrupt and hostile files: every truncation, random corruption of the header, and
// crafted headers (lengths, JSON, dtypes, shapes, offsets). Refusals are InvalidArgument that
// name the file and say what is wrong; nothing crashes or allocates from an unchecked size.
#include "safetensors.h"

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace quantd::safetensors {
namespace {

namespace fs = std::filesystem;

std::string TempPath(absl::string_view name) {
  return absl::StrCat(testing::TempDir(), "/safetensors_test_", getpid(), "_", name);
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A file with a hand-written header: the length field (`length` or the header's size), the
// header, the data.
std::string Crafted(const std::string& header, const std::string& data, uint64_t length) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>(length >> (8 * i));
  return out + header + data;
}
std::string Crafted(const std::string& header, const std::string& data = "") {
  return Crafted(header, data, header.size());
}

std::string Pattern(size_t n, uint32_t seed) {
  std::string out(n, '\0');
  uint32_t state = seed * 2654435761u + 1u;
  for (char& c : out) {
    state = state * 1664525u + 1013904223u;
    c = static_cast<char>(state >> 24);
  }
  return out;
}

absl::Status OpenStatus(const std::string& bytes) {
  const std::string path = TempPath("crafted.safetensors");
  WriteBytes(path, bytes);
  absl::StatusOr<std::unique_ptr<File>> file = File::Open(path);
  fs::remove(path);
  return file.status();
}

void ExpectRefused(const std::string& bytes, absl::string_view fragment) {
  const absl::Status status = OpenStatus(bytes);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), fragment))
      << "message: " << status.message() << "\nexpected to contain: " << fragment;
  EXPECT_TRUE(absl::StrContains(status.message(), "crafted.safetensors")) << status.message();
}

std::vector<std::pair<TensorEntry, std::string>> EveryDType() {
  std::vector<std::pair<TensorEntry, std::string>> tensors;
  uint32_t seed = 1;
  for (const absl::string_view name : {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16",
                                       "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"}) {
    const DType dtype = *DTypeFromName(name);
    const std::vector<int64_t> shape = {3, 5};
    tensors.push_back({TensorEntry{absl::StrCat("t.", name), dtype, shape},
                       Pattern(static_cast<size_t>(15 * DTypeSize(dtype)), seed++)});
  }
  tensors.push_back({TensorEntry{"scalar", DType::kF32, {}}, Pattern(4, 99)});
  tensors.push_back({TensorEntry{"empty", DType::kF16, {0, 7}}, ""});
  tensors.push_back({TensorEntry{"ragged", DType::kBF16, {1, 3, 5, 7}}, Pattern(210, 7)});
  return tensors;
}

TEST(SafetensorsTest, WritesAndReadsBackEveryDType) {
  const auto tensors = EveryDType();
  const std::string path = TempPath("round_trip.safetensors");
  ASSERT_TRUE(WriteFile(path, tensors, {{"format", "pt"}, {"note", "x"}}).ok());
  absl::StatusOr<std::unique_ptr<File>> file = File::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), tensors.size());
  for (const auto& [entry, bytes] : tensors) {
    const TensorInfo* info = (*file)->Find(entry.name);
    ASSERT_NE(info, nullptr) << entry.name;
    EXPECT_EQ(info->dtype, entry.dtype);
    EXPECT_EQ(info->shape, entry.shape);
    EXPECT_EQ((*file)->Data(*info), bytes) << entry.name;
  }
  EXPECT_EQ((*file)->metadata(), (Metadata{{"format", "pt"}, {"note", "x"}}));
  EXPECT_EQ((*file)->Find("absent"), nullptr);
  // The data section starts 8-byte aligned: the header is padded with spaces.
  const std::string bytes = ReadBytes(path);
  EXPECT_EQ((*file)->header_json().size() % 8, 0u);
  EXPECT_EQ((*file)->header_json().back(), ' ');
  EXPECT_EQ(static_cast<size_t>((*file)->file_bytes()), bytes.size());
  fs::remove(path);
}

TEST(SafetensorsTest, LayoutOffsetsAreDenseInEntryOrder) {
  absl::StatusOr<Layout> layout = LayOut({{"b", DType::kF32, {2}}, {"a", DType::kU8, {3}}});
  ASSERT_TRUE(layout.ok());
  ASSERT_EQ(layout->data_offsets.size(), 2u);
  const auto start = static_cast<int64_t>(layout->header.size());
  EXPECT_EQ(start % 8, 0);
  EXPECT_EQ(layout->data_offsets[0], start);
  EXPECT_EQ(layout->data_offsets[1], start + 8);
  EXPECT_EQ(layout->file_bytes, start + 11);
  EXPECT_TRUE(absl::StrContains(layout->header, R"("b":{"dtype":"F32","shape":[2],)"
                                                R"("data_offsets":[0,8]})"));
}

TEST(SafetensorsTest, LayoutRefusesBadEntries) {
  EXPECT_EQ(LayOut({{"a", DType::kF32, {1}}, {"a", DType::kF32, {1}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LayOut({{"", DType::kF32, {1}}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LayOut({{"__metadata__", DType::kF32, {1}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LayOut({{"a", DType::kF64, {int64_t{1} << 31, int64_t{1} << 31}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteFile(TempPath("short.safetensors"), {{{"a", DType::kF32, {2}}, "1234"}}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, ByteSizeChecksOverflow) {
  EXPECT_EQ(*ByteSize(DType::kBF16, {4096, 11008}), 4096 * 11008 * 2);
  EXPECT_EQ(*ByteSize(DType::kF32, {}), 4);
  EXPECT_EQ(*ByteSize(DType::kF32, {0, int64_t{1} << 62}), 0);
  EXPECT_FALSE(ByteSize(DType::kU8, {int64_t{1} << 32, int64_t{1} << 32}).ok());
  EXPECT_FALSE(ByteSize(DType::kF32, {int64_t{1} << 62}).ok());
  EXPECT_FALSE(ByteSize(DType::kF32, {-1}).ok());
}

TEST(SafetensorsTest, UnknownDTypeNamesTheAcceptedOnes) {
  absl::StatusOr<DType> dtype = DTypeFromName("F4");
  ASSERT_FALSE(dtype.ok());
  EXPECT_TRUE(absl::StrContains(dtype.status().message(), "accepted: BOOL, U8, I8, F8_E5M2"));
}

TEST(SafetensorsTest, RefusesCraftedHeaders) {
  const std::string f32x2 = R"({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";
  ExpectRefused("", "fewer than the 8-byte header length");
  ExpectRefused("\x01\x00\x00", "fewer than the 8-byte header length");
  ExpectRefused(Crafted("", "", 0), "header length is 0");
  ExpectRefused(Crafted("{}", "", 1 << 20), "runs past the end of the file");
  ExpectRefused(Crafted("{}", "", uint64_t{1} << 63), "above safetensors' limit");
  ExpectRefused(Crafted("{}", "", ~uint64_t{0}), "above safetensors' limit");
  ExpectRefused(Crafted("{\"a\": "), "header is not valid JSON");
  ExpectRefused(Crafted("\xFF\xFE{}"), "header is not valid JSON");
  ExpectRefused(Crafted("[]"), "not a JSON object");
  ExpectRefused(Crafted(std::string(5000, '[') + std::string(5000, ']')), "nests deeper");
  ExpectRefused(
      Crafted(absl::StrCat(R"({"a": )", f32x2, R"(, "a": )", f32x2, "}"), std::string(16, '\0')),
      "repeats the key");
  ExpectRefused(Crafted(R"({"a": 7})"), "entry is not an object");
  ExpectRefused(Crafted(R"({"a": {"shape": [1], "data_offsets": [0, 4]}})", "1234"),
                "dtype is missing");
  ExpectRefused(Crafted(R"({"a": {"dtype": "F32", "data_offsets": [0, 4]}})", "1234"),
                "shape is missing");
  ExpectRefused(Crafted(R"({"a": {"dtype": "F32", "shape": [1]}})", "1234"),
                "data_offsets is missing");
  ExpectRefused(Crafted(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", "1234"),
                "data_offsets is missing or not a [begin, end] pair");
  ExpectRefused(Crafted(R"({"a": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}})", "1234"),
                "unknown dtype \"f32\"");
  ExpectRefused(
      Crafted(R"({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 4]}})", "1234"),
      "not a non-negative integer");
  ExpectRefused(
      Crafted(R"({"a": {"dtype": "F32", "shape": ["4"], "data_offsets": [0, 4]}})", "1234"),
      "not a non-negative integer");
  ExpectRefused(
      Crafted(R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", "1234"),
      "not a non-negative integer");
  ExpectRefused(Crafted(R"({"a": {"dtype": "F32", "shape": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],)"
                        R"( "data_offsets": [0, 4]}})",
                        "1234"),
                "rank 17 is above the maximum 16");
  ExpectRefused(Crafted(R"({"a": {"dtype": "U8", "shape": [4294967296, 4294967296],)"
                        R"( "data_offsets": [0, 4]}})",
                        "1234"),
                "more bytes than int64 counts");
  ExpectRefused(Crafted(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})",
                        std::string(8, '\0')),
                "not a pair of integers 0 <= begin <= end");
  ExpectRefused(Crafted(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})",
                        std::string(8, '\0')),
                "not a pair of integers 0 <= begin <= end");
  ExpectRefused(Crafted(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})",
                        std::string(8, '\0')),
                "span 8 bytes but shape [3] of F32 needs 12");
  ExpectRefused(
      Crafted(absl::StrCat(R"({"a": )", f32x2,
                           R"(, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})"),
              std::string(12, '\0')),
      "overlaps \"a\"");
  ExpectRefused(Crafted(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                        std::string(12, '\0')),
                "leaving a gap of 4 unused bytes");
  ExpectRefused(Crafted(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
                        std::string(8, '\0')),
                "run past the end of the data section");
  ExpectRefused(Crafted(absl::StrCat(R"({"a": )", f32x2, "}"), std::string(9, '\0')),
                "trailing bytes that no tensor describes");
  ExpectRefused(Crafted(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": )"
                        R"([9223372036854775803, 9223372036854775807]}})",
                        std::string(4, '\0')),
                "leaving a gap");
  ExpectRefused(Crafted(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": )"
                        R"([18446744073709551616, 18446744073709551620]}})",
                        std::string(4, '\0')),
                "is not a pair of integers");
  ExpectRefused(
      Crafted(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}})", "1234"),
      "unexpected field \"x\"");
  ExpectRefused(Crafted(R"({"__metadata__": {"format": 1}})"), "\"format\" is not a string");
  ExpectRefused(Crafted(R"({"__metadata__": []})"), "__metadata__ is not an object of strings");
  ExpectRefused(Crafted(R"({"": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}})"),
                "empty name");
}

TEST(SafetensorsTest, AcceptsAnEmptyFileOfTensorsAndZeroSizedOnes) {
  EXPECT_TRUE(OpenStatus(Crafted("{}")).ok());
  EXPECT_TRUE(OpenStatus(Crafted(R"({"__metadata__": {}})")).ok());
  EXPECT_TRUE(
      OpenStatus(Crafted(R"({"z": {"dtype": "F32", "shape": [0, 3], "data_offsets": [4, 4]},)"
                         R"( "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
                         "1234"))
          .ok());
}

TEST(SafetensorsTest, EveryTruncationIsRefused) {
  const std::string path = TempPath("whole.safetensors");
  ASSERT_TRUE(WriteFile(path, EveryDType()).ok());
  const std::string whole = ReadBytes(path);
  fs::remove(path);
  for (size_t size = 0; size < whole.size(); ++size) {
    const absl::Status status = OpenStatus(whole.substr(0, size));
    ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << "size " << size;
  }
  EXPECT_TRUE(OpenStatus(whole).ok());
}

TEST(SafetensorsTest, RandomCorruptionNeverCrashes) {
  const std::string path = TempPath("whole.safetensors");
  ASSERT_TRUE(WriteFile(path, EveryDType()).ok());
  const std::string whole = ReadBytes(path);
  fs::remove(path);
  std::mt19937 rng(7);
  int refused = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string bytes = whole;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      // Mostly inside the length field and the header, where the structure is.
      const size_t limit = std::min(bytes.size(), size_t{8} + 1200);
      bytes[rng() % limit] = static_cast<char>(rng());
    }
    const absl::Status status = OpenStatus(bytes);
    if (!status.ok()) {
      ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
      ++refused;
    }
  }
  EXPECT_GT(refused, 2000);  // a flipped byte of the structure is nearly always noticed
}

// Headers with very many entries (a large MoE checkpoint's shard): nothing in writing or
// reading them may be quadratic in the entry count (100 000 entries would then take minutes).
TEST(SafetensorsTest, HundredThousandTensors) {
  std::vector<std::pair<TensorEntry, std::string>> tensors;
  for (int i = 0; i < 100000; ++i) {
    tensors.push_back({TensorEntry{absl::StrCat("model.experts.", i, ".w"), DType::kU8, {1}},
                       std::string(1, static_cast<char>(i))});
  }
  const std::string path = TempPath("many.safetensors");
  ASSERT_TRUE(WriteFile(path, tensors).ok());
  absl::StatusOr<std::unique_ptr<File>> file = File::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), tensors.size());
  EXPECT_EQ((*file)->Data((*file)->tensors()[99999]), std::string(1, static_cast<char>(99999)));
  fs::remove(path);
}

TEST(SafetensorsTest, MissingFileAndDirectory) {
  EXPECT_EQ(File::Open(TempPath("absent.safetensors")).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(File::Open(testing::TempDir()).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::safetensors
