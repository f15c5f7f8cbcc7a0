#include "npy.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "file_util.h"
#include "quantd/status.h"

// zlib's next_in is const only with ZLIB_CONST; without it we would cast away the const of the
// mapped (read-only) file.
#define ZLIB_CONST
#include <zlib.h>

namespace quantd::npy {
namespace {

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();
constexpr uint64_t kI64Max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

// ---- Little-endian fields. Files are little-endian whatever the host is. ----

uint64_t LoadLE(const char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
uint16_t U16(absl::string_view s, uint64_t at) {
  return static_cast<uint16_t>(LoadLE(s.data() + at, 2));
}
uint32_t U32(absl::string_view s, uint64_t at) {
  return static_cast<uint32_t>(LoadLE(s.data() + at, 4));
}
uint64_t U64(absl::string_view s, uint64_t at) { return LoadLE(s.data() + at, 8); }

void StoreLE(char* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xFFu);
}
void PutU16(std::string* out, uint64_t v) {
  char b[2];
  StoreLE(b, v, 2);
  out->append(b, 2);
}
void PutU32(std::string* out, uint64_t v) {
  char b[4];
  StoreLE(b, v, 4);
  out->append(b, 4);
}
void PutU64(std::string* out, uint64_t v) {
  char b[8];
  StoreLE(b, v, 8);
  out->append(b, 8);
}

absl::Status Annotate(const absl::Status& status, absl::string_view prefix) {
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

// ---- The numpy types we read and write: one row per type. ----

struct TypeInfo {
  char kind;          // numpy kind character: b, i, u, f, or V (void: bfloat16 from ml_dtypes)
  int size;           // bytes per element
  DType dtype;        // quantd's name for it; kUnspecified where quantd has none
  const char* label;  // for messages
};

constexpr TypeInfo kTypes[] = {
    {'b', 1, DType::kUnspecified, "BOOL"},
    {'i', 1, DType::kI8, "I8"},
    {'u', 1, DType::kU8, "U8"},
    {'i', 2, DType::kUnspecified, "I16"},
    {'u', 2, DType::kUnspecified, "U16"},
    {'i', 4, DType::kI32, "I32"},
    {'u', 4, DType::kUnspecified, "U32"},
    {'i', 8, DType::kUnspecified, "I64"},
    {'u', 8, DType::kUnspecified, "U64"},
    {'f', 2, DType::kF16, "F16"},
    {'f', 4, DType::kF32, "F32"},
    {'f', 8, DType::kUnspecified, "F64"},
    {'V', 2, DType::kBF16, "BF16"},
};
constexpr char kSupportedDescrs[] =
    "b1, i1, u1, i2, u2, i4, u4, i8, u8, f2, f4, f8, and '<V2' (bfloat16 as ml_dtypes saves it)";

std::string CanonicalDescr(const TypeInfo& type) {
  return absl::StrCat(type.size == 1 ? "|" : "<", std::string(1, type.kind), type.size);
}

const TypeInfo* FindTypeByDType(DType dtype) {
  if (dtype == DType::kUnspecified) return nullptr;
  for (const TypeInfo& type : kTypes) {
    if (type.dtype == dtype) return &type;
  }
  return nullptr;
}

struct ParsedDescr {
  const TypeInfo* type = nullptr;
  bool big_endian = false;
};

absl::StatusOr<ParsedDescr> ParseDescr(absl::string_view descr) {
  auto unsupported = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported dtype descr '",
                                                   absl::CHexEscape(descr), "'", why,
                                                   "; quantd reads ", kSupportedDescrs));
  };
  if (descr.size() < 3 || descr.size() > 4) return unsupported("");
  char order = descr[0];
  char kind = descr[1];
  int size = 0;
  for (char c : descr.substr(2)) {
    if (c < '0' || c > '9') return unsupported("");
    size = size * 10 + (c - '0');
  }
  const TypeInfo* found = nullptr;
  for (const TypeInfo& type : kTypes) {
    if (type.kind == kind && type.size == size) found = &type;
  }
  if (found == nullptr) return unsupported("");
  if (order == '=') {
    // numpy never writes '=' (dtype.str resolves it), and "native" means the writer's machine.
    return unsupported(" (native byte order '=' is ambiguous in a file; expected '<' or '>')");
  }
  if (order != '<' && order != '>' && order != '|') {
    return unsupported(" (bad byte-order character)");
  }
  if (kind == 'V' && order == '|') {
    return unsupported(" (a plain numpy 2-byte void is opaque bytes, not bfloat16)");
  }
  if (order == '|' && size > 1) {
    return unsupported(" ('|' byte order is only valid for 1-byte types)");
  }
  return ParsedDescr{found, order == '>' && size > 1};
}

// Python's repr of a shape tuple: "()", "(5,)", "(3, 4)".
std::string PyShape(const Shape& shape) {
  if (shape.size() == 1) return absl::StrCat("(", shape[0], ",)");
  return absl::StrCat("(", absl::StrJoin(shape, ", "), ")");
}

// numel × itemsize, refusing negative dims, ranks above kMaxRank and any overflow. A zero dim
// makes the product 0 even when the other dims alone would overflow, as in numpy.
absl::StatusOr<uint64_t> DataBytes(const Shape& shape, const TypeInfo& type) {
  if (shape.size() > static_cast<size_t>(kMaxRank)) {
    return absl::InvalidArgumentError(absl::StrCat("shape ", PyShape(shape), " has rank ",
                                                   shape.size(), "; quantd accepts at most ",
                                                   kMaxRank));
  }
  uint64_t numel = 1;
  bool overflow = false;
  for (int64_t dim : shape) {
    if (dim < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", PyShape(shape), " has a negative dimension"));
    }
    uint64_t d = static_cast<uint64_t>(dim);
    if (d == 0) return 0;
    if (numel > kI64Max / d) overflow = true;
    if (!overflow) numel *= d;
  }
  if (overflow || numel > kI64Max / static_cast<uint64_t>(type.size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape ", PyShape(shape), " of '", CanonicalDescr(type),
                     "' is too large: its byte size overflows int64"));
  }
  return numel * static_cast<uint64_t>(type.size);
}

