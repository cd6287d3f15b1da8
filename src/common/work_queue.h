// WorkQueue: one named thread running posted tasks in order, plus an optional
// periodic task. For slow control-plane work (model loads, repository polls,
// deferred destruction) that must never run on an io or inference thread.
//
// Thread safety: Post/SetPeriodic/Stop are thread-safe. Tasks run one at a
// time on the queue's thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "absl/functional/any_invocable.h"

namespace outpost {

class WorkQueue {
 public:
  using Task = absl::AnyInvocable<void() &&>;

  explicit WorkQueue(std::string name);
  // Stop(): runs what is queued, then joins.
  ~WorkQueue();

  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Queues `task`. Returns false (and drops the task) once stopped.
  bool Post(Task task);
  // Runs `task` every `interval` on the queue's thread (replacing any earlier
  // periodic task); interval <= 0 turns it off.
  void SetPeriodic(std::chrono::milliseconds interval, absl::AnyInvocable<void()> task);
  // Runs every queued task, then ends the thread. Idempotent. Must not be
  // called from a task.
  void Stop();
  // True when called from the queue's own thread.
  bool OnQueueThread() const { return std::this_thread::get_id() == thread_.get_id(); }

 private:
  void Run();

  const std::string name_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> tasks_;                      // guarded by mu_
  absl::AnyInvocable<void()> periodic_;         // guarded by mu_
  std::chrono::milliseconds interval_{0};       // guarded by mu_
  std::chrono::steady_clock::time_point next_;  // guarded by mu_
  bool stopping_ = false;                       // guarded by mu_
  std::thread thread_;
};

}  // namespace outpost
