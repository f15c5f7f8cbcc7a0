// Tests for client/npy.h: round trips over every type and awkward shapes, the header variants
// numpy (and hand-written files) produce, refusal of corrupt and hostile input, the ZIP64
// writer branch, and — when $QUANTD_PYTHON names a Python with numpy — files crossing between
// us and numpy in both directions.
#include "npy.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "quantd/tensor.h"

#define ZLIB_CONST
#include <zlib.h>

namespace quantd::npy {
namespace {

namespace fs = std::filesystem;

// ---- Helpers ----

// Asserts an InvalidArgument whose message contains `fragment`.
#define EXPECT_INVALID(expr, fragment)                                                       \
  do {                                                                                       \
    auto quantd_test_status_ = (expr);                                                       \
    absl::Status quantd_test_s_ = StatusOf(quantd_test_status_);                             \
    EXPECT_EQ(quantd_test_s_.code(), absl::StatusCode::kInvalidArgument) << quantd_test_s_;  \
    EXPECT_TRUE(absl::StrContains(quantd_test_s_.message(), fragment))                       \
        << "message: " << quantd_test_s_.message() << "\nexpected to contain: " << fragment; \
  } while (false)

absl::Status StatusOf(const absl::Status& s) { return s; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

std::string Pattern(size_t n, uint32_t seed) {
  std::string out(n, '\0');
  uint32_t state = seed * 2654435761u + 12345u;
  for (size_t i = 0; i < n; ++i) {
    state = state * 1664525u + 1013904223u;
    out[i] = static_cast<char>(state >> 24);
  }
  return out;
}

std::string LE(uint64_t v, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return out;
}

// A .npy file with a hand-written header (no padding added).
std::string NpyFile(int major, absl::string_view header, absl::string_view data, int minor = 0) {
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(major));
  out.push_back(static_cast<char>(minor));
  out += LE(header.size(), major == 1 ? 2 : 4);
  out.append(header.data(), header.size());
  out.append(data.data(), data.size());
  return out;
}

std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void WriteFileBytes(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string Float32Bytes(const std::vector<float>& values) {
  std::string out(values.size() * 4, '\0');
  for (size_t i = 0; i < values.size(); ++i) out.replace(4 * i, 4, LE(FloatToBits(values[i]), 4));
  return out;
}

std::string Float64Bytes(const std::vector<double>& values) {
  std::string out;
  for (double v : values) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    out += LE(bits, 8);
  }
  return out;
}

float FloatAt(const std::string& data, size_t i) {
  uint32_t bits = 0;
  for (int b = 3; b >= 0; --b) bits = (bits << 8) | static_cast<unsigned char>(data[4 * i + b]);
  return BitsToFloat(bits);
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "npy_test.XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string File(absl::string_view name) const { return absl::StrCat(path_, "/", name); }
  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(path_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string path_;
};

// ---- Round trips over every type and shape ----

struct TypeCase {
  const char* descr;
  const char* name;
  DType dtype;
  int size;
};

void PrintTo(const TypeCase& type, std::ostream* os) { *os << type.descr; }

const TypeCase kTypeCases[] = {
    {"|b1", "b1", DType::kUnspecified, 1}, {"|i1", "i1", DType::kI8, 1},
    {"|u1", "u1", DType::kU8, 1},          {"<i2", "i2", DType::kUnspecified, 2},
    {"<u2", "u2", DType::kUnspecified, 2}, {"<i4", "i4", DType::kI32, 4},
    {"<u4", "u4", DType::kUnspecified, 4}, {"<i8", "i8", DType::kUnspecified, 8},
    {"<u8", "u8", DType::kUnspecified, 8}, {"<f2", "f2", DType::kF16, 2},
    {"<f4", "f4", DType::kF32, 4},         {"<f8", "f8", DType::kUnspecified, 8},
    {"<V2", "bf16", DType::kBF16, 2},
};

const std::vector<Shape> kShapes = {{},       {0},       {5},       {1, 16},
                                    {5, 160}, {3, 0, 2}, {3, 5, 7}, {2, 1, 1, 3, 1}};

int64_t Numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

class NpyRoundTripTest : public testing::TestWithParam<std::tuple<TypeCase, Shape>> {};

TEST_P(NpyRoundTripTest, SerializeThenParseIsIdentity) {
  const auto& [type, shape] = GetParam();
  Array in{DType::kUnspecified, shape, Pattern(Numel(shape) * type.size, 7), type.descr};
  absl::StatusOr<std::string> file = SerializeNpy(in);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<Array> out = ParseNpy(*file);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->descr, type.descr);
  EXPECT_EQ(out->dtype, type.dtype);
  EXPECT_EQ(out->shape, shape);
  EXPECT_EQ(out->data, in.data);
  // Data starts on a 64-byte boundary right after a newline, as numpy writes it.
  size_t header_size = file->size() - in.data.size();
  EXPECT_EQ(header_size % 64, 0u);
  EXPECT_EQ((*file)[header_size - 1], '\n');
}

INSTANTIATE_TEST_SUITE_P(AllTypes, NpyRoundTripTest,
                         testing::Combine(testing::ValuesIn(kTypeCases),
                                          testing::ValuesIn(kShapes)),
                         [](const testing::TestParamInfo<std::tuple<TypeCase, Shape>>& param_info) {
                           const Shape& shape = std::get<1>(param_info.param);
                           return absl::StrCat(
                               std::get<0>(param_info.param).name, "_",
                               shape.empty() ? "scalar" : absl::StrJoin(shape, "x"));
                         });

TEST(NpyRoundTripTest, QuantdDTypeAloneIsEnoughToWrite) {
  for (const TypeCase& type : kTypeCases) {
    if (type.dtype == DType::kUnspecified) continue;
    SCOPED_TRACE(type.descr);
    EXPECT_EQ(DescrForDType(type.dtype), type.descr);
    Array in{type.dtype, {3, 5}, Pattern(15 * type.size, 3)};
    absl::StatusOr<std::string> file = SerializeNpy(in);
    ASSERT_TRUE(file.ok()) << file.status();
    absl::StatusOr<Array> out = ParseNpy(*file);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->dtype, type.dtype);
    EXPECT_EQ(out->descr, type.descr);
    EXPECT_EQ(out->data, in.data);
  }
  EXPECT_EQ(DescrForDType(DType::kUnspecified), "");
}

TEST(NpyHeaderTest, MatchesNumpyLayoutByteForByte) {
  // np.save(f, np.zeros((3, 4), np.float32)) writes exactly this preamble (numpy >= 1.23).
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";
  dict += std::string(20, ' ');  // room for the first dim to grow to 21 digits
  std::string header = std::string("\x93NUMPY\x01\x00", 8) + LE(118, 2) + dict +
                       std::string(128 - 10 - dict.size() - 1, ' ') + "\n";
  absl::StatusOr<std::string> file =
      SerializeNpy(Array{DType::kF32, {3, 4}, std::string(48, '\0')});
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->substr(0, 128), header);
}

