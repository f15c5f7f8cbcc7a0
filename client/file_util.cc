#include "file_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "quantd/status.h"

namespace quantd {

// ---- MappedFile ----

absl::StatusOr<MappedFile> MappedFile::Open(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open '", path, "'"));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int error = errno;
    close(fd);
    return absl::ErrnoToStatus(error, absl::StrCat("cannot stat '", path, "'"));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a regular file"));
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    close(fd);
    return MappedFile(nullptr, 0);
  }
  void* addr = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int error = errno;
  close(fd);
  if (addr == MAP_FAILED) {
    return absl::ErrnoToStatus(error, absl::StrCat("cannot map '", path, "'"));
  }
  // Advisory only: lets the kernel read ahead and drop pages behind a single pass.
  madvise(addr, size, MADV_SEQUENTIAL);
  return MappedFile(addr, size);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : addr_(std::exchange(other.addr_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (addr_ != nullptr) munmap(addr_, size_);
    addr_ = std::exchange(other.addr_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (addr_ != nullptr) munmap(addr_, size_);
}

absl::string_view MappedFile::bytes() const {
  return addr_ == nullptr ? absl::string_view()
                          : absl::string_view(static_cast<char*>(addr_), size_);
}

// ---- AtomicFile ----

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) close(fd_);
  if (!tmp_path_.empty() && !committed_) unlink(tmp_path_.c_str());
}

absl::Status AtomicFile::Open() {
  static std::atomic<uint64_t> counter{0};
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string candidate = absl::StrCat(path_, ".tmp.", getpid(), ".", counter++);
    // 0666 so the umask decides, as for any file the user creates.
    fd_ = open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ >= 0) {
      tmp_path_ = std::move(candidate);
      return absl::OkStatus();
    }
    if (errno != EEXIST) {
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot create '", candidate, "'"));
    }
  }
  return absl::AlreadyExistsError(
      absl::StrCat("cannot create a temporary file beside '", path_, "'"));
}

absl::Status AtomicFile::Write(absl::string_view bytes) {
  QUANTD_RETURN_IF_ERROR(WriteAt(offset_, bytes));
  offset_ += bytes.size();
  return absl::OkStatus();
}

absl::Status AtomicFile::WriteAt(uint64_t offset, absl::string_view bytes) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat("'", path_, "' is not open"));
  while (!bytes.empty()) {
    // Linux writes at most ~2 GiB per call; partial writes just continue.
    ssize_t n = pwrite(fd_, bytes.data(), std::min<size_t>(bytes.size(), size_t{1} << 30),
                       static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot write '", tmp_path_, "'"));
    }
    bytes.remove_prefix(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFile::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat("'", path_, "' is not open"));
  if (fsync(fd_) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot flush '", tmp_path_, "'"));
  }
  int result = close(fd_);
  fd_ = -1;
  if (result != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot close '", tmp_path_, "'"));
  }
  if (rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    return absl::ErrnoToStatus(errno,
                               absl::StrCat("cannot rename '", tmp_path_, "' to '", path_, "'"));
  }
  committed_ = true;
  return absl::OkStatus();
}

bool IsAtomicFileTemporary(absl::string_view file_name, absl::string_view target_name) {
  if (!absl::ConsumePrefix(&file_name, target_name) || !absl::ConsumePrefix(&file_name, ".tmp.")) {
    return false;
  }
  const std::vector<absl::string_view> parts = absl::StrSplit(file_name, '.');
  if (parts.size() != 2) return false;
  for (absl::string_view part : parts) {
    if (part.empty() || !std::all_of(part.begin(), part.end(), absl::ascii_isdigit)) return false;
  }
  return true;
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view bytes) {
  AtomicFile file(path);
  QUANTD_RETURN_IF_ERROR(file.Open());
  QUANTD_RETURN_IF_ERROR(file.Write(bytes));
  return file.Commit();
}

}  // namespace quantd
