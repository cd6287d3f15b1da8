#include "common/process_metrics.h"

#include <gtest/gtest.h>
#include <prometheus/metric_family.h>

#include <algorithm>
#include <ctime>
#include <vector>

namespace outpost {
namespace {

TEST(ProcessMetricsTest, ReadsPlausibleValues) {
  ProcessStats before = ReadProcessStats();
  EXPECT_GT(before.rss_bytes, 1 << 20);
  EXPECT_GE(before.virtual_bytes, before.rss_bytes);
  EXPECT_GE(before.threads, 1);
  EXPECT_GE(before.open_fds, 3);
  double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(before.start_time_seconds, now + 2);
  EXPECT_GT(before.start_time_seconds, now - 3600);

  // Burn some CPU and touch memory: the readings must move.
  std::vector<char> block(64 << 20, 1);
  volatile double sink = 0;
  for (int i = 0; i < 30'000'000; ++i) sink = sink + i * 0.5;
  ProcessStats after = ReadProcessStats();
  EXPECT_GT(after.cpu_seconds, before.cpu_seconds);
  EXPECT_GT(after.rss_bytes, before.rss_bytes + (32 << 20));
  EXPECT_EQ(block[1000], 1);
}

TEST(ProcessMetricsTest, CollectorExposesStandardNames) {
  auto families = MakeProcessCollector()->Collect();
  std::vector<std::string> names;
  for (const auto& f : families) names.push_back(f.name);
  EXPECT_NE(std::find(names.begin(), names.end(), "process_resident_memory_bytes"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "process_cpu_seconds_total"), names.end());
}

}  // namespace
}  // namespace outpost
