// NumPy .npy and .npz files, read and written without Python, so that `quantctl` exchanges
// tensors with whatever numpy users have (`np.save`, `np.savez`, `np.savez_compressed`) and
// its outputs open with a plain `np.load`.
//
//   QUANTD_ASSIGN_OR_RETURN(npy::Array weights, npy::ReadNpy("w.npy"));
//   QUANTD_ASSIGN_OR_RETURN(weights, npy::ToFloatInput(std::move(weights)));  // f64 -> F32
//   npy::Array codes{DType::kU8, {4096, 128}, std::move(bytes)};
//   QUANTD_RETURN_IF_ERROR(npy::WriteNpz("out.npz", {{"codes", std::move(codes)}}));
//
// Files come from users, so every reader treats its input as hostile: a truncated, corrupt or
// crafted file gives absl::InvalidArgumentError naming what is wrong, never a crash, and no
// buffer is sized from a header before that header has been checked against the bytes that
// are actually there (with overflow-checked arithmetic). Nothing here throws.
//
// What is read (anything else is refused with a message that says so):
//   * .npy versions 1.0, 2.0 and 3.0; C order only (fortran_order=True is refused: quantd works
//     on row-major data and a silent transpose would hide a layout mistake upstream).
//   * descrs b1, i1, u1, i2, u2, i4, u4, i8, u8, f2, f4, f8, and '<V2' as bfloat16: numpy has
//     no bfloat16, and ml_dtypes saves its bfloat16 arrays as the 2-byte void '<V2'. A plain
//     numpy '|V2' is opaque bytes, not bfloat16, and is refused.
//   * Big-endian descrs ('>f4') are byte-swapped on read, so Array::data is always
//     little-endian and Array::descr always canonical ('<f4', '|u1').
//   * .npz: a zip archive found through its central directory; members stored (method 0) or
//     deflated (method 8), with or without data descriptors, ZIP64 included, CRC-32 checked.
//     Every member must be a uniquely named NAME.npy file. Refused: encrypted, multi-disk
//     and other-method archives, members that overlap (a zip-bomb trick), and deflated
//     members declaring more than deflate's 1032:1 maximum expansion could produce.
//
// What is written: .npy version 1.0 (2.0 when the header does not fit 64 KiB), header padded
// so the data starts on a 64-byte boundary as numpy does; .npz with stored members named
// "<name>.npy", switching to ZIP64 records only when a size or offset needs them. Writes go to
// a temporary file beside the target that is renamed over it, so readers never see half a file.
//
// Memory: ReadNpy and ReadNpz map the file and copy each array's data once into its
// Array::data; a deflated member is inflated into one buffer that becomes Array::data. The
// writers stream Array::data to the file without copying it. A file that shrinks while mapped
// can raise SIGBUS; we read files the user handed us, not files that another process rewrites.
#ifndef QUANTD_CLIENT_NPY_H_
#define QUANTD_CLIENT_NPY_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "quantd/tensor.h"

namespace quantd::npy {

// One array: shape and little-endian, row-major (C order) bytes.
//
// `descr` is the numpy type string and is what the file format follows; `dtype` is its quantd
// name. Both exist because numpy has types quantd does not (float64 is the common one: plain
// `np.save` of a Python float array writes '<f8'). The readers always set both, with
// dtype = kUnspecified for types quantd has no name for ('<f8', '<i8', '|b1', ...).
// The writers accept an empty descr and derive it from dtype, so
// `Array{DType::kF32, {3, 4}, bytes}` is enough; when both are set they must agree.
struct Array {
  // A constructor rather than an aggregate so that the descr can be left out without
  // -Wmissing-field-initializers.
  Array() = default;
  Array(DType dtype_in, Shape shape_in, std::string data_in, std::string descr_in = "")
      : dtype(dtype_in),
        shape(std::move(shape_in)),
        data(std::move(data_in)),
        descr(std::move(descr_in)) {}

  DType dtype = DType::kUnspecified;
  Shape shape;
  std::string data;
  std::string descr;
};

using NamedArrays = std::vector<std::pair<std::string, Array>>;

// The canonical numpy descr of a quantd dtype ('<f4', '|u1', '<V2' for BF16); empty for
// kUnspecified.
std::string DescrForDType(DType dtype);

// Parses the contents of a .npy file. Copies the data out of `bytes`.
[[nodiscard]] absl::StatusOr<Array> ParseNpy(absl::string_view bytes);

// The .npy file for `array`. Fails (InvalidArgument) when the array is inconsistent: unknown
// or non-canonical descr, descr and dtype disagreeing, negative dims, rank above kMaxRank, or
// data.size() not equal to numel × itemsize.
[[nodiscard]] absl::StatusOr<std::string> SerializeNpy(const Array& array);

[[nodiscard]] absl::StatusOr<Array> ReadNpy(const std::string& path);
[[nodiscard]] absl::Status WriteNpy(const std::string& path, const Array& array);

// Members in archive order, named as np.load shows them (without the ".npy" suffix).
[[nodiscard]] absl::StatusOr<NamedArrays> ReadNpz(const std::string& path);
// Names must be non-empty, unique and free of NUL; each is stored as "<name>.npy".
[[nodiscard]] absl::Status WriteNpz(const std::string& path, const NamedArrays& arrays);

// Makes an array acceptable as quantizer input. F32, F16 and BF16 pass through untouched;
// float64 ('<f8') becomes F32 rounded to nearest even, which is lossy: values beyond the F32
// range become ±inf and small ones lose precision or flush to subnormals/zero. Every other
// type is refused (InvalidArgument) rather than guessed at: integer tensors are codes, not
// weights. The conversion reuses the input's buffer.
[[nodiscard]] absl::StatusOr<Array> ToFloatInput(Array array);

namespace internal {

// WriteNpz with the size at which ZIP64 records take over lowered from 0xFFFFFFFF, so tests
// reach the ZIP64 branch without writing a 4 GiB file. A size or offset >= threshold (or a
// member count >= min(threshold, 0xFFFF)) is written in ZIP64 form.
[[nodiscard]] absl::Status WriteNpzWithZip64Threshold(const std::string& path,
                                                      const NamedArrays& arrays,
                                                      uint64_t zip64_threshold);

}  // namespace internal
}  // namespace quantd::npy

#endif  // QUANTD_CLIENT_NPY_H_
