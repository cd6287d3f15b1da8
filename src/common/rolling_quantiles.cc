#include "common/rolling_quantiles.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace outpost {
namespace {

constexpr double kMinValue = 1e-6;  // 1 µs: bucket 0 holds everything below
constexpr double kGrowth = 1.02;    // each bucket 2% wider than the last
const double kLogGrowth = std::log(kGrowth);

}  // namespace

RollingQuantiles::RollingQuantiles(std::chrono::seconds window, Clock clock)
    : slot_length_(std::chrono::duration_cast<std::chrono::nanoseconds>(window) / (kSlots - 1)),
      clock_(std::move(clock)) {}

int64_t RollingQuantiles::EpochNow() const { return clock_().time_since_epoch() / slot_length_; }

int RollingQuantiles::BucketOf(double seconds) {
  if (!(seconds > kMinValue)) return 0;  // also NaN
  double index = std::log(seconds / kMinValue) / kLogGrowth;
  return static_cast<int>(std::min<double>(index, kBuckets - 1));
}

double RollingQuantiles::BucketValue(int bucket) {
  // Geometric middle of the bucket [min*g^b, min*g^(b+1)).
  return kMinValue * std::pow(kGrowth, bucket + 0.5);
}

void RollingQuantiles::Observe(double seconds) {
  const int64_t epoch = EpochNow();
  Slot& slot = slots_[static_cast<size_t>(epoch % kSlots)];
  if (slot.epoch.load(std::memory_order_acquire) != epoch) {
    // The slot still holds a period that has left the window: clear it once.
    std::lock_guard<std::mutex> lock(rotate_mu_);
    if (slot.epoch.load(std::memory_order_relaxed) != epoch) {
      for (auto& count : slot.counts) count.store(0, std::memory_order_relaxed);
      slot.epoch.store(epoch, std::memory_order_release);
    }
  }
  slot.counts[static_cast<size_t>(BucketOf(seconds))].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  double sum = sum_.load(std::memory_order_relaxed);
  while (!sum_.compare_exchange_weak(sum, sum + seconds, std::memory_order_relaxed)) {
  }
}

double RollingQuantiles::Quantile(double q) const {
  const int64_t epoch = EpochNow();
  std::array<uint64_t, kBuckets> merged{};
  uint64_t total = 0;
  for (const Slot& slot : slots_) {
    int64_t slot_epoch = slot.epoch.load(std::memory_order_acquire);
    // The current slot and the kSlots - 2 before it: between 4/5 and all of `window`.
    if (slot_epoch < 0 || slot_epoch > epoch || epoch - slot_epoch >= kSlots - 1) continue;
    for (int b = 0; b < kBuckets; ++b) {
      uint64_t c = slot.counts[static_cast<size_t>(b)].load(std::memory_order_relaxed);
      merged[static_cast<size_t>(b)] += c;
      total += c;
    }
  }
  if (total == 0) return std::numeric_limits<double>::quiet_NaN();
  // Nearest rank, as a client computing the quantile from the raw values would.
  uint64_t rank = static_cast<uint64_t>(std::ceil(std::clamp(q, 0.0, 1.0) * total));
  rank = std::max<uint64_t>(rank, 1);
  uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += merged[static_cast<size_t>(b)];
    if (seen >= rank) return BucketValue(b);
  }
  return BucketValue(kBuckets - 1);
}

}  // namespace outpost