TEST(NpyHeaderTest, ShapesAreWrittenAsPythonTuples) {
  auto header_of = [](Shape shape) {
    absl::StatusOr<std::string> file =
        SerializeNpy(Array{DType::kU8, shape, std::string(Numel(shape), 'x')});
    return file.ok() ? file->substr(0, file->find('\n')) : std::string();
  };
  EXPECT_TRUE(absl::StrContains(header_of({}), "'shape': (), }"));
  EXPECT_TRUE(absl::StrContains(header_of({5}), "'shape': (5,), }"));
  EXPECT_TRUE(absl::StrContains(header_of({2, 0, 3}), "'shape': (2, 0, 3), }"));
}

// ---- Headers other writers produce ----

TEST(NpyHeaderTest, AcceptsPythonLiteralVariants) {
  std::string data = Float32Bytes({1, 2, 3, 4, 5, 6});
  const std::vector<std::string> headers = {
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
      "{\"shape\": ( 2 , 3 ) , \"fortran_order\" : False, \"descr\": \"<f4\"}",
      "{'fortran_order': False,'shape':(2,3,),'descr':'<f4'}   \n",
      "\t{ 'shape': (2L, 3L), 'descr': '<f4', 'fortran_order': False }\n",
      "{'descr': '<f4',\n 'fortran_order': False,\n 'shape': (2,\n 3)}",
  };
  for (const std::string& header : headers) {
    for (int major : {1, 2, 3}) {
      SCOPED_TRACE(absl::StrCat("v", major, " ", header));
      absl::StatusOr<Array> array = ParseNpy(NpyFile(major, header, data));
      ASSERT_TRUE(array.ok()) << array.status();
      EXPECT_EQ(array->shape, (Shape{2, 3}));
      EXPECT_EQ(array->data, data);
    }
  }
}

TEST(NpyHeaderTest, ScalarAndRankOneShapes) {
  absl::StatusOr<Array> scalar =
      ParseNpy(NpyFile(1, "{'descr': '<f4', 'fortran_order': False, 'shape': ()}", "abcd"));
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_TRUE(scalar->shape.empty());
  absl::StatusOr<Array> vector =
      ParseNpy(NpyFile(1, "{'descr': '|u1', 'fortran_order': False, 'shape': (5,)}", "abcde"));
  ASSERT_TRUE(vector.ok()) << vector.status();
  EXPECT_EQ(vector->shape, Shape{5});
  // A zero dim makes the array empty however large the other dims are.
  absl::StatusOr<Array> empty = ParseNpy(NpyFile(
      1, "{'descr': '<f8', 'fortran_order': False, 'shape': (0, 9223372036854775807)}", ""));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->shape, (Shape{0, INT64_MAX}));
}

TEST(NpyHeaderTest, BigEndianIsSwappedToLittleEndian) {
  absl::StatusOr<Array> f4 =
      ParseNpy(NpyFile(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,)}",
                       std::string("\x3f\x80\x00\x00\xc0\x00\x00\x00", 8)));
  ASSERT_TRUE(f4.ok()) << f4.status();
  EXPECT_EQ(f4->descr, "<f4");
  EXPECT_EQ(f4->dtype, DType::kF32);
  EXPECT_EQ(FloatAt(f4->data, 0), 1.0f);
  EXPECT_EQ(FloatAt(f4->data, 1), -2.0f);

  absl::StatusOr<Array> bf16 =
      ParseNpy(NpyFile(1, "{'descr': '>V2', 'fortran_order': False, 'shape': (1,)}", "\x3f\x80"));
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ(bf16->dtype, DType::kBF16);
  EXPECT_EQ(bf16->data, "\x80\x3f");

  absl::StatusOr<Array> i8 = ParseNpy(NpyFile(
      1, "{'descr': '>i8', 'fortran_order': False, 'shape': (1,)}", LE(0x0102030405060708, 8)));
  ASSERT_TRUE(i8.ok()) << i8.status();
  EXPECT_EQ(i8->data, std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8));

  // One-byte types carry no byte order: '<u1' and '>u1' are '|u1'.
  for (const char* descr : {"<u1", ">u1"}) {
    absl::StatusOr<Array> u1 = ParseNpy(
        NpyFile(1, absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (2,)}"),
                "\x01\x02"));
    ASSERT_TRUE(u1.ok()) << u1.status();
    EXPECT_EQ(u1->descr, "|u1");
    EXPECT_EQ(u1->data, "\x01\x02");
  }
}

// ---- Corrupt and hostile .npy ----

std::string Header(absl::string_view descr, absl::string_view shape, bool fortran = false) {
  return absl::StrCat("{'descr': '", descr, "', 'fortran_order': ", fortran ? "True" : "False",
                      ", 'shape': ", shape, ", }");
}

TEST(NpyCorruptTest, RefusesBadPreamble) {
  std::string good = NpyFile(1, Header("<f4", "(1,)"), "abcd");
  EXPECT_INVALID(ParseNpy(""), "not a .npy file");
  EXPECT_INVALID(ParseNpy("\x93NUMPY"), "not a .npy file");
  EXPECT_INVALID(ParseNpy("\x93NUMPX\x01\x00\x10\x00"), "not a .npy file");
  EXPECT_INVALID(ParseNpy("PK\x03\x04 this is a zip"), "not a .npy file");
  EXPECT_INVALID(ParseNpy(NpyFile(4, Header("<f4", "(1,)"), "abcd")), "version 4.0");
  EXPECT_INVALID(ParseNpy(NpyFile(1, Header("<f4", "(1,)"), "abcd", /*minor=*/1)), "version 1.1");
  EXPECT_INVALID(ParseNpy(good.substr(0, 9)), "truncated");
  EXPECT_INVALID(ParseNpy(std::string("\x93NUMPY\x02\x00\x01\x00", 10)), "truncated");
}

