#include "common/work_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <vector>

namespace outpost {
namespace {

TEST(WorkQueueTest, RunsTasksInOrderOnItsThread) {
  WorkQueue queue("test-queue");
  std::vector<int> order;
  std::promise<void> done;
  for (int i = 0; i < 100; ++i) {
    queue.Post([&order, &queue, i] {
      EXPECT_TRUE(queue.OnQueueThread());
      order.push_back(i);
    });
  }
  queue.Post([&done] { done.set_value(); });
  done.get_future().wait();
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
  EXPECT_FALSE(queue.OnQueueThread());
}

TEST(WorkQueueTest, StopRunsQueuedTasksThenRefusesNewOnes) {
  std::atomic<int> ran{0};
  WorkQueue queue("test-queue");
  for (int i = 0; i < 50; ++i) queue.Post([&ran] { ran++; });
  queue.Stop();
  EXPECT_EQ(ran.load(), 50);
  EXPECT_FALSE(queue.Post([&ran] { ran++; }));
  queue.Stop();  // idempotent
  EXPECT_EQ(ran.load(), 50);
}

TEST(WorkQueueTest, PeriodicTaskRepeatsUntilTurnedOff) {
  WorkQueue queue("test-queue");
  std::atomic<int> ticks{0};
  queue.SetPeriodic(std::chrono::milliseconds(5), [&ticks] { ticks++; });
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (ticks.load() < 5 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_GE(ticks.load(), 5);
  queue.SetPeriodic(std::chrono::milliseconds(0), nullptr);
  std::promise<void> flushed;
  queue.Post([&flushed] { flushed.set_value(); });
  flushed.get_future().wait();
  int after = ticks.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(ticks.load(), after);
}

}  // namespace
}  // namespace outpost
