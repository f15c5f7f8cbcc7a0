// Files for the client's readers and writers (npy.h, safetensors.h, `quantctl compress`): a
// read-only memory map of a whole file, and a file written under a temporary name and renamed
// into place, so that a reader (or a resumed job) sees either the old file or the complete new
// one, never half of one.
//
//   QUANTD_ASSIGN_OR_RETURN(MappedFile input, MappedFile::Open("model.safetensors"));
//   absl::string_view bytes = input.bytes();
//
//   AtomicFile out("out/model-00001-of-00002.safetensors");
//   QUANTD_RETURN_IF_ERROR(out.Open());
//   QUANTD_RETURN_IF_ERROR(out.WriteAt(/*offset=*/4096, tensor_bytes));  // any order
//   QUANTD_RETURN_IF_ERROR(out.Commit());  // fsync, rename over the target
//
// AtomicFile's temporary is "<target>.tmp.<pid>.<n>" in the target's directory (rename is
// atomic only within one file system); IsAtomicFileTemporary recognizes those names so that a
// job interrupted by a kill can sweep its leftovers on the next run. A destroyed, uncommitted
// AtomicFile removes its temporary.
//
// A mapped file that another process truncates while we read it can raise SIGBUS: we map
// files the user handed us, not files that something else rewrites.
#ifndef QUANTD_CLIENT_FILE_UTIL_H_
#define QUANTD_CLIENT_FILE_UTIL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quantd {

class MappedFile {
 public:
  // InvalidArgument for something that is not a regular file; the errno's status for files
  // that cannot be opened or mapped. An empty file maps to empty bytes.
  [[nodiscard]] static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  absl::string_view bytes() const;

 private:
  MappedFile(void* addr, size_t size) : addr_(addr), size_(size) {}
  void* addr_ = nullptr;
  size_t size_ = 0;
};

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  // Creates the temporary (O_EXCL, mode 0666 less the umask).
  [[nodiscard]] absl::Status Open();
  // Appends at the end of what Write has written so far.
  [[nodiscard]] absl::Status Write(absl::string_view bytes);
  // Writes at `offset` (pwrite): several threads may write disjoint ranges at once. A gap left
  // unwritten reads back as zeros.
  [[nodiscard]] absl::Status WriteAt(uint64_t offset, absl::string_view bytes);
  // Flushes to disk before the rename so a crash cannot leave a renamed but empty file.
  [[nodiscard]] absl::Status Commit();

  uint64_t offset() const { return offset_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  uint64_t offset_ = 0;
  bool committed_ = false;
};

// True when `file_name` is an AtomicFile temporary of `target_name` ("<target>.tmp.<pid>.<n>").
bool IsAtomicFileTemporary(absl::string_view file_name, absl::string_view target_name);

// Writes `bytes` to `path` through an AtomicFile.
[[nodiscard]] absl::Status WriteFileAtomically(const std::string& path, absl::string_view bytes);

}  // namespace quantd

#endif  // QUANTD_CLIENT_FILE_UTIL_H_
