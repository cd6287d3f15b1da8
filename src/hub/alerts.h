// Alerts the hub evaluates on its own data (docs/alerts.md): device
// offline, telemetry stale, overheating, inference error rate and p95
// latency over the SLO, error-budget burn (multiwindow, fast and slow, as in
// the Google SRE workbook), drift (telemetry metric drift_psi), update
// failures and clock skew.
//
// EvaluateAlerts() reads the store and returns what is true now;
// Store::RecordAlertEvaluation turns that into persisted episodes
// (firing -> resolved) and says which changed; the AlertEngine does both on
// a timer and hands the changes to a WebhookNotifier (webhook.h).
//
// Telemetry-based rules read samples by hub time (immune to device clocks);
// a heartbeat comes every 10 minutes by default, so no window is shorter
// than 15 minutes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/status.h"
#include "hub/store.h"
#include "hub/webhook.h"

namespace outpost::hub {

// A multiwindow burn-rate condition: the error budget burns faster than
// `rate` times the sustainable pace over both the long and the short
// window (the short one makes the alert resolve soon after a fix).
struct BurnWindow {
  int64_t long_s = 3600;
  int64_t short_s = 900;
  double rate = 14.4;
};

// Thresholds, with the defaults documented in docs/alerts.md.
struct AlertRules {
  int64_t offline_after_s = 600;            // device_offline
  int64_t stale_after_s = 1800;             // telemetry_stale (3 missed heartbeats)
  int64_t window_s = 900;                   // look-back of the "newest sample" rules
  double temperature_max_c = 85;            // temperature_high
  double error_rate_max = 0.05;             // error_rate_high
  int64_t min_requests = 20;                // below this in a window, rates say nothing
  double latency_p95_max_ms = 250;          // latency_p95_high
  double slo_availability = 0.995;          // error budget = 1 - this
  BurnWindow burn_fast{3600, 900, 14.4};    // 2% of a 30-day budget in an hour
  BurnWindow burn_slow{21600, 3600, 6};     // 5% of it in six hours
  double drift_psi_max = 0.25;              // drift_high
  int64_t update_failure_window_s = 86400;  // update_failed stays this long
  int64_t clock_skew_max_ms = 60'000;       // clock_skew
  std::set<std::string> disabled;           // rule names
};

struct AlertRuleInfo {
  std::string_view name;
  std::string_view severity;
  std::string_view description;
};
// Every rule, in evaluation order.
const std::vector<AlertRuleInfo>& AlertRuleCatalog();

// Parses an alert configuration (YAML mapping; docs/alerts.md lists the
// keys; durations as seconds or "90s", "10m", "6h", "1d"). Missing keys
// keep the defaults. Errors: InvalidArgument naming the key (unknown keys
// too: a typo must not silently keep a default).
absl::StatusOr<AlertRules> ParseAlertRules(std::string_view yaml, std::string_view source);
nlohmann::json AlertRulesJson(const AlertRules& rules);

// What is wrong now, one observation per (rule, device). Reads devices,
// their last telemetry and the samples of the windows above.
absl::StatusOr<std::vector<AlertObservation>> EvaluateAlerts(Store& store, const AlertRules& rules,
                                                             TimeMs now);

nlohmann::json AlertJson(const Alert& alert);

// Evaluates the rules every `interval` on its own thread, records the
// result and passes alerts that changed state to the notifier.
// Thread safety: Start/Stop from one thread; counters from any.
class AlertEngine {
 public:
  using Clock = std::function<TimeMs()>;
  // `notifier` may be null (no webhook). Borrows `store`.
  AlertEngine(Store& store, AlertRules rules, std::unique_ptr<WebhookNotifier> notifier,
              Clock clock);
  ~AlertEngine();  // Stop()

  void Start(std::chrono::milliseconds interval);
  void Stop();
  // One evaluation, now (the loop calls this; so do tests).
  absl::Status EvaluateOnce();

  const AlertRules& rules() const { return rules_; }
  WebhookNotifier* notifier() { return notifier_.get(); }
  int64_t evaluations() const;
  int64_t failed_evaluations() const;

 private:
  void Loop(std::chrono::milliseconds interval);

  Store& store_;
  const AlertRules rules_;
  std::unique_ptr<WebhookNotifier> notifier_;
  Clock clock_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  int64_t evaluations_ = 0;
  int64_t failures_ = 0;
  std::thread thread_;
};

}  // namespace outpost::hub