void ByteSwapInPlace(std::string* data, int size) {
  for (size_t i = 0; i + static_cast<size_t>(size) <= data->size(); i += size) {
    std::reverse(data->begin() + i, data->begin() + i + size);
  }
}

// ---- .npy header ----

constexpr char kNpyMagic[] = "\x93NUMPY";
constexpr size_t kNpyMagicLen = 6;
constexpr int kNpyAlign = 64;
// Our headers are < 1 KiB (rank <= 16); numpy itself refuses headers above 10000 bytes unless
// told to trust the file. Anything longer is not a file we wrote or want to parse.
constexpr uint64_t kMaxHeaderLen = 65536;
// numpy pads its headers so the first dim can grow in place up to 21 digits; we do the same so
// that our files are byte-identical to np.save's.
constexpr size_t kGrowthAxisMaxDigits = 21;

// Parses the Python dict literal of a .npy header, e.g.
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
// numpy reads it with ast.literal_eval; we accept the subset numpy writes plus the freedom a
// Python literal has (key order, quotes, whitespace, trailing commas, Python 2 "3L" longs) and
// refuse everything else.
class HeaderParser {
 public:
  explicit HeaderParser(absl::string_view text) : text_(text) {}

  [[nodiscard]] absl::Status Parse(std::string* descr, bool* fortran_order, Shape* shape) {
    SkipSpace();
    if (!Consume('{')) return Error("the header is not a Python dict");
    bool have_descr = false;
    bool have_fortran = false;
    bool have_shape = false;
    while (true) {
      SkipSpace();
      if (Consume('}')) break;
      QUANTD_ASSIGN_OR_RETURN(std::string key, ParseString());
      SkipSpace();
      if (!Consume(':')) return Error("expected ':' after a key");
      SkipSpace();
      bool* seen = nullptr;
      if (key == "descr") {
        seen = &have_descr;
        if (Peek() == '[') {
          return Error("structured dtypes (a list descr) are not supported");
        }
        QUANTD_ASSIGN_OR_RETURN(*descr, ParseString());
      } else if (key == "fortran_order") {
        seen = &have_fortran;
        QUANTD_ASSIGN_OR_RETURN(*fortran_order, ParseBool());
      } else if (key == "shape") {
        seen = &have_shape;
        QUANTD_ASSIGN_OR_RETURN(*shape, ParseShape());
      } else {
        return Error(absl::StrCat("unexpected key '", absl::CHexEscape(key),
                                  "' (numpy writes exactly descr, fortran_order and shape)"));
      }
      if (*seen) return Error(absl::StrCat("key '", key, "' appears twice"));
      *seen = true;
      SkipSpace();
      if (Consume(',')) continue;
      if (Consume('}')) break;
      return Error("expected ',' or '}'");
    }
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected bytes after the dict");
    if (!have_descr || !have_fortran || !have_shape) {
      return Error("missing key: numpy writes descr, fortran_order and shape");
    }
    return absl::OkStatus();
  }

 private:
  char Peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  bool Consume(char c) {
    if (pos_ >= text_.size() || text_[pos_] != c) return false;
    ++pos_;
    return true;
  }
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  absl::Status Error(absl::string_view what) const {
    constexpr size_t kShown = 160;
    std::string shown = absl::CHexEscape(text_.substr(0, kShown));
    return absl::InvalidArgumentError(absl::StrCat("malformed .npy header at byte ", pos_, ": ",
                                                   what, "; header: \"", shown,
                                                   text_.size() > kShown ? "...\"" : "\""));
  }

  absl::StatusOr<std::string> ParseString() {
    char quote = Peek();
    if (quote != '\'' && quote != '"') return Error("expected a quoted string");
    ++pos_;
    size_t start = pos_;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      if (text_[pos_] == '\\') return Error("escape sequences are not supported in strings");
      ++pos_;
    }
    if (pos_ >= text_.size()) return Error("unterminated string");
    std::string value(text_.substr(start, pos_ - start));
    ++pos_;
    return value;
  }

  absl::StatusOr<bool> ParseBool() {
    for (auto [word, value] :
         {std::pair<absl::string_view, bool>{"True", true}, {"False", false}}) {
      if (text_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        return value;
      }
    }
    return Error("fortran_order must be True or False");
  }

  absl::StatusOr<Shape> ParseShape() {
    if (!Consume('(')) return Error("shape must be a tuple such as (3, 4), (5,) or ()");
    Shape shape;
    bool after_comma = false;
    while (true) {
      SkipSpace();
      if (Consume(')')) break;
      if (Peek() == '-') return Error("negative dimension in shape");
      if (Peek() < '0' || Peek() > '9') return Error("expected a dimension in shape");
      uint64_t dim = 0;
      while (Peek() >= '0' && Peek() <= '9') {
        uint64_t digit = static_cast<uint64_t>(Peek() - '0');
        if (dim > (kI64Max - digit) / 10) return Error("dimension does not fit in int64");
        dim = dim * 10 + digit;
        ++pos_;
      }
      Consume('L');
      if (shape.size() >= static_cast<size_t>(kMaxRank)) {
        return Error(absl::StrCat("shape has more than ", kMaxRank, " dimensions"));
      }
      shape.push_back(static_cast<int64_t>(dim));
      SkipSpace();
      after_comma = Consume(',');
      if (after_comma) continue;
      if (Consume(')')) break;
      return Error("expected ',' or ')' in shape");
    }
    if (shape.size() == 1 && !after_comma) {
      return Error("shape (n) is not a tuple; numpy writes (n,)");
    }
    return shape;
  }

  absl::string_view text_;
  size_t pos_ = 0;
};

