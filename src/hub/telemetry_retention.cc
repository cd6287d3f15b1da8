#include "hub/telemetry_retention.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace outpost::hub {
namespace {

int64_t Ms(std::chrono::hours h) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(h).count();
}

int64_t RoundUp(int64_t value, int64_t multiple) {
  return std::max<int64_t>(1, (value + multiple - 1) / multiple) * multiple;
}

}  // namespace

const std::vector<int64_t>& RollupResolutions() {
  static const std::vector<int64_t> kResolutions = {kRollup5mMs, kRollup1hMs};
  return kResolutions;
}

absl::StatusOr<MaintenanceResult> RunTelemetryMaintenance(Store& store,
                                                          const TelemetryRetention& retention,
                                                          TimeMs now) {
  MaintenanceResult result;
  ASSIGN_OR_RETURN(result.folded,
                   store.RollUpTelemetry(RollupResolutions(), now - retention.settle.count()));
  ASSIGN_OR_RETURN(TimeMs watermark, store.RollupWatermark());
  ASSIGN_OR_RETURN(result.raw_deleted,
                   store.DeleteTelemetryBefore(std::min(now - Ms(retention.raw), watermark)));
  ASSIGN_OR_RETURN(int64_t five,
                   store.DeleteRollupsBefore(kRollup5mMs, now - Ms(retention.rollup_5m)));
  ASSIGN_OR_RETURN(int64_t hour,
                   store.DeleteRollupsBefore(kRollup1hMs, now - Ms(retention.rollup_1h)));
  result.rollups_deleted = five + hour;
  ASSIGN_OR_RETURN(result.alerts_deleted,
                   store.DeleteAlertsResolvedBefore(now - Ms(retention.resolved_alerts)));
  return result;
}

int64_t ChooseResolution(const TelemetryRetention& retention, TimeMs now, TimeMs from,
                         int64_t* step_ms) {
  // Raw samples are the freshest (rollups trail by a pass), and SQL
  // aggregates them to any step: use them while they cover the range.
  if (from >= now - Ms(retention.raw)) return 0;
  if (*step_ms < kRollup1hMs && from >= now - Ms(retention.rollup_5m)) {
    *step_ms = RoundUp(*step_ms, kRollup5mMs);
    return kRollup5mMs;
  }
  *step_ms = RoundUp(*step_ms, kRollup1hMs);
  return kRollup1hMs;
}

TelemetryMaintainer::TelemetryMaintainer(Store& store, TelemetryRetention retention, Clock clock)
    : store_(store), retention_(retention), clock_(std::move(clock)) {}

TelemetryMaintainer::~TelemetryMaintainer() { Stop(); }

void TelemetryMaintainer::Start(std::chrono::milliseconds interval) {
  if (thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stopping_ = false;
  }
  thread_ = std::thread([this, interval] {
    std::unique_lock lock(mu_);
    while (!stopping_) {
      lock.unlock();
      absl::StatusOr<MaintenanceResult> result =
          RunTelemetryMaintenance(store_, retention_, clock_());
      if (!result.ok()) {
        spdlog::warn("telemetry: rollup/retention pass failed: {}", MessageOf(result.status()));
      } else if (result->raw_deleted + result->rollups_deleted + result->alerts_deleted > 0) {
        spdlog::info(
            "telemetry: folded {} samples; expired {} samples, {} rollup buckets, {} "
            "resolved alerts",
            result->folded, result->raw_deleted, result->rollups_deleted, result->alerts_deleted);
      }
      lock.lock();
      cv_.wait_for(lock, interval, [this] { return stopping_; });
    }
  });
}

void TelemetryMaintainer::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace outpost::hub
