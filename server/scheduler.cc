#include "server/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace quantd::server {

Scheduler::Scheduler(SchedulerOptions options) : options_(std::move(options)) {
  int workers = options_.workers;
  if (workers <= 0) workers = static_cast<int>(std::thread::hardware_concurrency());
  workers = std::max(workers, 1);
  options_.max_queue = std::max(options_.max_queue, 0);
  threads_.reserve(static_cast<size_t>(workers));
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { WorkerLoop(); });
}

Scheduler::~Scheduler() { Shutdown(); }

absl::Status Scheduler::Submit(Task task) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      return absl::UnavailableError("the server is shutting down; retry on another replica");
    }
    if (static_cast<int64_t>(queue_.size()) >= options_.max_queue) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the request queue is full (", options_.max_queue, " requests waiting for ",
                       threads_.size(), " workers); back off and retry"));
    }
    queue_.push_back(Queued{std::move(task), absl::Now()});
    // Reported under the lock so that concurrent updates reach the gauge in order.
    if (options_.on_queue_depth) options_.on_queue_depth(static_cast<int64_t>(queue_.size()));
  }
  return absl::OkStatus();
}

bool Scheduler::RunInlineIfIdle(Task& task) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || !queue_.empty() || busy_ >= static_cast<int>(threads_.size())) return false;
    ++busy_;
  }
  Run(task, absl::ZeroDuration());
  absl::MutexLock lock(&mu_);
  --busy_;
  return true;
}

int64_t Scheduler::queue_depth() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size());
}

void Scheduler::WorkerLoop() {
  for (;;) {
    Queued item;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Scheduler* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return self->stopping_ || !self->queue_.empty();
          },
          this));
      // Draining: a stopping scheduler still runs what it accepted.
      if (queue_.empty()) return;
      item = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
      if (options_.on_queue_depth) options_.on_queue_depth(static_cast<int64_t>(queue_.size()));
    }
    if (options_.before_task_for_testing) options_.before_task_for_testing();
    Run(item.task, absl::Now() - item.enqueued);
    absl::MutexLock lock(&mu_);
    --busy_;
  }
}

void Scheduler::Run(Task& task, absl::Duration wait) {
  // The deadline first: gRPC also marks a call whose deadline passed as cancelled, and
  // DEADLINE_EXCEEDED is the more useful answer (and metric) for it.
  absl::Status admission;
  if (task.deadline != Clock::time_point::max() && Clock::now() >= task.deadline) {
    admission = absl::DeadlineExceededError(absl::StrCat(
        "the deadline passed while the request waited in the queue (", absl::FormatDuration(wait),
        "); allow more time or retry when the server is less busy"));
  } else if (task.is_cancelled && task.is_cancelled()) {
    admission = absl::CancelledError("the call was cancelled while it waited in the queue");
  }
  task.run(admission, wait);
}

void Scheduler::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  absl::MutexLock lock(&join_mu_);
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
}

}  // namespace quantd::server
