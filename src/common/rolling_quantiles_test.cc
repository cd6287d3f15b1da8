#include "common/rolling_quantiles.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <thread>
#include <vector>

namespace outpost {
namespace {

using std::chrono::seconds;
using std::chrono::steady_clock;

class FakeClock {
 public:
  steady_clock::time_point Now() const { return now_; }
  void Advance(std::chrono::nanoseconds d) { now_ += d; }

 private:
  steady_clock::time_point now_ = steady_clock::time_point(std::chrono::hours(1000));
};

TEST(RollingQuantilesTest, EmptyWindowIsNaN) {
  RollingQuantiles q;
  EXPECT_TRUE(std::isnan(q.Quantile(0.5)));
  EXPECT_EQ(q.Count(), 0u);
}

TEST(RollingQuantilesTest, QuantilesWithinTwoPercentOfExact) {
  RollingQuantiles q;
  std::mt19937 rng(7);
  std::lognormal_distribution<double> latency(std::log(0.005), 0.8);
  std::vector<double> values;
  for (int i = 0; i < 100000; ++i) {
    values.push_back(latency(rng));
    q.Observe(values.back());
  }
  std::sort(values.begin(), values.end());
  for (double p : {0.5, 0.95, 0.99}) {
    double exact = values[static_cast<size_t>(std::ceil(p * values.size())) - 1];
    EXPECT_NEAR(q.Quantile(p) / exact, 1.0, 0.02) << "p" << p;
  }
  EXPECT_EQ(q.Count(), 100000u);
  double sum = 0;
  for (double v : values) sum += v;
  EXPECT_NEAR(q.Sum(), sum, sum * 1e-9);
}

TEST(RollingQuantilesTest, OldObservationsLeaveTheWindow) {
  FakeClock clock;
  RollingQuantiles q(seconds(300), [&clock] { return clock.Now(); });
  for (int i = 0; i < 1000; ++i) q.Observe(1.0);  // a slow period
  clock.Advance(seconds(200));
  for (int i = 0; i < 10; ++i) q.Observe(0.001);
  EXPECT_NEAR(q.Quantile(0.5), 1.0, 0.02);  // still inside five minutes
  clock.Advance(seconds(301));
  for (int i = 0; i < 10; ++i) q.Observe(0.001);
  EXPECT_NEAR(q.Quantile(0.99), 0.001, 0.00002);  // the slow period is gone
  EXPECT_EQ(q.Count(), 1020u);                    // totals stay cumulative
  clock.Advance(seconds(3600));
  EXPECT_TRUE(std::isnan(q.Quantile(0.5)));
}

TEST(RollingQuantilesTest, ExtremesAreClampedNotLost) {
  RollingQuantiles q;
  q.Observe(0);
  q.Observe(-1);
  q.Observe(NAN);
  q.Observe(1e12);
  EXPECT_EQ(q.Count(), 4u);
  EXPECT_LE(q.Quantile(0.25), 1.1e-6);
  EXPECT_GT(q.Quantile(1.0), 600);  // the top bucket starts at ~10 minutes
}

TEST(RollingQuantilesTest, ConcurrentObserversLoseNothing) {
  RollingQuantiles q;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&q] {
      for (int i = 0; i < 50000; ++i) q.Observe(0.002);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(q.Count(), 200000u);
  EXPECT_NEAR(q.Quantile(0.5), 0.002, 0.00004);
}

}  // namespace
}  // namespace outpost