TEST(NpyCorruptTest, RefusesHeaderLengthBeyondFile) {
  std::string file = NpyFile(1, Header("<f4", "(1,)"), "abcd");
  file[8] = '\xff';
  file[9] = '\x7f';
  EXPECT_INVALID(ParseNpy(file), "runs past the end");
  std::string v2 = NpyFile(2, Header("<f4", "(1,)"), "abcd");
  v2.replace(8, 4, LE(0xFFFFFFF0u, 4));
  EXPECT_INVALID(ParseNpy(v2), "exceeds");
}

TEST(NpyCorruptTest, RefusesMalformedHeaders) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"[1, 2, 3]", "not a Python dict"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)", "expected ',' or '}'"},
      {"{'descr: '<f4', 'fortran_order': False, 'shape': (1,)}", "expected ':'"},
      {"{'descr': '<f4, 'fortran_order': False, 'shape': (1,)}", "expected ',' or '}'"},
      {"{'descr': '<f4", "unterminated string"},
      {"{'descr': '<f4', 'shape': (1,)}", "missing key"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", "twice"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}", "unexpected key"},
      {"{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", "True or False"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': [1]}", "must be a tuple"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (4)}", "not a tuple"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", "negative"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1.5,)}", "expected ',' or ')'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (a,)}", "expected a dimension"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}",
       "does not fit in int64"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x", "after the dict"},
      {"{'descr': '\\x3cf4', 'fortran_order': False, 'shape': (1,)}", "escape"},
      {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}", "structured"},
      {"", "not a Python dict"},
  };
  for (const auto& [header, fragment] : cases) {
    SCOPED_TRACE(header);
    EXPECT_INVALID(ParseNpy(NpyFile(1, header, "abcd")), fragment);
  }
  Shape deep(17, 1);
  EXPECT_INVALID(
      ParseNpy(NpyFile(1, Header("|u1", absl::StrCat("(", absl::StrJoin(deep, ","), ")")), "a")),
      "more than 16 dimensions");
}

TEST(NpyCorruptTest, RefusesUnsupportedDescrs) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"<f3", "unsupported dtype descr '<f3'"},
      {"|O", "unsupported dtype descr '|O'"},
      {"<U5", "unsupported"},
      {"<c8", "unsupported"},
      {"<M8[ns]", "unsupported"},
      {"|V2", "opaque bytes"},
      {"=f4", "native byte order"},
      {"|f4", "only valid for 1-byte"},
      {"f4", "unsupported"},
      {"<V4", "unsupported"},
  };
  for (const auto& [descr, fragment] : cases) {
    SCOPED_TRACE(descr);
    EXPECT_INVALID(ParseNpy(NpyFile(1, Header(descr, "(1,)"), "abcd")), fragment);
  }
}

TEST(NpyCorruptTest, RefusesFortranOrder) {
  EXPECT_INVALID(
      ParseNpy(NpyFile(1, Header("<f4", "(2, 2)", /*fortran=*/true), std::string(16, '\0'))),
      "fortran_order=True");
}

TEST(NpyCorruptTest, RefusesShapeProductOverflowBeforeAllocating) {
  EXPECT_INVALID(ParseNpy(NpyFile(1, Header("<f4", "(4294967296, 4294967296)"), "abcd")),
                 "overflows int64");
  EXPECT_INVALID(ParseNpy(NpyFile(1, Header("<f8", "(9223372036854775807,)"), "abcd")),
                 "overflows int64");
  EXPECT_INVALID(ParseNpy(NpyFile(1, Header("|u1", "(3037000500, 3037000500, 2)"), "abcd")),
                 "overflows int64");
  // Fits int64 but not the file: refused by size, not allocated.
  EXPECT_INVALID(ParseNpy(NpyFile(1, Header("<f4", "(1000000000000,)"), "abcd")),
                 "needs 4000000000000 data bytes but the file holds 4");
}

TEST(NpyCorruptTest, RefusesDataLengthMismatch) {
  std::string data = Float32Bytes({1, 2, 3, 4, 5, 6});
  EXPECT_INVALID(ParseNpy(NpyFile(1, Header("<f4", "(2, 3)"), data.substr(0, 23))),
                 "the file is truncated");
  EXPECT_INVALID(ParseNpy(NpyFile(1, Header("<f4", "(2, 3)"), data + "x")),
                 "needs 24 data bytes but the file holds 25");
  EXPECT_INVALID(ParseNpy(NpyFile(1, Header("<f4", "()"), "")), "needs 4 data bytes");
}