// Where a .npy's data lies and what it holds, checked against the bytes actually present.
struct NpyLayout {
  const TypeInfo* type = nullptr;
  bool big_endian = false;
  Shape shape;
  uint64_t data_offset = 0;
  uint64_t data_bytes = 0;
};

absl::StatusOr<NpyLayout> ParseNpyLayout(absl::string_view bytes) {
  if (bytes.size() < kNpyMagicLen + 2 || bytes.substr(0, kNpyMagicLen) != kNpyMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a .npy file: it does not start with the magic \\x93NUMPY followed by "
                     "a version (",
                     bytes.size(), " bytes)"));
  }
  int major = static_cast<unsigned char>(bytes[6]);
  int minor = static_cast<unsigned char>(bytes[7]);
  if (minor != 0 || major < 1 || major > 3) {
    return absl::InvalidArgumentError(absl::StrCat(".npy format version ", major, ".", minor,
                                                   " is not supported (1.0, 2.0 and 3.0 are)"));
  }
  uint64_t length_size = major == 1 ? 2 : 4;
  uint64_t header_start = kNpyMagicLen + 2 + length_size;
  if (bytes.size() < header_start) {
    return absl::InvalidArgumentError(
        absl::StrCat(".npy file is truncated: ", bytes.size(), " bytes end inside the preamble"));
  }
  uint64_t header_len = LoadLE(bytes.data() + 8, static_cast<int>(length_size));
  if (header_len > kMaxHeaderLen) {
    return absl::InvalidArgumentError(absl::StrCat(".npy header length ", header_len,
                                                   " exceeds the ", kMaxHeaderLen,
                                                   "-byte limit; the file is corrupt"));
  }
  if (header_len > bytes.size() - header_start) {
    return absl::InvalidArgumentError(absl::StrCat(".npy header length ", header_len,
                                                   " runs past the end of the ", bytes.size(),
                                                   "-byte file; the file is truncated or corrupt"));
  }
  std::string descr;
  bool fortran_order = false;
  NpyLayout layout;
  QUANTD_RETURN_IF_ERROR(HeaderParser(bytes.substr(header_start, header_len))
                             .Parse(&descr, &fortran_order, &layout.shape));
  if (fortran_order) {
    return absl::InvalidArgumentError(
        "fortran_order=True (column-major) arrays are not supported; save "
        "np.ascontiguousarray(a) instead");
  }
  QUANTD_ASSIGN_OR_RETURN(ParsedDescr parsed, ParseDescr(descr));
  layout.type = parsed.type;
  layout.big_endian = parsed.big_endian;
  QUANTD_ASSIGN_OR_RETURN(layout.data_bytes, DataBytes(layout.shape, *layout.type));
  layout.data_offset = header_start + header_len;
  uint64_t present = bytes.size() - layout.data_offset;
  if (present != layout.data_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape ", PyShape(layout.shape), " of '", descr, "' needs ", layout.data_bytes,
                     " data bytes but the file holds ", present, " after its ", layout.data_offset,
                     "-byte header", present < layout.data_bytes ? "; the file is truncated" : ""));
  }
  return layout;
}

Array ArrayFromLayout(const NpyLayout& layout, std::string data) {
  Array array;
  array.dtype = layout.type->dtype;
  array.descr = CanonicalDescr(*layout.type);
  array.shape = layout.shape;
  array.data = std::move(data);
  if (layout.big_endian) ByteSwapInPlace(&array.data, layout.type->size);
  return array;
}

// ParseNpy for a buffer we own (an inflated .npz member): the data moves down over the
// header instead of being copied, so a large member is held once, not twice.
absl::StatusOr<Array> ParseNpyOwned(std::string bytes) {
  QUANTD_ASSIGN_OR_RETURN(NpyLayout layout, ParseNpyLayout(bytes));
  bytes.erase(0, layout.data_offset);
  return ArrayFromLayout(layout, std::move(bytes));
}

// The type `array` holds: its descr when set, else its dtype. Both set must agree.
absl::StatusOr<const TypeInfo*> ResolveType(const Array& array) {
  if (array.descr.empty()) {
    const TypeInfo* type = FindTypeByDType(array.dtype);
    if (type == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "array has no descr and dtype ", static_cast<int>(array.dtype),
          " has no numpy equivalent; set dtype to F32, F16, BF16, U8, I8 or I32, or set descr"));
    }
    return type;
  }
  QUANTD_ASSIGN_OR_RETURN(ParsedDescr parsed, ParseDescr(array.descr));
  if (parsed.big_endian) {
    return absl::InvalidArgumentError(absl::StrCat(
        "descr '", array.descr, "' is big-endian but Array::data is little-endian; use '",
        CanonicalDescr(*parsed.type), "'"));
  }
  if (array.dtype != DType::kUnspecified && array.dtype != parsed.type->dtype) {
    const TypeInfo* by_dtype = FindTypeByDType(array.dtype);
    return absl::InvalidArgumentError(absl::StrCat(
        "dtype ", by_dtype ? by_dtype->label : "(invalid)", " disagrees with descr '", array.descr,
        "' (", parsed.type->label, "); set one of them or make them match"));
  }
  return parsed.type;
}

