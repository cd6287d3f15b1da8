// Staged rollouts: a release goes to the devices a selector picks, in
// waves (e.g. 1 device, 10%, 100%), each wave soaking before the next, and
// halts itself — rolling the wave's devices back to what they ran before —
// when a gate is breached (docs/rollouts.md).
//
// The plan, fixed at creation (Rollout::waves_json):
//   {"waves": [1, "10%", "100%"],   cumulative device counts or percentages
//    "soak_s": 60,                  after a wave's last commit
//    "deadline_s": 900,             a device not committed by then has failed
//    "maintenance_window": {"start": "02:00", "end": "04:00"},  local time
//    "gates": {"max_failures": 0, "max_failure_rate": 0.0,
//              "p95_regression_pct": 50, "p95_min_delta_ms": 1.0,
//              "max_error_rate": 0.05, "max_drift_psi": 0.25,
//              "max_offline": 0, "min_samples": 2}}
// Measured values and decisions go to Rollout::gates_json:
//   {"previous": {"<device>": "<release or empty>"}, "failures": N,
//    "halt_reason": "...", "history": [{"time": ms, "event": "..."}]}
//
// Every step runs under Store::WithRolloutLock, so several hub replicas may
// run engines on one database and a step is applied once.
//
// Thread safety: Start/Stop from one thread; the engine runs on its own.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <vector>

#include "common/status.h"
#include "hub/store.h"

namespace outpost::hub {

class HubContext;

struct RolloutPlan {
  std::vector<nlohmann::json> waves;  // ints or "N%" strings
  int64_t soak_s = 60;
  int64_t deadline_s = 900;
  int64_t max_failures = 0;
  double max_failure_rate = 0.0;
  // Telemetry gates, on the wave's committed devices after their commit,
  // against the same devices' p95 before the rollout began (or, without
  // that, the rest of the fleet's recent p95). 0 turns a gate off.
  double p95_regression_pct = 50;
  // ... and by at least this much: sub-millisecond jitter is not a regression.
  double p95_min_delta_ms = 1.0;
  double max_error_rate = 0.05;
  // Output drift: the wave's median population stability index of the
  // model's output scores against the baseline its bundle ships
  // (telemetry `drift_psi`). 0.25 is the usual "significant shift" line.
  double max_drift_psi = 0.25;
  // Devices that committed the release and then fell silent (not seen for
  // kOnlineWindowMs) before the rollout completed: more than this halts.
  int64_t max_offline = 0;
  bool offline_gate = true;  // false: "max_offline": null
  int64_t min_samples = 2;   // post-commit samples before a telemetry gate judges
  // Devices download at once but install only inside this daily window of
  // their own local time ("HH:MM" or "HH:MM:SS"; end before start wraps
  // past midnight). Empty: any time. The deadline still applies: size it
  // to cover a window.
  std::string window_start;
  std::string window_end;
};

// What the telemetry gates measured for a wave (nullopt = not enough data).
struct GateMeasurements {
  std::optional<double> baseline_p95_ms;
  std::optional<double> wave_p95_ms;
  std::optional<double> wave_error_rate;
  std::optional<double> wave_drift_psi;
  int64_t drift_samples = 0;
  // Devices that committed this rollout's release and have not been seen
  // since kOnlineWindowMs (ids, sorted).
  std::vector<std::string> offline_after_commit;
  int64_t samples = 0;
};

// Parses and checks a plan (InvalidArgument naming the field). Missing
// fields take the defaults above; waves default to [1, "10%", "100%"].
absl::StatusOr<RolloutPlan> ParseRolloutPlan(const nlohmann::json& j);
nlohmann::json PlanJson(const RolloutPlan& plan);

// Assigns `device_ids` (sorted) to waves: wave i holds devices up to its
// cumulative count (a percentage rounds up, at least one device per wave
// while devices remain). The last wave always reaches every device.
std::vector<RolloutDevice> AssignWaves(const std::vector<std::string>& device_ids,
                                       const RolloutPlan& plan);

class RolloutEngine {
 public:
  explicit RolloutEngine(HubContext& hub) : hub_(hub) {}
  ~RolloutEngine() { Stop(); }

  void Start(std::chrono::milliseconds tick);
  void Stop();
  // One pass over every active rollout (tests call it directly).
  void Tick();
  // Operator actions. Errors: NotFound, FailedPrecondition (e.g. resuming
  // a completed rollout).
  absl::Status Pause(int64_t id);
  absl::Status Resume(int64_t id);
  absl::Status Abort(int64_t id);
  // Halts and sends every device that took the release back to its previous one.
  absl::Status Rollback(int64_t id, std::string_view reason);

 private:
  absl::Status Step(int64_t id);
  GateMeasurements Measure(const Rollout& rollout);

  HubContext& hub_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace outpost::hub
