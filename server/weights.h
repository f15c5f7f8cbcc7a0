// WeightRegistry: the server's registered weights (RegisterWeight / ListWeights / DropWeight).
// A registered weight is one a backend stored (Backend::StoreWeight: quantized once, kept on
// the GPU under the CUDA backend) under a handle that GemmRequest.b_handle names. What they
// hold together is capped: a registration that would go above the cap is refused with
// RESOURCE_EXHAUSTED before any work.
//
//   WeightRegistry weights(/*cap_bytes=*/int64_t{8} << 30);
//   QUANTD_RETURN_IF_ERROR(weights.Reserve(bytes, "q_proj"));   // before storing
//   absl::StatusOr<std::unique_ptr<StoredWeight>> stored = backend->StoreWeight(...);
//   if (!stored.ok()) weights.Unreserve(bytes);
//   else entry = weights.Add("q_proj", std::move(*stored), bytes);
//
// A dropped weight leaves the registry at once; its memory is released (and stops counting
// against the cap) when the last GEMM using it finishes. Thread-safe.
#ifndef QUANTD_SERVER_WEIGHTS_H_
#define QUANTD_SERVER_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "quantd/gemm.h"

namespace quantd::server {

class WeightRegistry {
 public:
  struct Entry {
    std::string handle;
    std::string name;
    std::shared_ptr<const StoredWeight> weight;
    uint64_t order = 0;  // registration order
  };

  explicit WeightRegistry(int64_t cap_bytes);

  WeightRegistry(const WeightRegistry&) = delete;
  WeightRegistry& operator=(const WeightRegistry&) = delete;

  // Counts `bytes` against the cap for a weight about to be stored; RESOURCE_EXHAUSTED (saying
  // what is registered and what to do) when they do not fit.
  [[nodiscard]] absl::Status Reserve(int64_t bytes, absl::string_view name);
  // Gives back a reservation whose weight was not stored.
  void Unreserve(int64_t bytes);
  // Registers a stored weight under a new handle; `reserved` (its Reserve) becomes its
  // actual bytes, counted until the weight is destroyed. If it throws (std::bad_alloc), the
  // weight is destroyed and the reservation is given back.
  Entry Add(std::string name, std::unique_ptr<StoredWeight> weight, int64_t reserved);
  // NOT_FOUND for a handle that is not (or no longer) registered.
  [[nodiscard]] absl::StatusOr<Entry> Find(absl::string_view handle) const;
  // Unregisters; the bytes the weight holds (freed once no GEMM uses it). NOT_FOUND as Find.
  [[nodiscard]] absl::StatusOr<int64_t> Drop(absl::string_view handle);
  // Every registered weight, in registration order.
  std::vector<Entry> List() const;

  // Weights registered, and the bytes counted against the cap: registered weights, weights
  // dropped but still in use, and reservations of weights being stored.
  struct Stats {
    int64_t count = 0;
    int64_t bytes = 0;
  };
  Stats stats() const;
  int64_t bytes() const;
  int64_t cap_bytes() const { return cap_bytes_; }

 private:
  // Outlives the registry while a dropped weight is still in use (its deleter gives its bytes
  // back here).
  struct Accounting {
    std::mutex mu;
    int64_t bytes = 0;
  };

  const int64_t cap_bytes_;
  std::shared_ptr<Accounting> accounting_;
  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_;
  uint64_t next_order_ = 0;
  absl::BitGen random_;
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_WEIGHTS_H_
