// safetensors files (https://github.com/huggingface/safetensors), read through a memory map and
// written tensor by tensor, for `quantctl compress`.
//
//   QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<safetensors::File> file,
//                           safetensors::File::Open("model-00001-of-00002.safetensors"));
//   for (const safetensors::TensorInfo& tensor : file->tensors()) {
//     absl::string_view bytes = file->Data(tensor);  // into the mapping, no copy
//   }
//
//   QUANTD_ASSIGN_OR_RETURN(safetensors::Layout layout, safetensors::LayOut(entries));
//   QUANTD_RETURN_IF_ERROR(out.WriteAt(0, layout.header));
//   QUANTD_RETURN_IF_ERROR(out.WriteAt(layout.data_offsets[i], bytes_of_tensor_i));
//
// The format: 8 bytes little-endian N, N bytes of JSON header {"name": {"dtype": "F32",
// "shape": [2, 3], "data_offsets": [begin, end]}, ..., "__metadata__": {"k": "v"}}, then the
// data section; offsets count from the start of the data section.
//
// Files come from the internet, so Open treats its input as hostile and refuses, with
// InvalidArgument naming the file and what is wrong, before anything is sized from the header:
//   * a file shorter than 8 bytes, N = 0, N above kMaxHeaderBytes (safetensors' own 100 MB
//     limit) or beyond the end of the file;
//   * a header that is not strict JSON (duplicate names included), not an object, or whose
//     entries miss or mistype dtype / shape / data_offsets or carry other fields;
//   * an unknown dtype; negative dims; rank above kMaxRank; a shape whose element count or byte
//     size overflows int64;
//   * offsets that are not [begin, end] with begin <= end, or whose length differs from
//     shape × dtype size, or that overlap, leave a hole, or do not end exactly at the end of
//     the file (the reference implementation requires a densely packed data section too);
//   * __metadata__ that is not an object of strings.
//
// What is written (LayOut): the header with entries in the given order, data laid out densely
// in that order, "__metadata__" first when given, the JSON padded with spaces to a multiple of
// 8 bytes so that the data section starts aligned (as the reference writer does).
#ifndef QUANTD_CLIENT_SAFETENSORS_H_
#define QUANTD_CLIENT_SAFETENSORS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "file_util.h"

namespace quantd::safetensors {

// The dtypes of the safetensors format that we read and write. F8_E4M3 is OCP E4M3 "fn" (no
// Inf, max 448), as torch.float8_e4m3fn.
enum class DType {
  kBool,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
};

// "F32", "F8_E4M3", ... as in the header.
absl::string_view DTypeName(DType dtype);
int DTypeSize(DType dtype);
// InvalidArgument listing the accepted names for anything else.
[[nodiscard]] absl::StatusOr<DType> DTypeFromName(absl::string_view name);

// Safetensors' MAX_HEADER_SIZE.
inline constexpr int64_t kMaxHeaderBytes = 100'000'000;
// More dims than any checkpoint tensor has; a bound on what a header can make us allocate.
inline constexpr int kMaxRank = 16;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // in the data section
  int64_t bytes = 0;
};

using Metadata = std::vector<std::pair<std::string, std::string>>;

struct Header {
  std::vector<TensorInfo> tensors;  // in data-offset order
  Metadata metadata;
};

// Parses and checks a header (the N bytes of JSON) against a data section of `data_bytes`.
// Messages name what is wrong but not the file: callers prefix that.
[[nodiscard]] absl::StatusOr<Header> ParseHeader(absl::string_view json, int64_t data_bytes);

// Element count of `shape` and its byte size in `dtype`: InvalidArgument on a negative dim or
// overflow of int64.
[[nodiscard]] absl::StatusOr<int64_t> ByteSize(DType dtype, const std::vector<int64_t>& shape);

class File {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const Metadata& metadata() const { return header_.metadata; }
  // The tensor named `name`, or nullptr.
  const TensorInfo* Find(absl::string_view name) const;
  // The tensor's bytes inside the mapping (valid while this File lives).
  absl::string_view Data(const TensorInfo& tensor) const;
  // The header's JSON text as stored (for fingerprints of the input).
  absl::string_view header_json() const;
  int64_t file_bytes() const { return static_cast<int64_t>(mapping_.bytes().size()); }

 private:
  File(std::string path, MappedFile mapping, Header header, int64_t header_bytes)
      : path_(std::move(path)),
        mapping_(std::move(mapping)),
        header_(std::move(header)),
        header_bytes_(header_bytes) {}

  std::string path_;
  MappedFile mapping_;
  Header header_;
  int64_t header_bytes_;
};

// A tensor to be written: everything but its bytes.
struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
};

struct Layout {
  std::string header;                 // the 8-byte length and the padded JSON
  std::vector<int64_t> data_offsets;  // file offset of each entry's bytes
  std::vector<int64_t> data_bytes;    // byte size of each entry
  int64_t file_bytes = 0;
};

// The header and file offsets of a file holding `entries` in that order. InvalidArgument for an
// empty or repeated name, "__metadata__" as a tensor name, or a shape ByteSize refuses.
[[nodiscard]] absl::StatusOr<Layout> LayOut(const std::vector<TensorEntry>& entries,
                                            const Metadata& metadata = {});

// Writes a whole file at once (tests and small outputs): entries and their bytes, in order.
[[nodiscard]] absl::Status WriteFile(
    const std::string& path, const std::vector<std::pair<TensorEntry, std::string>>& tensors,
    const Metadata& metadata = {});

}  // namespace quantd::safetensors

#endif  // QUANTD_CLIENT_SAFETENSORS_H_
