// Executor::ParallelFor: chunks cover [0, n) exactly once, respect min_chunk, and the contract
// holds for nested calls and for several threads calling one pool at once.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quantd/executor.h"

namespace quantd::testing {
namespace {

struct Coverage {
  std::vector<std::atomic<int>> hits;
  std::mutex mu;
  std::vector<std::pair<int64_t, int64_t>> chunks;

  explicit Coverage(int64_t n) : hits(static_cast<size_t>(n)) {}

  void Record(int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
    std::lock_guard<std::mutex> lock(mu);
    chunks.emplace_back(begin, end);
  }
};

// Every index once, chunks disjoint and in range, at most one chunk shorter than min_chunk.
void ExpectValidCover(Coverage& c, int64_t n, int64_t min_chunk) {
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(c.hits[static_cast<size_t>(i)].load(), 1) << "index " << i << " of " << n;
  }
  std::sort(c.chunks.begin(), c.chunks.end());
  int64_t next = 0;
  int short_chunks = 0;
  for (const auto& [begin, end] : c.chunks) {
    EXPECT_EQ(begin, next);
    EXPECT_LT(begin, end) << "empty chunk";
    if (end - begin < min_chunk) ++short_chunks;
    next = end;
  }
  EXPECT_EQ(next, n);
  EXPECT_LE(short_chunks, 1) << "only the last chunk may be shorter than min_chunk";
}

struct NamedExecutor {
  const char* name;
  std::unique_ptr<Executor> owned;
  Executor* executor;
};

std::vector<NamedExecutor> Executors() {
  std::vector<NamedExecutor> out;
  out.push_back({"inline", nullptr, InlineExecutor()});
  for (int threads : {1, 2, 4, 0}) {
    std::unique_ptr<Executor> pool = CreateThreadPoolExecutor(threads);
    Executor* raw = pool.get();
    out.push_back({threads == 0 ? "pool(hw)" : "pool", std::move(pool), raw});
  }
  return out;
}

TEST(ExecutorTest, CoversTheRangeExactlyOnce) {
  for (NamedExecutor& e : Executors()) {
    for (int64_t n : std::vector<int64_t>{0, 1, 2, 3, 7, 64, 1000, 4097, 100003}) {
      for (int64_t min_chunk :
           {int64_t{1}, int64_t{3}, int64_t{64}, int64_t{1000}, int64_t{1} << 20}) {
        SCOPED_TRACE(absl::StrCat(e.name, " n=", n, " min_chunk=", min_chunk));
        Coverage c(n);
        e.executor->ParallelFor(n, min_chunk, [&](int64_t b, int64_t end) { c.Record(b, end); });
        ExpectValidCover(c, n, min_chunk);
      }
    }
  }
}

TEST(ExecutorTest, NonPositiveMinChunkStillCovers) {
  for (NamedExecutor& e : Executors()) {
    for (int64_t min_chunk : {int64_t{0}, int64_t{-5}}) {
      Coverage c(513);
      e.executor->ParallelFor(513, min_chunk, [&](int64_t b, int64_t end) { c.Record(b, end); });
      ExpectValidCover(c, 513, 1);
    }
  }
}

TEST(ExecutorTest, ConcurrencyIsPositive) {
  EXPECT_EQ(InlineExecutor()->concurrency(), 1);
  for (NamedExecutor& e : Executors()) EXPECT_GE(e.executor->concurrency(), 1) << e.name;
  EXPECT_GE(CreateThreadPoolExecutor(4)->concurrency(), 4);
}

TEST(ExecutorTest, NestedCallsCoverToo) {
  for (NamedExecutor& e : Executors()) {
    const int64_t outer = 37, inner = 211;
    Coverage c(outer * inner);
    e.executor->ParallelFor(outer, 1, [&](int64_t b, int64_t end) {
      for (int64_t o = b; o < end; ++o) {
        e.executor->ParallelFor(
            inner, 8, [&](int64_t ib, int64_t ie) { c.Record(o * inner + ib, o * inner + ie); });
      }
    });
    for (int64_t i = 0; i < outer * inner; ++i) {
      ASSERT_EQ(c.hits[static_cast<size_t>(i)].load(), 1) << e.name << " index " << i;
    }
  }
}

TEST(ExecutorTest, ConcurrentCallersEachGetTheirWholeRange) {
  std::unique_ptr<Executor> pool = CreateThreadPoolExecutor(3);
  constexpr int kCallers = 6;
  constexpr int kRounds = 40;
  std::vector<std::thread> callers;
  std::atomic<int> failures{0};
  for (int t = 0; t < kCallers; ++t) {
    callers.emplace_back([&, t]() {
      for (int round = 0; round < kRounds; ++round) {
        const int64_t n = 1 + (t * 7919 + round * 104729) % 5000;
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        pool->ParallelFor(n, 1 + round % 17, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
        });
        for (auto& h : hits) {
          if (h.load() != 1) failures.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(ExecutorTest, WorkRunsOnSeveralThreads) {
  // Not a timing assertion: a pool of 4 must be able to hand chunks to other threads. Each
  // chunk waits (bounded) until a second thread has shown up.
  std::unique_ptr<Executor> pool = CreateThreadPoolExecutor(4);
  std::mutex mu;
  std::vector<std::thread::id> seen;
  pool->ParallelFor(64, 1, [&](int64_t, int64_t) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (std::find(seen.begin(), seen.end(), std::this_thread::get_id()) == seen.end()) {
        seen.push_back(std::this_thread::get_id());
      }
    }
    for (int spin = 0; spin < 2000; ++spin) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (seen.size() > 1) return;
      }
      std::this_thread::yield();
    }
  });
  EXPECT_GT(seen.size(), 1u);
}

}  // namespace
}  // namespace quantd::testing