absl::StatusOr<const TypeInfo*> ValidateForWrite(const Array& array) {
  QUANTD_ASSIGN_OR_RETURN(const TypeInfo* type, ResolveType(array));
  QUANTD_ASSIGN_OR_RETURN(uint64_t bytes, DataBytes(array.shape, *type));
  if (bytes != array.data.size()) {
    return absl::InvalidArgumentError(absl::StrCat("shape ", PyShape(array.shape), " of '",
                                                   CanonicalDescr(*type), "' needs ", bytes,
                                                   " bytes but data holds ", array.data.size()));
  }
  return type;
}

// The preamble and header numpy's np.save writes for this type and shape: version 1.0 unless
// the header needs more than 65535 bytes, padded with spaces and a newline to a multiple of
// 64 bytes.
std::string BuildNpyHeader(const TypeInfo& type, const Shape& shape) {
  std::string dict = absl::StrCat("{'descr': '", CanonicalDescr(type),
                                  "', 'fortran_order': False, 'shape': ", PyShape(shape), ", }");
  if (!shape.empty()) {
    size_t first_digits = absl::StrCat(shape[0]).size();
    dict.append(kGrowthAxisMaxDigits - std::min(first_digits, kGrowthAxisMaxDigits), ' ');
  }
  int major = 1;
  size_t length_size = 2;
  size_t text_len = dict.size() + 1;  // + the newline
  size_t padding = kNpyAlign - (kNpyMagicLen + 2 + length_size + text_len) % kNpyAlign;
  if (text_len + padding > 0xFFFF) {
    // Unreachable while kMaxRank is 16 (headers stay under 1 KiB); kept so a larger rank limit
    // cannot silently overflow the 2-byte length.
    major = 2;
    length_size = 4;
    padding = kNpyAlign - (kNpyMagicLen + 2 + length_size + text_len) % kNpyAlign;
  }
  std::string header(kNpyMagic, kNpyMagicLen);
  header.push_back(static_cast<char>(major));
  header.push_back('\0');
  if (length_size == 2) {
    PutU16(&header, text_len + padding);
  } else {
    PutU32(&header, text_len + padding);
  }
  header += dict;
  header.append(padding, ' ');
  header.push_back('\n');
  return header;
}

// ---- Zip ----

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint64_t kLocalHeaderLen = 30;
constexpr uint64_t kCentralHeaderLen = 46;
constexpr uint64_t kEndLen = 22;
constexpr uint64_t kZip64EndLen = 56;
constexpr uint64_t kZip64LocatorLen = 20;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kMethodStored = 0;
constexpr uint16_t kMethodDeflated = 8;
constexpr uint16_t kFlagEncrypted = 0x0001;
constexpr uint16_t kFlagUtf8 = 0x0800;
constexpr uint16_t kVersionDefault = 20;
constexpr uint16_t kVersionZip64 = 45;
constexpr uint16_t kMadeByUnix = 3 << 8;
constexpr uint32_t kExternalAttrRegular0644 = 0100644u << 16;
constexpr uint16_t kDosDate1980 = (0 << 9) | (1 << 5) | 1;  // 1980-01-01: fixed, reproducible
// Deflate cannot expand input more than ~1032:1 (258-byte matches from 2-bit codes). A
// declared size beyond that is forged, and refusing it bounds what a hostile archive can make
// us allocate to what a genuine archive of the same size could.
constexpr uint64_t kMaxDeflateRatio = 1032;

absl::Status ZipError(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("not a valid .npz (zip) archive: ", what));
}

struct ZipMember {
  std::string name;
  uint16_t flags = 0;
  uint16_t method = 0;
  uint32_t crc = 0;
  uint64_t compressed_size = 0;
  uint64_t size = 0;
  uint64_t local_offset = 0;
  uint64_t data_offset = 0;  // found from the local header
};

struct ZipDirectory {
  std::vector<ZipMember> members;
  uint64_t central_offset = 0;
};

// Applies a ZIP64 extended-information field: it holds, in this order, exactly those of the
// 32-bit fields that are saturated.
absl::Status ApplyZip64Extra(absl::string_view extra, uint16_t disk_start, ZipMember* member) {
  bool saturated[3] = {member->size == 0xFFFFFFFFu, member->compressed_size == 0xFFFFFFFFu,
                       member->local_offset == 0xFFFFFFFFu};
  if (!saturated[0] && !saturated[1] && !saturated[2] && disk_start != 0xFFFF) {
    return absl::OkStatus();
  }
  uint64_t p = 0;
  while (p + 4 <= extra.size()) {
    uint16_t id = U16(extra, p);
    uint16_t len = U16(extra, p + 2);
    if (len > extra.size() - p - 4) break;
    if (id == kZip64ExtraId) {
      absl::string_view field = extra.substr(p + 4, len);
      uint64_t at = 0;
      uint64_t* targets[3] = {&member->size, &member->compressed_size, &member->local_offset};
      for (int i = 0; i < 3; ++i) {
        if (!saturated[i]) continue;
        if (at + 8 > field.size()) {
          return ZipError(absl::StrCat("member '", absl::CHexEscape(member->name),
                                       "' has a ZIP64 extra field too short for its sizes"));
        }
        *targets[i] = U64(field, at);
        at += 8;
      }
      return absl::OkStatus();
    }
    p += 4 + len;
  }
  if (!saturated[0] && !saturated[1] && !saturated[2]) return absl::OkStatus();
  return ZipError(absl::StrCat("member '", absl::CHexEscape(member->name),
                               "' has saturated 32-bit sizes but no ZIP64 extra field"));
}