TEST(NpyCorruptTest, NoTruncationOrBitFlipCrashes) {
  std::string good = *SerializeNpy(Array{DType::kF32, {3, 5}, Pattern(60, 1)});
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_EQ(ParseNpy(good.substr(0, n)).status().code(), absl::StatusCode::kInvalidArgument);
  }
  std::mt19937 rng(42);
  for (int trial = 0; trial < 5000; ++trial) {
    std::string bad = good;
    for (int flips = 0; flips < 3; ++flips) {
      bad[rng() % 128] = static_cast<char>(rng());
    }
    absl::StatusOr<Array> result = ParseNpy(bad);
    if (!result.ok()) {
      EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

// ---- Writing: arrays that cannot be written ----

TEST(NpyWriteTest, RefusesInconsistentArrays) {
  EXPECT_INVALID(SerializeNpy(Array{DType::kF32, {2, 3}, std::string(20, '\0')}),
                 "shape (2, 3) of '<f4' needs 24 bytes but data holds 20");
  EXPECT_INVALID(SerializeNpy(Array{DType::kF32, {-1}, ""}), "negative");
  EXPECT_INVALID(SerializeNpy(Array{DType::kU8, Shape(17, 1), "x"}), "rank 17");
  EXPECT_INVALID(SerializeNpy(Array{DType::kUnspecified, {1}, "x"}), "no descr");
  EXPECT_INVALID(SerializeNpy(Array{DType::kF32, {1}, std::string(8, '\0'), "<f8"}),
                 "disagrees with descr '<f8'");
  EXPECT_INVALID(SerializeNpy(Array{DType::kUnspecified, {1}, std::string(4, '\0'), ">f4"}),
                 "big-endian");
  EXPECT_INVALID(SerializeNpy(Array{DType::kUnspecified, {1}, "x", "|O"}), "unsupported");
  EXPECT_INVALID(SerializeNpy(Array{DType::kF32, {INT64_MAX / 2, 4}, std::string(4, '\0')}),
                 "overflows");
}

// ---- ToFloatInput ----

TEST(ToFloatInputTest, ConvertsFloat64ToFloat32RoundingToNearest) {
  std::vector<double> values = {1.0 / 3.0, 0.1,   -2.5, 1e300,       -1e300,
                                1e-40,     1e-50, 0.0,  std::nan("")};
  Array f64{DType::kUnspecified, {3, 3}, Float64Bytes(values), "<f8"};
  absl::StatusOr<Array> f32 = ToFloatInput(std::move(f64));
  ASSERT_TRUE(f32.ok()) << f32.status();
  EXPECT_EQ(f32->dtype, DType::kF32);
  EXPECT_EQ(f32->descr, "<f4");
  EXPECT_EQ(f32->shape, (Shape{3, 3}));
  ASSERT_EQ(f32->data.size(), 36u);
  for (size_t i = 0; i + 1 < values.size(); ++i) {
    EXPECT_EQ(FloatToBits(FloatAt(f32->data, i)), FloatToBits(static_cast<float>(values[i])))
        << "element " << i;
  }
  EXPECT_TRUE(std::isinf(FloatAt(f32->data, 3)));
  EXPECT_TRUE(std::isnan(FloatAt(f32->data, 8)));
}

TEST(ToFloatInputTest, PassesFloatInputsThrough) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    int size = dtype == DType::kF32 ? 4 : 2;
    std::string data = Pattern(6 * size, 9);
    absl::StatusOr<Array> out = ToFloatInput(Array{dtype, {2, 3}, data});
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->dtype, dtype);
    EXPECT_EQ(out->descr, DescrForDType(dtype));
    EXPECT_EQ(out->data, data);
  }
}

TEST(ToFloatInputTest, RefusesNonFloatTypes) {
  EXPECT_INVALID(ToFloatInput(Array{DType::kI32, {1}, std::string(4, '\0')}),
                 "'<i4' (I32) is not a float tensor");
  EXPECT_INVALID(ToFloatInput(Array{DType::kUnspecified, {1}, "x", "|b1"}), "not a float");
  EXPECT_INVALID(ToFloatInput(Array{DType::kUnspecified, {2}, std::string(8, '\0'), "<f8"}),
                 "needs 16 bytes");
}

// ---- Files ----

TEST(NpyFileTest, WriteThenReadAndReplaceAtomically) {
  TempDir dir;
  std::string path = dir.File("w.npy");
  Array first{DType::kF32, {3, 4}, Pattern(48, 1)};
  ASSERT_TRUE(WriteNpy(path, first).ok());
  Array second{DType::kBF16, {7}, Pattern(14, 2)};
  ASSERT_TRUE(WriteNpy(path, second).ok());
  absl::StatusOr<Array> read = ReadNpy(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->dtype, DType::kBF16);
  EXPECT_EQ(read->shape, Shape{7});
  EXPECT_EQ(read->data, second.data);
  EXPECT_EQ(dir.Entries(), std::vector<std::string>{"w.npy"});  // no temporaries left
}

