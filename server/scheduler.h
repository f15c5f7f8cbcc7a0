// Scheduler: a bounded queue of compute tasks and a fixed set of worker threads that run them.
//
// The gRPC handlers never compute on gRPC's own threads: they validate, then Submit a task.
// Submit refuses at once with RESOURCE_EXHAUSTED when `max_queue` tasks are already waiting, so
// a burst beyond capacity is pushed back to clients (who back off) instead of piling up in
// memory. A worker that takes a task first checks the call's deadline and cancellation; a task
// whose call is already dead is told so (DEADLINE_EXCEEDED / CANCELLED) and does no work.
//
//   Scheduler scheduler(SchedulerOptions{.workers = 4, .max_queue = 256});
//   Scheduler::Task task;
//   task.deadline = context->deadline();
//   task.is_cancelled = [context] { return context->IsCancelled(); };
//   task.run = [](const absl::Status& admission, absl::Duration queue_wait) {
//     if (!admission.ok()) { /* finish the call with `admission` */ return; }
//     /* compute, then finish the call */
//   };
//   if (absl::Status s = scheduler.Submit(std::move(task)); !s.ok()) { /* finish with s */ }
//   ...
//   scheduler.Shutdown();   // refuse new tasks, run every queued one, join the workers
//
// Every submitted task's `run` is called exactly once, on a worker thread.
#ifndef QUANTD_SERVER_SCHEDULER_H_
#define QUANTD_SERVER_SCHEDULER_H_

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace quantd::server {

struct SchedulerOptions {
  // Worker threads, i.e. requests computed at once (0: one per hardware thread).
  int workers = 0;
  // Tasks allowed to wait for a worker (running ones not counted); Submit refuses beyond.
  int max_queue = 256;
  // Called with the number of waiting tasks whenever it changes (e.g. to set a gauge).
  std::function<void(int64_t depth)> on_queue_depth;
  // Test hook: runs on the worker after it takes a task and before the admission checks, so
  // a test can hold a worker busy (to fill the queue or let a deadline pass). Leave empty.
  std::function<void()> before_task_for_testing;
};

class Scheduler {
 public:
  using Clock = std::chrono::system_clock;

  struct Task {
    // The call's deadline (gRPC's is a system_clock time point); max() means none.
    Clock::time_point deadline = Clock::time_point::max();
    // Whether the call was cancelled; may be empty.
    std::function<bool()> is_cancelled;
    // Called exactly once on a worker. `admission` is OK, or DEADLINE_EXCEEDED / CANCELLED when
    // the call died while it waited: then `run` must only finish the call with that status.
    // `queue_wait` is the time between Submit and the worker taking the task.
    absl::AnyInvocable<void(const absl::Status& admission, absl::Duration queue_wait)> run;
  };

  explicit Scheduler(SchedulerOptions options);
  // Shuts down (draining) if Shutdown was not called.
  ~Scheduler();

  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues `task`. RESOURCE_EXHAUSTED when `max_queue` tasks are already waiting; UNAVAILABLE
  // after Shutdown began. On error the task is dropped without its `run` being called: the
  // caller finishes the call with the returned status.
  [[nodiscard]] absl::Status Submit(Task task);

  // Runs `task` on the calling thread, now, when nothing is queued and a worker is idle: a
  // small request computes in less time than the hand-off to a worker takes (waking a thread
  // on an idle server costs ~100 µs, measured on the H200 host in docs/PERF_NOTES.md v8).
  // While it runs the task counts as a busy worker, so inline and queued computations
  // together never exceed `workers`. Returns false, without running or consuming the task,
  // otherwise (the caller Submits it).
  bool RunInlineIfIdle(Task& task);

  // Refuses new tasks, runs every task already queued, then joins the workers. Idempotent.
  void Shutdown();

  int workers() const { return static_cast<int>(threads_.size()); }
  int max_queue() const { return options_.max_queue; }
  int64_t queue_depth() const;

 private:
  struct Queued {
    Task task;
    absl::Time enqueued;
  };

  void WorkerLoop();
  // Runs a task taken from the queue or inline: admission checks, then `run`.
  static void Run(Task& task, absl::Duration wait);

  SchedulerOptions options_;
  mutable absl::Mutex mu_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int busy_ ABSL_GUARDED_BY(mu_) = 0;  // tasks running, on workers or inline
  absl::Mutex join_mu_;  // serializes Shutdown's joins (it may be called from two threads)
  std::vector<std::thread> threads_ ABSL_PT_GUARDED_BY(join_mu_);
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_SCHEDULER_H_
