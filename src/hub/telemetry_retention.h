// Telemetry downsampling and retention (docs/hub.md "Telemetry"): raw
// samples are kept for hours, 5-minute and 1-hour rollups
// (count/sum/min/max per device, metric, labels, release and model
// version) for weeks, resolved alerts for a month. A background task folds
// new samples into the rollups (Store::RollUpTelemetry, incremental: each
// sample once, on any number of hub processes) and then deletes what is
// past its retention.
//
// Thread safety: Start/Stop from one thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "common/status.h"
#include "hub/store.h"

namespace outpost::hub {

inline constexpr int64_t kRollup5mMs = 5 * 60 * 1000;
inline constexpr int64_t kRollup1hMs = 60 * 60 * 1000;

struct TelemetryRetention {
  std::chrono::hours raw{48};
  std::chrono::hours rollup_5m{24 * 14};
  std::chrono::hours rollup_1h{24 * 90};
  std::chrono::hours resolved_alerts{24 * 30};
  // Samples are folded once they are this old (hub time): a batch whose
  // transaction is still open when the task passes is not skipped.
  std::chrono::milliseconds settle{60'000};
};

// The rollup resolutions kept, finest first.
const std::vector<int64_t>& RollupResolutions();

struct MaintenanceResult {
  int64_t folded = 0;  // samples folded into rollups
  int64_t raw_deleted = 0;
  int64_t rollups_deleted = 0;
  int64_t alerts_deleted = 0;
};

// One pass: fold, then delete. Raw samples are deleted only below the
// rollup watermark, so none is lost to the rollups.
absl::StatusOr<MaintenanceResult> RunTelemetryMaintenance(Store& store,
                                                          const TelemetryRetention& retention,
                                                          TimeMs now);

// Where a series query should read: raw samples while the range starts
// inside the raw retention, else the 5-minute rollup when it covers `from`
// and the step is under an hour, else the 1-hour rollup; the step is
// rounded up to a multiple of the rollup's resolution. Returns the resolution (0 = raw) and sets
// *step_ms.
int64_t ChooseResolution(const TelemetryRetention& retention, TimeMs now, TimeMs from,
                         int64_t* step_ms);

class TelemetryMaintainer {
 public:
  using Clock = std::function<TimeMs()>;
  TelemetryMaintainer(Store& store, TelemetryRetention retention, Clock clock);
  ~TelemetryMaintainer();  // Stop()
  void Start(std::chrono::milliseconds interval);
  void Stop();
  const TelemetryRetention& retention() const { return retention_; }

 private:
  Store& store_;
  const TelemetryRetention retention_;
  Clock clock_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace outpost::hub