absl::StatusOr<ZipDirectory> ReadCentralDirectory(absl::string_view file) {
  if (file.size() < kEndLen) {
    return ZipError(absl::StrCat("the file is ", file.size(),
                                 " bytes, too short for an end-of-central-directory record"));
  }
  // The end record sits in the last 22 + 65535 (comment) bytes; the last candidate whose
  // comment fits in the file wins, as in Python's zipfile.
  uint64_t end = kU64Max;
  uint64_t lowest = file.size() - kEndLen > 0xFFFF ? file.size() - kEndLen - 0xFFFF : 0;
  for (uint64_t p = file.size() - kEndLen + 1; p-- > lowest;) {
    if (U32(file, p) == kEndSig && p + kEndLen + U16(file, p + 20) <= file.size()) {
      end = p;
      break;
    }
  }
  if (end == kU64Max) return ZipError("no end-of-central-directory record");

  uint64_t disk = U16(file, end + 4);
  uint64_t central_disk = U16(file, end + 6);
  uint64_t entries_here = U16(file, end + 8);
  uint64_t entries = U16(file, end + 10);
  uint64_t central_size = U32(file, end + 12);
  uint64_t central_offset = U32(file, end + 16);
  uint64_t central_limit = end;  // the central directory must end before this
  if (end >= kZip64LocatorLen && U32(file, end - kZip64LocatorLen) == kZip64LocatorSig) {
    uint64_t locator = end - kZip64LocatorLen;
    uint32_t zip64_disk = U32(file, locator + 4);
    uint64_t zip64_end = U64(file, locator + 8);
    uint32_t total_disks = U32(file, locator + 16);
    if (zip64_disk != 0 || total_disks > 1) {
      return ZipError("multi-disk (split) archives are not supported");
    }
    if (zip64_end > locator || locator - zip64_end < kZip64EndLen) {
      return ZipError(absl::StrCat("ZIP64 end record offset ", zip64_end, " is out of range"));
    }
    if (U32(file, zip64_end) != kZip64EndSig) {
      return ZipError(absl::StrCat("no ZIP64 end record at offset ", zip64_end));
    }
    disk = U32(file, zip64_end + 16);
    central_disk = U32(file, zip64_end + 20);
    entries_here = U64(file, zip64_end + 24);
    entries = U64(file, zip64_end + 32);
    central_size = U64(file, zip64_end + 40);
    central_offset = U64(file, zip64_end + 48);
    central_limit = zip64_end;
  }
  if (disk != 0 || central_disk != 0 || entries_here != entries) {
    return ZipError("multi-disk (split) archives are not supported");
  }
  if (central_offset > central_limit || central_size > central_limit - central_offset) {
    return ZipError(absl::StrCat("the central directory (", central_size, " bytes at offset ",
                                 central_offset, ") lies outside the file"));
  }
  if (entries > central_size / kCentralHeaderLen) {
    return ZipError(absl::StrCat("the end record declares ", entries,
                                 " members but the central directory has room for at most ",
                                 central_size / kCentralHeaderLen));
  }

  ZipDirectory directory;
  directory.central_offset = central_offset;
  directory.members.reserve(entries);
  absl::string_view central = file.substr(central_offset, central_size);
  uint64_t p = 0;
  for (uint64_t i = 0; i < entries; ++i) {
    if (central.size() - p < kCentralHeaderLen || U32(central, p) != kCentralHeaderSig) {
      return ZipError(absl::StrCat("central directory entry ", i, " is missing or truncated"));
    }
    ZipMember member;
    member.flags = U16(central, p + 8);
    member.method = U16(central, p + 10);
    member.crc = U32(central, p + 16);
    member.compressed_size = U32(central, p + 20);
    member.size = U32(central, p + 24);
    uint64_t name_len = U16(central, p + 28);
    uint64_t extra_len = U16(central, p + 30);
    uint64_t comment_len = U16(central, p + 32);
    uint16_t disk_start = U16(central, p + 34);
    member.local_offset = U32(central, p + 42);
    if (central.size() - p - kCentralHeaderLen < name_len + extra_len + comment_len) {
      return ZipError(absl::StrCat("central directory entry ", i, " is truncated"));
    }
    member.name = std::string(central.substr(p + kCentralHeaderLen, name_len));
    QUANTD_RETURN_IF_ERROR(ApplyZip64Extra(
        central.substr(p + kCentralHeaderLen + name_len, extra_len), disk_start, &member));
    p += kCentralHeaderLen + name_len + extra_len + comment_len;
    directory.members.push_back(std::move(member));
  }
  return directory;
}

// Finds each member's data through its local header and checks that it lies inside the file
// and that no two members share bytes: overlapping members are how "better zip bombs" get
// quadratic expansion out of a small file.
absl::Status LocateMemberData(absl::string_view file, ZipDirectory* directory) {
  for (ZipMember& m : directory->members) {
    std::string name = absl::CHexEscape(m.name);
    if (m.local_offset > file.size() || file.size() - m.local_offset < kLocalHeaderLen ||
        U32(file, m.local_offset) != kLocalHeaderSig) {
      return ZipError(
          absl::StrCat("member '", name, "' has no local header at offset ", m.local_offset));
    }
    uint64_t name_len = U16(file, m.local_offset + 26);
    uint64_t extra_len = U16(file, m.local_offset + 28);
    uint64_t data_offset = m.local_offset + kLocalHeaderLen + name_len + extra_len;
    if (data_offset > file.size()) {
      return ZipError(absl::StrCat("member '", name, "' has a truncated local header"));
    }
    if (file.substr(m.local_offset + kLocalHeaderLen, name_len) != m.name) {
      return ZipError(absl::StrCat("member '", name, "' has a different name in its local header"));
    }
    if (U16(file, m.local_offset + 8) != m.method) {
      return ZipError(
          absl::StrCat("member '", name, "' has a different method in its local header"));
    }
    if (m.compressed_size > file.size() - data_offset) {
      return ZipError(absl::StrCat("member '", name, "' claims ", m.compressed_size,
                                   " bytes at offset ", data_offset, " but the file ends at ",
                                   file.size()));
    }
    m.data_offset = data_offset;
  }
  std::vector<const ZipMember*> by_offset;
  for (const ZipMember& m : directory->members) by_offset.push_back(&m);
  std::sort(by_offset.begin(), by_offset.end(), [](const ZipMember* a, const ZipMember* b) {
    return a->local_offset < b->local_offset;
  });
  for (size_t i = 0; i < by_offset.size(); ++i) {
    uint64_t data_end = by_offset[i]->data_offset + by_offset[i]->compressed_size;
    uint64_t next =
        i + 1 < by_offset.size() ? by_offset[i + 1]->local_offset : directory->central_offset;
    if (data_end > next) {
      return ZipError(absl::StrCat("member '", absl::CHexEscape(by_offset[i]->name),
                                   "' overlaps the next member or the central directory"));
    }
  }
  return absl::OkStatus();
}