TEST(NpyFileTest, ReportsMissingAndUnreadableFiles) {
  TempDir dir;
  EXPECT_EQ(ReadNpy(dir.File("missing.npy")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadNpz(dir.File("missing.npz")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_INVALID(ReadNpy(dir.File("")), "not a regular file");
  WriteFileBytes(dir.File("empty.npy"), "");
  EXPECT_INVALID(ReadNpy(dir.File("empty.npy")), "not a .npy file");
  EXPECT_INVALID(ReadNpy(dir.File("empty.npy")), "empty.npy");  // the path is named
  EXPECT_EQ(WriteNpy(dir.File("no/such/dir/x.npy"), Array{DType::kU8, {1}, "x"}).code(),
            absl::StatusCode::kNotFound);
}

TEST(NpyFileTest, InvalidArrayLeavesNoFile) {
  TempDir dir;
  EXPECT_INVALID(WriteNpy(dir.File("x.npy"), Array{DType::kF32, {2}, "abc"}), "x.npy");
  EXPECT_INVALID(WriteNpz(dir.File("x.npz"), {{"a", Array{DType::kF32, {2}, "abc"}}}), "array 'a'");
  EXPECT_TRUE(dir.Entries().empty());
}

// ---- .npz ----

NamedArrays SampleArrays() {
  NamedArrays arrays;
  arrays.emplace_back("weights", Array{DType::kF32, {3, 4}, Pattern(48, 1)});
  arrays.emplace_back("codes", Array{DType::kU8, {5, 160}, Pattern(800, 2)});
  arrays.emplace_back("scale", Array{DType::kUnspecified, {}, Pattern(8, 3), "<f8"});
  arrays.emplace_back("empty", Array{DType::kI32, {0, 3}, ""});
  arrays.emplace_back("bf", Array{DType::kBF16, {2, 2}, Pattern(8, 4)});
  arrays.emplace_back("layer.0/q_proj", Array{DType::kI8, {3, 5, 7}, Pattern(105, 5)});
  arrays.emplace_back("\xc3\xbcnicode", Array{DType::kF16, {1}, Pattern(2, 6)});
  return arrays;
}

void ExpectSameArrays(const NamedArrays& got, const NamedArrays& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(want[i].first);
    EXPECT_EQ(got[i].first, want[i].first);
    const Array& w = want[i].second;
    EXPECT_EQ(got[i].second.descr, w.descr.empty() ? DescrForDType(w.dtype) : w.descr);
    EXPECT_EQ(got[i].second.shape, w.shape);
    EXPECT_EQ(got[i].second.data, w.data);
  }
}

TEST(NpzTest, RoundTripKeepsOrderNamesAndData) {
  TempDir dir;
  NamedArrays arrays = SampleArrays();
  ASSERT_TRUE(WriteNpz(dir.File("a.npz"), arrays).ok());
  absl::StatusOr<NamedArrays> read = ReadNpz(dir.File("a.npz"));
  ASSERT_TRUE(read.ok()) << read.status();
  ExpectSameArrays(*read, arrays);
  std::string bytes = ReadFileBytes(dir.File("a.npz"));
  EXPECT_FALSE(absl::StrContains(bytes, std::string("PK\x06\x06", 4)));  // small: no ZIP64
  EXPECT_EQ(dir.Entries(), std::vector<std::string>{"a.npz"});
}

TEST(NpzTest, EmptyArchiveRoundTrips) {
  TempDir dir;
  ASSERT_TRUE(WriteNpz(dir.File("e.npz"), {}).ok());
  absl::StatusOr<NamedArrays> read = ReadNpz(dir.File("e.npz"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->empty());
}

TEST(NpzTest, RefusesBadNames) {
  TempDir dir;
  Array a{DType::kU8, {1}, "x"};
  EXPECT_INVALID(WriteNpz(dir.File("n.npz"), {{"", a}}), "not usable");
  EXPECT_INVALID(WriteNpz(dir.File("n.npz"), {{std::string("a\0b", 3), a}}), "not usable");
  EXPECT_INVALID(WriteNpz(dir.File("n.npz"), {{"a", a}, {"a", a}}), "twice");
  EXPECT_TRUE(dir.Entries().empty());
}

TEST(NpzTest, Zip64RecordsWhenThresholdIsCrossed) {
  TempDir dir;
  NamedArrays arrays = SampleArrays();
  // Threshold 0: every size, offset and count is written in ZIP64 form. 600 and 1 mix
  // ZIP64 and plain fields (small first members, later offsets, the end record).
  for (uint64_t threshold : {uint64_t{0}, uint64_t{600}, uint64_t{1}}) {
    SCOPED_TRACE(threshold);
    std::string path = dir.File(absl::StrCat("z", threshold, ".npz"));
    ASSERT_TRUE(internal::WriteNpzWithZip64Threshold(path, arrays, threshold).ok());
    std::string bytes = ReadFileBytes(path);
    EXPECT_TRUE(absl::StrContains(bytes, std::string("PK\x06\x06", 4)));
    EXPECT_TRUE(absl::StrContains(bytes, std::string("PK\x06\x07", 4)));
    EXPECT_TRUE(absl::StrContains(bytes, std::string("\xff\xff\xff\xff", 4)));
    absl::StatusOr<NamedArrays> read = ReadNpz(path);
    ASSERT_TRUE(read.ok()) << read.status();
    ExpectSameArrays(*read, arrays);
  }
}

// Builds zip archives member by member, including the malformed ones a writer never should.
struct TestMember {
  std::string name;
  std::string contents;  // the uncompressed member (normally a .npy)
  bool deflate = false;
  bool data_descriptor = false;  // bit 3: zero sizes/CRC locally, a descriptor after the data
  bool zip64_central = false;    // saturated 32-bit sizes + a ZIP64 extra in the central entry
  std::optional<uint32_t> crc;   // overrides the central CRC
  std::optional<uint64_t> declared_size;        // overrides the central uncompressed size
  std::optional<uint64_t> declared_compressed;  // overrides the central compressed size
  std::optional<std::string> payload;           // overrides the (compressed) bytes
  std::optional<std::string> local_name;
  uint16_t method = 0xFFFF;  // overrides the method in both headers
  uint16_t flags = 0;
};

TestMember Member(std::string name, std::string contents) {
  TestMember m;
  m.name = std::move(name);
  m.contents = std::move(contents);
  return m;
}

std::string RawDeflate(absl::string_view in) {
  z_stream s{};
  EXPECT_EQ(deflateInit2(&s, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&s, in.size()), '\0');
  s.next_in = reinterpret_cast<const Bytef*>(in.data());
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&s, Z_FINISH), Z_STREAM_END);
  out.resize(s.total_out);
  deflateEnd(&s);
  return out;
}

std::string BuildZip(const std::vector<TestMember>& members, absl::string_view comment = "") {
  std::string file;
  std::string central;
  for (const TestMember& m : members) {
    std::string payload = m.payload ? *m.payload : m.deflate ? RawDeflate(m.contents) : m.contents;
    uint16_t method = m.method != 0xFFFF ? m.method : m.deflate ? 8 : 0;
    uint32_t crc = static_cast<uint32_t>(
        crc32_z(0, reinterpret_cast<const Bytef*>(m.contents.data()), m.contents.size()));
    uint16_t flags = m.flags | (m.data_descriptor ? 0x0008 : 0);
    uint64_t offset = file.size();
    std::string local_name = m.local_name ? *m.local_name : m.name;
    file += LE(0x04034b50, 4) + LE(20, 2) + LE(flags, 2) + LE(method, 2) + LE(0, 4);
    if (m.data_descriptor) {
      file += LE(0, 4) + LE(0, 4) + LE(0, 4);
    } else {
      file += LE(crc, 4) + LE(payload.size(), 4) + LE(m.contents.size(), 4);
    }
    file += LE(local_name.size(), 2) + LE(0, 2) + local_name + payload;
    if (m.data_descriptor) {
      file += LE(0x08074b50, 4) + LE(crc, 4) + LE(payload.size(), 4) + LE(m.contents.size(), 4);
    }
    uint64_t size = m.declared_size ? *m.declared_size : m.contents.size();
    uint64_t compressed = m.declared_compressed ? *m.declared_compressed : payload.size();
    std::string extra;
    if (m.zip64_central) extra = LE(1, 2) + LE(16, 2) + LE(size, 8) + LE(compressed, 8);
    central +=
        LE(0x02014b50, 4) + LE(0x031e, 2) + LE(20, 2) + LE(flags, 2) + LE(method, 2) + LE(0, 4) +
        LE(m.crc ? *m.crc : crc, 4) + LE(m.zip64_central ? 0xFFFFFFFF : compressed, 4) +
        LE(m.zip64_central ? 0xFFFFFFFF : size, 4) + LE(m.name.size(), 2) + LE(extra.size(), 2) +
        LE(0, 2) + LE(0, 2) + LE(0, 2) + LE(0, 4) + LE(offset, 4) + m.name + extra;
  }
  uint64_t central_offset = file.size();
  file += central;
  file += LE(0x06054b50, 4) + LE(0, 2) + LE(0, 2) + LE(members.size(), 2) + LE(members.size(), 2) +
          LE(central.size(), 4) + LE(central_offset, 4) + LE(comment.size(), 2) +
          std::string(comment);
  return file;
}

class NpzReadTest : public testing::Test {
 protected:
  absl::StatusOr<NamedArrays> Read(const std::string& bytes) {
    WriteFileBytes(dir_.File("t.npz"), bytes);
    return ReadNpz(dir_.File("t.npz"));
  }
  std::string Npy(DType dtype, Shape shape, uint32_t seed) {
    int size = dtype == DType::kF32 || dtype == DType::kI32 ? 4 : dtype == DType::kU8 ? 1 : 2;
    return *SerializeNpy(Array{dtype, shape, Pattern(Numel(shape) * size, seed)});
  }
  TempDir dir_;
};

TEST_F(NpzReadTest, ReadsDeflatedMembersAndDataDescriptors) {
  std::string zeros = *SerializeNpy(Array{DType::kF32, {1000, 300}, std::string(1200000, '\0')});
  std::string ramp;
  for (int i = 0; i < 5000; ++i) ramp += LE(FloatToBits(static_cast<float>(i % 97)), 4);
  std::string ramp_npy = *SerializeNpy(Array{DType::kF32, {5000}, ramp});
  std::vector<TestMember> members(4);
  members[0].name = "zeros.npy";
  members[0].contents = zeros;
  members[0].deflate = true;
  members[1].name = "ramp.npy";
  members[1].contents = ramp_npy;
  members[1].deflate = true;
  members[1].data_descriptor = true;
  members[2].name = "stored_dd.npy";
  members[2].contents = Npy(DType::kU8, {7}, 1);
  members[2].data_descriptor = true;
  members[3].name = "big.npy";
  members[3].contents = Npy(DType::kI32, {4, 4}, 2);
  members[3].zip64_central = true;
  absl::StatusOr<NamedArrays> read = Read(BuildZip(members, "an archive comment"));
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), 4u);
  EXPECT_EQ((*read)[0].first, "zeros");
  EXPECT_EQ((*read)[0].second.shape, (Shape{1000, 300}));
  EXPECT_EQ((*read)[0].second.data, std::string(1200000, '\0'));
  EXPECT_EQ((*read)[1].second.data, ramp);
  EXPECT_EQ((*read)[2].second.data, Pattern(7, 1));
  EXPECT_EQ((*read)[3].first, "big");
  EXPECT_EQ((*read)[3].second.data, Pattern(64, 2));
}

