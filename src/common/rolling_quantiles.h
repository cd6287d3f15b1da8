// RollingQuantiles: latency quantiles over a rolling time window, cheap
// enough for the inference path.
//
// prometheus-cpp's Summary keeps a CKMS stream per age bucket and inserts
// into every one under a mutex on each observation: several microseconds,
// more than a small model's whole inference. Here an observation is one
// logarithm and one relaxed atomic increment into a log-spaced histogram
// (2% relative resolution from 1 µs to ~10 minutes, clamped beyond);
// quantiles are computed only when someone asks (a scrape), from the slots
// of the last `window`.
//
// Thread safety: Observe() and Quantile() may be called concurrently from
// any threads. The clock is injectable for tests.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>

namespace outpost {

class RollingQuantiles {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  // `window` is divided into `kSlots - 1` whole slots plus the current one.
  explicit RollingQuantiles(
      std::chrono::seconds window = std::chrono::minutes(5),
      Clock clock = [] { return std::chrono::steady_clock::now(); });

  RollingQuantiles(const RollingQuantiles&) = delete;
  RollingQuantiles& operator=(const RollingQuantiles&) = delete;

  void Observe(double seconds);
  // The q-quantile (0..1) of the observations in the window, within 2%;
  // NaN when the window holds none (as Prometheus expects).
  double Quantile(double q) const;
  // Lifetime totals (Prometheus summaries' _sum and _count are cumulative).
  double Sum() const { return sum_.load(std::memory_order_relaxed); }
  uint64_t Count() const { return count_.load(std::memory_order_relaxed); }

 private:
  static constexpr int kSlots = 6;
  static constexpr int kBuckets = 1024;

  struct Slot {
    std::atomic<int64_t> epoch{-1};  // which slot-period these counts belong to
    std::array<std::atomic<uint32_t>, kBuckets> counts{};
  };

  int64_t EpochNow() const;
  static int BucketOf(double seconds);
  static double BucketValue(int bucket);

  const std::chrono::nanoseconds slot_length_;
  const Clock clock_;
  std::array<Slot, kSlots> slots_;
  std::mutex rotate_mu_;  // taken once per slot period, to clear a slot
  std::atomic<double> sum_{0};
  std::atomic<uint64_t> count_{0};
};

}  // namespace outpost
