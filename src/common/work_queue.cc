#include "common/work_queue.h"

#include <pthread.h>

namespace outpost {

WorkQueue::WorkQueue(std::string name) : name_(std::move(name)) {
  thread_ = std::thread([this] { Run(); });
}

WorkQueue::~WorkQueue() { Stop(); }

bool WorkQueue::Post(Task task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
  return true;
}

void WorkQueue::SetPeriodic(std::chrono::milliseconds interval, absl::AnyInvocable<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    interval_ = interval;
    periodic_ = interval.count() > 0 ? std::move(task) : nullptr;
    next_ = std::chrono::steady_clock::now() + interval;
  }
  cv_.notify_one();
}

void WorkQueue::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void WorkQueue::Run() {
  pthread_setname_np(pthread_self(), name_.substr(0, 15).c_str());
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (!tasks_.empty()) {
      Task task = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      std::move(task)();
      lock.lock();
      continue;
    }
    if (stopping_) return;
    if (periodic_) {
      if (std::chrono::steady_clock::now() >= next_) {
        next_ = std::chrono::steady_clock::now() + interval_;
        lock.unlock();
        periodic_();
        lock.lock();
        continue;
      }
      cv_.wait_until(lock, next_);
    } else {
      cv_.wait(lock);
    }
  }
}

}  // namespace outpost