uint32_t Crc32(uint32_t crc, absl::string_view bytes) {
  return static_cast<uint32_t>(
      crc32_z(crc, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

// Inflates a raw deflate stream that must produce exactly `size` bytes.
absl::StatusOr<std::string> Inflate(absl::string_view input, uint64_t size,
                                    const std::string& name) {
  uint64_t limit = input.size() > (kU64Max - 4096) / kMaxDeflateRatio
                       ? kU64Max
                       : input.size() * kMaxDeflateRatio + 4096;
  if (size > limit) {
    return ZipError(absl::StrCat("member '", name, "' declares ", size,
                                 " uncompressed bytes from only ", input.size(),
                                 " deflated bytes, more than deflate can produce"));
  }
  z_stream stream;
  memset(&stream, 0, sizeof(stream));
  if (inflateInit2(&stream, -MAX_WBITS) != Z_OK) {
    return absl::ResourceExhaustedError("zlib inflateInit2 failed");
  }
  std::unique_ptr<z_stream, int (*)(z_stream*)> cleanup(&stream, inflateEnd);

  // Reserve what an ordinary tensor needs up front (float data deflates by well under 8:1);
  // beyond that grow only as bytes actually arrive, so a forged size costs nothing.
  std::string out;
  out.reserve(std::min<uint64_t>(
      size, std::min<uint64_t>(input.size(), kU64Max / 16) * 8 + (uint64_t{64} << 20)));
  constexpr size_t kChunk = 256 << 10;
  std::unique_ptr<char[]> chunk(new char[kChunk]);
  size_t fed = 0;
  while (true) {
    if (stream.avail_in == 0 && fed < input.size()) {
      size_t n = std::min<size_t>(input.size() - fed, size_t{1} << 30);
      stream.next_in = reinterpret_cast<const Bytef*>(input.data() + fed);
      stream.avail_in = static_cast<uInt>(n);
      fed += n;
    }
    stream.next_out = reinterpret_cast<Bytef*>(chunk.get());
    stream.avail_out = static_cast<uInt>(kChunk);
    int ret = inflate(&stream, Z_NO_FLUSH);
    size_t produced = kChunk - stream.avail_out;
    if (produced > size - out.size()) {
      return ZipError(
          absl::StrCat("member '", name, "' inflates to more than its declared ", size, " bytes"));
    }
    if (out.size() + produced > out.capacity()) {
      out.reserve(
          std::min<uint64_t>(size, std::max<uint64_t>(out.capacity() * 2, out.size() + produced)));
    }
    out.append(chunk.get(), produced);
    if (ret == Z_STREAM_END) break;
    if (ret == Z_OK) continue;
    if (ret == Z_BUF_ERROR && stream.avail_in == 0 && fed == input.size()) {
      return ZipError(absl::StrCat("member '", name, "' has a truncated deflate stream"));
    }
    return ZipError(absl::StrCat("member '", name, "' has a corrupt deflate stream (",
                                 stream.msg != nullptr ? stream.msg : zError(ret), ")"));
  }
  if (out.size() != size) {
    return ZipError(
        absl::StrCat("member '", name, "' inflates to ", out.size(), " bytes but declares ", size));
  }
  return out;
}

absl::StatusOr<Array> ReadMember(absl::string_view file, const ZipMember& m) {
  std::string name = absl::CHexEscape(m.name);
  absl::string_view stored = file.substr(m.data_offset, m.compressed_size);
  std::string inflated;
  absl::string_view contents = stored;
  if (m.method == kMethodStored) {
    if (m.size != m.compressed_size) {
      return ZipError(absl::StrCat("stored member '", name, "' declares ", m.size,
                                   " bytes but occupies ", m.compressed_size));
    }
  } else {
    QUANTD_ASSIGN_OR_RETURN(inflated, Inflate(stored, m.size, name));
    contents = inflated;
  }
  uint32_t crc = Crc32(0, contents);
  if (crc != m.crc) {
    return ZipError(
        absl::StrFormat("member '%s' fails its CRC-32 check (stored %08x, data "
                        "%08x): the archive is corrupt",
                        name, m.crc, crc));
  }
  absl::StatusOr<Array> array =
      m.method == kMethodStored ? ParseNpy(stored) : ParseNpyOwned(std::move(inflated));
  if (!array.ok()) return Annotate(array.status(), absl::StrCat("member '", name, "': "));
  return array;
}

absl::StatusOr<NamedArrays> ParseNpz(absl::string_view file) {
  QUANTD_ASSIGN_OR_RETURN(ZipDirectory directory, ReadCentralDirectory(file));
  std::set<std::string> names;
  for (const ZipMember& m : directory.members) {
    std::string name = absl::CHexEscape(m.name);
    if (m.flags & kFlagEncrypted) {
      return ZipError(absl::StrCat("member '", name, "' is encrypted"));
    }
    if (m.method != kMethodStored && m.method != kMethodDeflated) {
      return ZipError(absl::StrCat("member '", name, "' uses compression method ", m.method,
                                   "; numpy writes stored (0) or deflated (8) members"));
    }
    constexpr absl::string_view kSuffix = ".npy";
    if (m.name.size() <= kSuffix.size() ||
        absl::string_view(m.name).substr(m.name.size() - kSuffix.size()) != kSuffix) {
      return ZipError(absl::StrCat("member '", name,
                                   "' is not a .npy array (an .npz holds only NAME.npy members)"));
    }
    if (!names.insert(m.name).second) {
      return ZipError(absl::StrCat("member '", name, "' appears twice"));
    }
  }
  QUANTD_RETURN_IF_ERROR(LocateMemberData(file, &directory));
  NamedArrays arrays;
  arrays.reserve(directory.members.size());
  for (const ZipMember& m : directory.members) {
    QUANTD_ASSIGN_OR_RETURN(Array array, ReadMember(file, m));
    arrays.emplace_back(m.name.substr(0, m.name.size() - 4), std::move(array));
  }
  return arrays;
}

absl::Status WriteNpzImpl(const std::string& path, const NamedArrays& arrays,
                          uint64_t zip64_threshold) {
  struct Pending {
    std::string zip_name;
    std::string header;
    const std::string* data;
    uint32_t crc;
    uint64_t size;
    uint64_t offset;
  };
  std::vector<Pending> pending;
  std::set<absl::string_view> names;
  for (const auto& [name, array] : arrays) {
    std::string shown = absl::CHexEscape(name);
    if (name.empty() || name.find('\0') != std::string::npos || name.size() > 0xFFFF - 4) {
      return absl::InvalidArgumentError(absl::StrCat(
          "array name '", shown, "' is not usable: names must be 1 to 65531 bytes without NUL"));
    }
    if (!names.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat("array name '", shown, "' appears twice"));
    }
    absl::StatusOr<const TypeInfo*> type = ValidateForWrite(array);
    if (!type.ok()) return Annotate(type.status(), absl::StrCat("array '", shown, "': "));
    Pending p;
    p.zip_name = name + ".npy";
    p.header = BuildNpyHeader(**type, array.shape);
    p.data = &array.data;
    p.crc = Crc32(Crc32(0, p.header), array.data);
    p.size = p.header.size() + array.data.size();
    p.offset = 0;
    pending.push_back(std::move(p));
  }

  AtomicFile writer(path);
  QUANTD_RETURN_IF_ERROR(writer.Open());
  auto flags_for = [](const std::string& name) {
    bool utf8 = std::any_of(name.begin(), name.end(),
                            [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
    return utf8 ? kFlagUtf8 : uint16_t{0};
  };
  // Sizes are known before writing (stored members, CRC computed above), so local headers
  // carry them and no data descriptors are needed.
  for (Pending& p : pending) {
    p.offset = writer.offset();
    bool zip64 = p.size >= zip64_threshold;
    std::string local;
    PutU32(&local, kLocalHeaderSig);
    PutU16(&local, zip64 ? kVersionZip64 : kVersionDefault);
    PutU16(&local, flags_for(p.zip_name));
    PutU16(&local, kMethodStored);
    PutU16(&local, 0);  // time 00:00
    PutU16(&local, kDosDate1980);
    PutU32(&local, p.crc);
    PutU32(&local, zip64 ? 0xFFFFFFFFu : p.size);
    PutU32(&local, zip64 ? 0xFFFFFFFFu : p.size);
    PutU16(&local, p.zip_name.size());
    PutU16(&local, zip64 ? 20 : 0);
    local += p.zip_name;
    if (zip64) {
      PutU16(&local, kZip64ExtraId);
      PutU16(&local, 16);
      PutU64(&local, p.size);
      PutU64(&local, p.size);
    }
    QUANTD_RETURN_IF_ERROR(writer.Write(local));
    QUANTD_RETURN_IF_ERROR(writer.Write(p.header));
    QUANTD_RETURN_IF_ERROR(writer.Write(*p.data));
  }

  uint64_t central_offset = writer.offset();
  std::string central;
  for (const Pending& p : pending) {
    bool big_size = p.size >= zip64_threshold;
    bool big_offset = p.offset >= zip64_threshold;
    std::string extra;
    if (big_size || big_offset) {
      PutU16(&extra, kZip64ExtraId);
      PutU16(&extra, (big_size ? 16 : 0) + (big_offset ? 8 : 0));
      if (big_size) {
        PutU64(&extra, p.size);
        PutU64(&extra, p.size);
      }
      if (big_offset) PutU64(&extra, p.offset);
    }
    uint16_t version = extra.empty() ? kVersionDefault : kVersionZip64;
    PutU32(&central, kCentralHeaderSig);
    PutU16(&central, kMadeByUnix | version);
    PutU16(&central, version);
    PutU16(&central, flags_for(p.zip_name));
    PutU16(&central, kMethodStored);
    PutU16(&central, 0);
    PutU16(&central, kDosDate1980);
    PutU32(&central, p.crc);
    PutU32(&central, big_size ? 0xFFFFFFFFu : p.size);
    PutU32(&central, big_size ? 0xFFFFFFFFu : p.size);
    PutU16(&central, p.zip_name.size());
    PutU16(&central, extra.size());
    PutU16(&central, 0);  // comment
    PutU16(&central, 0);  // disk
    PutU16(&central, 0);  // internal attributes
    PutU32(&central, kExternalAttrRegular0644);
    PutU32(&central, big_offset ? 0xFFFFFFFFu : p.offset);
    central += p.zip_name;
    central += extra;
  }
  QUANTD_RETURN_IF_ERROR(writer.Write(central));

  uint64_t count = pending.size();
  uint64_t central_size = central.size();
  bool big_count = count >= std::min<uint64_t>(0xFFFF, zip64_threshold);
  bool big_central_size = central_size >= zip64_threshold;
  bool big_central_offset = central_offset >= zip64_threshold;
  std::string end;
  if (big_count || big_central_size || big_central_offset) {
    uint64_t zip64_end = writer.offset();
    PutU32(&end, kZip64EndSig);
    PutU64(&end, kZip64EndLen - 12);  // size of the rest of the record
    PutU16(&end, kMadeByUnix | kVersionZip64);
    PutU16(&end, kVersionZip64);
    PutU32(&end, 0);  // this disk
    PutU32(&end, 0);  // disk with the central directory
    PutU64(&end, count);
    PutU64(&end, count);
    PutU64(&end, central_size);
    PutU64(&end, central_offset);
    PutU32(&end, kZip64LocatorSig);
    PutU32(&end, 0);
    PutU64(&end, zip64_end);
    PutU32(&end, 1);  // total disks
  }
  PutU32(&end, kEndSig);
  PutU16(&end, 0);
  PutU16(&end, 0);
  PutU16(&end, big_count ? 0xFFFF : count);
  PutU16(&end, big_count ? 0xFFFF : count);
  PutU32(&end, big_central_size ? 0xFFFFFFFFu : central_size);
  PutU32(&end, big_central_offset ? 0xFFFFFFFFu : central_offset);
  PutU16(&end, 0);  // comment
  QUANTD_RETURN_IF_ERROR(writer.Write(end));
  return writer.Commit();
}

}  // namespace

std::string DescrForDType(DType dtype) {
  const TypeInfo* type = FindTypeByDType(dtype);
  return type == nullptr ? std::string() : CanonicalDescr(*type);
}

absl::StatusOr<Array> ParseNpy(absl::string_view bytes) {
  QUANTD_ASSIGN_OR_RETURN(NpyLayout layout, ParseNpyLayout(bytes));
  return ArrayFromLayout(layout, std::string(bytes.substr(layout.data_offset)));
}

absl::StatusOr<std::string> SerializeNpy(const Array& array) {
  QUANTD_ASSIGN_OR_RETURN(const TypeInfo* type, ValidateForWrite(array));
  std::string out = BuildNpyHeader(*type, array.shape);
  out += array.data;
  return out;
}

absl::StatusOr<Array> ReadNpy(const std::string& path) {
  QUANTD_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  absl::StatusOr<Array> array = ParseNpy(file.bytes());
  if (!array.ok()) return Annotate(array.status(), absl::StrCat("'", path, "': "));
  return array;
}

absl::Status WriteNpy(const std::string& path, const Array& array) {
  absl::StatusOr<const TypeInfo*> type = ValidateForWrite(array);
  if (!type.ok()) return Annotate(type.status(), absl::StrCat("'", path, "': "));
  AtomicFile writer(path);
  QUANTD_RETURN_IF_ERROR(writer.Open());
  QUANTD_RETURN_IF_ERROR(writer.Write(BuildNpyHeader(**type, array.shape)));
  QUANTD_RETURN_IF_ERROR(writer.Write(array.data));
  return writer.Commit();
}

absl::StatusOr<NamedArrays> ReadNpz(const std::string& path) {
  QUANTD_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  absl::StatusOr<NamedArrays> arrays = ParseNpz(file.bytes());
  if (!arrays.ok()) return Annotate(arrays.status(), absl::StrCat("'", path, "': "));
  return arrays;
}

absl::Status WriteNpz(const std::string& path, const NamedArrays& arrays) {
  return WriteNpzImpl(path, arrays, /*zip64_threshold=*/0xFFFFFFFFu);
}

absl::StatusOr<Array> ToFloatInput(Array array) {
  QUANTD_ASSIGN_OR_RETURN(const TypeInfo* type, ValidateForWrite(array));
  if (type->dtype == DType::kF32 || type->dtype == DType::kF16 || type->dtype == DType::kBF16) {
    array.dtype = type->dtype;
    array.descr = CanonicalDescr(*type);
    return array;
  }
  if (type->kind != 'f' || type->size != 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "array of type '", CanonicalDescr(*type), "' (", type->label,
        ") is not a float tensor; quantd quantizes F32, F16 and BF16, or F64 converted to F32"));
  }
  // In place, front to back: element i's 4 output bytes never reach past input element i.
  size_t n = array.data.size() / 8;
  char* bytes = array.data.data();
  for (size_t i = 0; i < n; ++i) {
    uint64_t bits = LoadLE(bytes + 8 * i, 8);
    double value;
    memcpy(&value, &bits, sizeof(value));
    StoreLE(bytes + 4 * i, FloatToBits(static_cast<float>(value)), 4);
  }
  array.data.resize(4 * n);
  array.dtype = DType::kF32;
  array.descr = "<f4";
  return array;
}

namespace internal {

absl::Status WriteNpzWithZip64Threshold(const std::string& path, const NamedArrays& arrays,
                                        uint64_t zip64_threshold) {
  return WriteNpzImpl(path, arrays, zip64_threshold);
}

}  // namespace internal
}  // namespace quantd::npy