TEST_F(NpzReadTest, RefusesGarbageAndTruncation) {
  EXPECT_INVALID(Read(""), "too short");
  EXPECT_INVALID(Read(Pattern(5000, 11)), "no end-of-central-directory record");
  EXPECT_INVALID(Read(Npy(DType::kF32, {4}, 1)), "not a valid .npz");
  TestMember m = Member("a.npy", Npy(DType::kF32, {64}, 1));
  std::string good = BuildZip({m});
  // Every proper prefix is refused (never crashes); most lose the end record.
  for (size_t n = 0; n < good.size(); ++n) {
    absl::StatusOr<NamedArrays> read = Read(good.substr(0, n));
    EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << n;
  }
  std::mt19937 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bad = good;
    bad[rng() % bad.size()] = static_cast<char>(rng());
    absl::StatusOr<NamedArrays> read = Read(bad);
    if (!read.ok()) {
      EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST_F(NpzReadTest, RefusesBadCrc) {
  TestMember m = Member("a.npy", Npy(DType::kF32, {16}, 1));
  m.crc = 0x12345678;
  EXPECT_INVALID(Read(BuildZip({m})), "fails its CRC-32 check");
  TestMember d = Member("a.npy", Npy(DType::kF32, {16}, 1));
  d.deflate = true;
  d.crc = 0x12345678;
  EXPECT_INVALID(Read(BuildZip({d})), "fails its CRC-32 check");
  // A flipped data byte in a stored member.
  std::string file = BuildZip({Member("a.npy", Npy(DType::kF32, {16}, 1))});
  file[30 + 5 + 128 + 3] ^= 0x10;
  EXPECT_INVALID(Read(file), "fails its CRC-32 check");
}

TEST_F(NpzReadTest, RefusesForgedSizesWithoutAllocating) {
  TestMember bomb = Member("a.npy", Npy(DType::kF32, {16}, 1));
  bomb.deflate = true;
  bomb.declared_size = uint64_t{1} << 50;  // 1 PiB from a few dozen bytes
  bomb.zip64_central = true;
  EXPECT_INVALID(Read(BuildZip({bomb})), "more than deflate can produce");

  TestMember liar = Member("a.npy", Npy(DType::kF32, {16}, 1));
  liar.deflate = true;
  liar.declared_size = liar.contents.size() - 1;
  EXPECT_INVALID(Read(BuildZip({liar})), "inflates to more than its declared");
  liar.declared_size = liar.contents.size() + 1;
  EXPECT_INVALID(Read(BuildZip({liar})), "inflates to 192 bytes but declares 193");

  TestMember beyond = Member("a.npy", Npy(DType::kF32, {16}, 1));
  beyond.declared_compressed = uint64_t{1} << 40;
  beyond.zip64_central = true;
  EXPECT_INVALID(Read(BuildZip({beyond})), "but the file ends at");

  TestMember stored = Member("a.npy", Npy(DType::kF32, {16}, 1));
  stored.declared_size = 1000;
  EXPECT_INVALID(Read(BuildZip({stored})), "stored member 'a.npy' declares 1000");

  // A member whose stated size swallows its neighbour: overlapping members are refused.
  TestMember first = Member("a.npy", Npy(DType::kF32, {16}, 1));
  first.declared_compressed = first.contents.size() + 40;
  TestMember second = Member("b.npy", Npy(DType::kF32, {16}, 2));
  EXPECT_INVALID(Read(BuildZip({first, second})), "overlaps");

  // The end record claims 65535 members in a one-entry central directory.
  std::string file = BuildZip({Member("a.npy", Npy(DType::kU8, {3}, 1))});
  file.replace(file.size() - 22 + 8, 4, LE(0xFFFF, 2) + LE(0xFFFF, 2));
  EXPECT_INVALID(Read(file), "declares 65535 members");
  // The central directory offset points past the end.
  file = BuildZip({Member("a.npy", Npy(DType::kU8, {3}, 1))});
  file.replace(file.size() - 22 + 16, 4, LE(0x7FFFFFFF, 4));
  EXPECT_INVALID(Read(file), "lies outside the file");
}

TEST_F(NpzReadTest, RefusesCorruptDeflateStreams) {
  TestMember truncated = Member("a.npy", Npy(DType::kF32, {256}, 1));
  truncated.deflate = true;
  std::string deflated = RawDeflate(truncated.contents);
  truncated.payload = deflated.substr(0, deflated.size() / 2);
  EXPECT_INVALID(Read(BuildZip({truncated})), "truncated deflate stream");

  TestMember garbage = Member("a.npy", Npy(DType::kF32, {16}, 1));
  garbage.method = 8;
  garbage.payload = std::string(40, '\xff');
  EXPECT_INVALID(Read(BuildZip({garbage})), "corrupt deflate stream");
}

TEST_F(NpzReadTest, RefusesMembersWeCannotRead) {
  TestMember text = Member("notes.txt", "hello");
  EXPECT_INVALID(Read(BuildZip({text})), "'notes.txt' is not a .npy array");
  TestMember dir = Member("sub/", "");
  EXPECT_INVALID(Read(BuildZip({dir})), "is not a .npy array");
  TestMember bare = Member(".npy", Npy(DType::kU8, {1}, 1));
  EXPECT_INVALID(Read(BuildZip({bare})), "is not a .npy array");
  TestMember a = Member("a.npy", Npy(DType::kU8, {1}, 1));
  EXPECT_INVALID(Read(BuildZip({a, a})), "appears twice");
  TestMember bzip2 = Member("a.npy", Npy(DType::kU8, {1}, 1));
  bzip2.method = 12;
  EXPECT_INVALID(Read(BuildZip({bzip2})), "compression method 12");
  TestMember encrypted = Member("a.npy", Npy(DType::kU8, {1}, 1));
  encrypted.flags = 1;
  EXPECT_INVALID(Read(BuildZip({encrypted})), "encrypted");
  TestMember renamed = Member("a.npy", Npy(DType::kU8, {1}, 1));
  renamed.local_name = "b.npy";
  EXPECT_INVALID(Read(BuildZip({renamed})), "different name in its local header");
  TestMember bad_npy = Member("a.npy", "\x93NUMPY nonsense");
  EXPECT_INVALID(Read(BuildZip({bad_npy})), "member 'a.npy': .npy format version");
}

// ---- numpy cross-check ----

constexpr char kPythonScript[] = R"PY(
import io, os, sys, zipfile
import numpy as np

mode, d = sys.argv[1], sys.argv[2]

def check_ours():
    # Files written by quantd: every case.npy must load and equal case.bin.
    manifest = [line.split() for line in open(os.path.join(d, "manifest.txt"))]
    for name, descr, shape in manifest:
        shape = () if shape == "-" else tuple(int(x) for x in shape.split(","))
        raw = open(os.path.join(d, name + ".bin"), "rb").read()
        path = os.path.join(d, name + ".npy")
        a = np.load(path)
        assert a.shape == shape, (name, a.shape, shape)
        assert a.tobytes() == raw, name
        if descr != "<V2":
            assert a.dtype.str == descr, (name, a.dtype.str, descr)
            buf = io.BytesIO()
            np.save(buf, a)
            assert buf.getvalue() == open(path, "rb").read(), ("not byte-identical", name)
        else:
            assert a.dtype.itemsize == 2 and a.dtype.kind == "V", (name, a.dtype)
    for npz in ("ours.npz", "ours64.npz"):
        with np.load(os.path.join(d, npz)) as z:
            assert sorted(z.files) == sorted(m[0] for m in manifest), (npz, z.files)
            for name, descr, shape in manifest:
                raw = open(os.path.join(d, name + ".bin"), "rb").read()
                assert z[name].tobytes() == raw, (npz, name)
        assert zipfile.ZipFile(os.path.join(d, npz)).testzip() is None, npz

def write_theirs():
    def save(name, a, **kw):
        with open(os.path.join(d, name + ".npy"), "wb") as f:
            if kw:
                np.lib.format.write_array(f, a, **kw)
            else:
                np.save(f, a)
        le = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        open(os.path.join(d, name + ".bin"), "wb").write(np.ascontiguousarray(a).astype(le).tobytes())
    save("f4", np.arange(12, dtype=np.float32).reshape(3, 4) / 7)
    save("f8", np.array([0.1, 1e300, -2.5, 1 / 3]))
    save("be", np.arange(6, dtype=">f4") - 2.5)
    save("i8", np.arange(-3, 3, dtype=np.int64))
    save("b1", np.array([True, False, True]))
    save("scalar", np.float32(3.5))
    save("empty", np.zeros((0, 3), np.int32))
    save("v2", np.arange(10, dtype=np.float16), version=(2, 0))
    save("v3", np.arange(10, dtype=np.uint8), version=(3, 0))
    try:
        import ml_dtypes
        save("bf16", np.arange(8, dtype=np.float32).astype(ml_dtypes.bfloat16))
    except ImportError:
        pass
    np.save(os.path.join(d, "fortran.npy"), np.asfortranarray(np.ones((2, 3), np.float32)))
    x = np.arange(1000, dtype=np.float32)
    y = np.ones((3, 5, 7), np.int8)
    np.savez(os.path.join(d, "plain.npz"), x=x, y=y)
    np.savez_compressed(os.path.join(d, "compressed.npz"), np.zeros((300, 1000), np.float32), x=x, y=y)
    big = np.sin(np.arange(2_000_000, dtype=np.float64))
    np.savez_compressed(os.path.join(d, "big.npz"), big=big)
    open(os.path.join(d, "x.bin"), "wb").write(x.tobytes())
    open(os.path.join(d, "y.bin"), "wb").write(y.tobytes())
    open(os.path.join(d, "big.bin"), "wb").write(big.tobytes())

{"check": check_ours, "write": write_theirs}[mode]()
print("python ok:", mode)
)PY";

class NumpyCrossCheckTest : public testing::Test {
 protected:
  void SetUp() override {
    const char* python = std::getenv("QUANTD_PYTHON");
    if (python == nullptr || *python == '\0') {
      GTEST_SKIP() << "set QUANTD_PYTHON to a Python with numpy to cross-check against numpy";
    }
    python_ = python;
    WriteFileBytes(dir_.File("check.py"), kPythonScript);
  }
  int RunPython(const std::string& mode) {
    std::string command = absl::StrCat("'", python_, "' '", dir_.File("check.py"), "' ", mode, " '",
                                       dir_.File(""), "'");
    return std::system(command.c_str());
  }
  std::string python_;
  TempDir dir_;
};

TEST_F(NumpyCrossCheckTest, NumpyLoadsWhatWeWrite) {
  NamedArrays arrays;
  std::string manifest;
  for (const TypeCase& type : kTypeCases) {
    for (const Shape& shape : {Shape{}, Shape{0, 4}, Shape{5, 3}, Shape{2, 3, 7}}) {
      std::string name =
          absl::StrCat(type.name, "_", shape.empty() ? "scalar" : absl::StrJoin(shape, "x"));
      std::string data = Pattern(Numel(shape) * type.size, 17);
      // bool must be 0/1 to survive numpy's tobytes unchanged.
      if (type.descr == absl::string_view("|b1")) {
        for (char& c : data) c &= 1;
      }
      Array array{DType::kUnspecified, shape, data, type.descr};
      ASSERT_TRUE(WriteNpy(dir_.File(name + ".npy"), array).ok());
      WriteFileBytes(dir_.File(name + ".bin"), data);
      absl::StrAppend(&manifest, name, " ", type.descr, " ",
                      shape.empty() ? "-" : absl::StrJoin(shape, ","), "\n");
      arrays.emplace_back(name, std::move(array));
    }
  }
  WriteFileBytes(dir_.File("manifest.txt"), manifest);
  ASSERT_TRUE(WriteNpz(dir_.File("ours.npz"), arrays).ok());
  ASSERT_TRUE(internal::WriteNpzWithZip64Threshold(dir_.File("ours64.npz"), arrays, 0).ok());
  EXPECT_EQ(RunPython("check"), 0);
}

TEST_F(NumpyCrossCheckTest, WeReadWhatNumpyWrites) {
  ASSERT_EQ(RunPython("write"), 0);
  struct Expected {
    const char* name;
    const char* descr;
    DType dtype;
    Shape shape;
  };
  std::vector<Expected> expected = {
      {"f4", "<f4", DType::kF32, {3, 4}},      {"f8", "<f8", DType::kUnspecified, {4}},
      {"be", "<f4", DType::kF32, {6}},         {"i8", "<i8", DType::kUnspecified, {6}},
      {"b1", "|b1", DType::kUnspecified, {3}}, {"scalar", "<f4", DType::kF32, {}},
      {"empty", "<i4", DType::kI32, {0, 3}},   {"v2", "<f2", DType::kF16, {10}},
      {"v3", "|u1", DType::kU8, {10}},         {"bf16", "<V2", DType::kBF16, {8}},
  };
  for (const Expected& e : expected) {
    SCOPED_TRACE(e.name);
    if (absl::string_view(e.name) == "bf16" && !fs::exists(dir_.File("bf16.npy"))) {
      std::cerr << "ml_dtypes not installed: bfloat16 from numpy not checked\n";
      continue;
    }
    absl::StatusOr<Array> array = ReadNpy(dir_.File(absl::StrCat(e.name, ".npy")));
    ASSERT_TRUE(array.ok()) << array.status();
    EXPECT_EQ(array->descr, e.descr);
    EXPECT_EQ(array->dtype, e.dtype);
    EXPECT_EQ(array->shape, e.shape);
    EXPECT_EQ(array->data, ReadFileBytes(dir_.File(absl::StrCat(e.name, ".bin"))));
  }
  absl::StatusOr<Array> f8 = ReadNpy(dir_.File("f8.npy"));
  ASSERT_TRUE(f8.ok());
  absl::StatusOr<Array> f32 = ToFloatInput(*std::move(f8));
  ASSERT_TRUE(f32.ok()) << f32.status();
  EXPECT_EQ(FloatAt(f32->data, 0), 0.1f);
  EXPECT_TRUE(std::isinf(FloatAt(f32->data, 1)));

  EXPECT_INVALID(ReadNpy(dir_.File("fortran.npy")), "fortran_order=True");

  std::string x = ReadFileBytes(dir_.File("x.bin"));
  std::string y = ReadFileBytes(dir_.File("y.bin"));
  absl::StatusOr<NamedArrays> plain = ReadNpz(dir_.File("plain.npz"));
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_EQ(plain->size(), 2u);
  EXPECT_EQ((*plain)[0].first, "x");
  EXPECT_EQ((*plain)[0].second.data, x);
  EXPECT_EQ((*plain)[1].first, "y");
  EXPECT_EQ((*plain)[1].second.shape, (Shape{3, 5, 7}));
  EXPECT_EQ((*plain)[1].second.data, y);

  // np.savez names positional arrays arr_0, ... and puts them after the keyword ones.
  absl::StatusOr<NamedArrays> compressed = ReadNpz(dir_.File("compressed.npz"));
  ASSERT_TRUE(compressed.ok()) << compressed.status();
  ASSERT_EQ(compressed->size(), 3u);
  EXPECT_EQ((*compressed)[0].first, "x");
  EXPECT_EQ((*compressed)[0].second.data, x);
  EXPECT_EQ((*compressed)[1].first, "y");
  EXPECT_EQ((*compressed)[1].second.data, y);
  EXPECT_EQ((*compressed)[2].first, "arr_0");
  EXPECT_EQ((*compressed)[2].second.shape, (Shape{300, 1000}));
  EXPECT_EQ((*compressed)[2].second.data, std::string(1200000, '\0'));

  absl::StatusOr<NamedArrays> big = ReadNpz(dir_.File("big.npz"));
  ASSERT_TRUE(big.ok()) << big.status();
  ASSERT_EQ(big->size(), 1u);
  EXPECT_EQ((*big)[0].second.descr, "<f8");
  EXPECT_TRUE((*big)[0].second.data == ReadFileBytes(dir_.File("big.bin")));
}

}  // namespace
}  // namespace quantd::npy
