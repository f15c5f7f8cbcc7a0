// The registered weights' handles and memory cap (server/weights.h).
#include "server/weights.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace quantd::server {
namespace {

absl::Status UnknownHandle(absl::string_view handle) {
  return absl::NotFoundError(absl::StrCat("no registered weight has handle '", handle,
                                          "' (dropped, or never registered: ListWeights shows "
                                          "the registered ones, RegisterWeight adds one)"));
}

}  // namespace

WeightRegistry::WeightRegistry(int64_t cap_bytes)
    : cap_bytes_(cap_bytes), accounting_(std::make_shared<Accounting>()) {}

absl::Status WeightRegistry::Reserve(int64_t bytes, absl::string_view name) {
  int64_t held = 0;
  {
    std::lock_guard<std::mutex> lock(accounting_->mu);
    held = accounting_->bytes;
    if (held + bytes <= cap_bytes_) {
      accounting_->bytes += bytes;
      return absl::OkStatus();
    }
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "registering weight '", name, "' needs ", bytes, " bytes, but ", stats().count,
      " registered weights hold ", held, " of the server's ", cap_bytes_,
      " (--max-weight-bytes): drop weights no longer used (DropWeight; ListWeights shows "
      "them), register this one in a smaller format, or raise --max-weight-bytes"));
}

void WeightRegistry::Unreserve(int64_t bytes) {
  std::lock_guard<std::mutex> lock(accounting_->mu);
  accounting_->bytes -= bytes;
}

WeightRegistry::Entry WeightRegistry::Add(std::string name, std::unique_ptr<StoredWeight> weight,
                                          int64_t reserved) {
  const int64_t bytes = weight->bytes();
  {
    // The estimate reserved is exact for both backends; should it ever differ, the
    // accounting follows what the weight really holds.
    std::lock_guard<std::mutex> lock(accounting_->mu);
    accounting_->bytes += bytes - reserved;
  }
  std::shared_ptr<Accounting> accounting = accounting_;
  std::shared_ptr<const StoredWeight> shared(weight.release(),
                                             [accounting, bytes](const StoredWeight* stored) {
                                               delete stored;
                                               std::lock_guard<std::mutex> lock(accounting->mu);
                                               accounting->bytes -= bytes;
                                             });
  std::lock_guard<std::mutex> lock(mu_);
  Entry entry;
  // Unguessable handles: one client cannot address (or drop) another's weight by counting.
  do {
    entry.handle = absl::StrFormat("w-%016x", absl::Uniform<uint64_t>(random_));
  } while (entries_.contains(entry.handle));
  entry.name = std::move(name);
  entry.weight = std::move(shared);
  entry.order = next_order_++;
  entries_[entry.handle] = entry;
  return entry;
}

absl::StatusOr<WeightRegistry::Entry> WeightRegistry::Find(absl::string_view handle) const {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = entries_.find(handle);
  if (it == entries_.end()) return UnknownHandle(handle);
  return it->second;
}

absl::StatusOr<int64_t> WeightRegistry::Drop(absl::string_view handle) {
  std::shared_ptr<const StoredWeight> weight;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = entries_.find(handle);
    if (it == entries_.end()) return UnknownHandle(handle);
    weight = std::move(it->second.weight);
    entries_.erase(it);
  }
  // Destroyed here, outside the lock, unless a GEMM still holds it.
  return weight->bytes();
}

std::vector<WeightRegistry::Entry> WeightRegistry::List() const {
  std::vector<Entry> list;
  {
    std::lock_guard<std::mutex> lock(mu_);
    list.reserve(entries_.size());
    for (const auto& [handle, entry] : entries_) list.push_back(entry);
  }
  std::sort(list.begin(), list.end(),
            [](const Entry& x, const Entry& y) { return x.order < y.order; });
  return list;
}

WeightRegistry::Stats WeightRegistry::stats() const {
  Stats stats;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats.count = static_cast<int64_t>(entries_.size());
  }
  stats.bytes = bytes();
  return stats;
}

int64_t WeightRegistry::bytes() const {
  std::lock_guard<std::mutex> lock(accounting_->mu);
  return accounting_->bytes;
}

}  // namespace quantd::server
