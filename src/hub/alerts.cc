#include "hub/alerts.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <tuple>

#include "hub/config_merge.h"

namespace outpost::hub {
namespace {

using json = nlohmann::json;

constexpr int64_t kSecond = 1000;

// The agent's heartbeat metric names (docs/agent.md).
constexpr std::string_view kTemperature = "temperature_c";
constexpr std::string_view kErrorRate = "error_rate";
constexpr std::string_view kRequests = "requests";
constexpr std::string_view kLatencyP95 = "latency_p95_ms";
constexpr std::string_view kDriftPsi = "drift_psi";

// Enough for a 6-hour window of heartbeats from a large fleet; beyond it
// the oldest samples are left out (logged).
constexpr int64_t kMaxWindowSamples = 2'000'000;

absl::StatusOr<int64_t> DurationSeconds(const json& value, std::string_view key) {
  if (value.is_number()) {
    double s = value.get<double>();
    if (!std::isfinite(s) || s <= 0) {
      return absl::InvalidArgumentError(StrCat("'", key, "': a duration > 0"));
    }
    return static_cast<int64_t>(std::ceil(s));
  }
  if (!value.is_string()) {
    return absl::InvalidArgumentError(
        StrCat("'", key, "': a duration (seconds, or like \"90s\", \"10m\", \"6h\", \"1d\")"));
  }
  std::string text = value.get<std::string>();
  int64_t number = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  std::string_view unit(end, text.data() + text.size() - end);
  int64_t scale = 0;
  if (unit.empty() || unit == "s") scale = 1;
  if (unit == "m") scale = 60;
  if (unit == "h") scale = 3600;
  if (unit == "d") scale = 86400;
  if (ec != std::errc() || number <= 0 || scale == 0) {
    return absl::InvalidArgumentError(StrCat("'", key, "': \"", text.substr(0, 40),
                                             "\" is not a duration like \"90s\", \"10m\", "
                                             "\"6h\", \"1d\""));
  }
  return number * scale;
}

absl::StatusOr<double> Number(const json& value, std::string_view key, double min, double max) {
  if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() < min ||
      value.get<double>() > max) {
    return absl::InvalidArgumentError(StrCat("'", key, "': a number in [", min, ", ", max, "]"));
  }
  return value.get<double>();
}

absl::Status ParseBurn(const json& value, std::string_view key, BurnWindow* burn) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(StrCat("'", key, "': a mapping with long, short, rate"));
  }
  for (const auto& [k, v] : value.items()) {
    std::string field = StrCat(key, ".", k);
    if (k == "long") {
      ASSIGN_OR_RETURN(burn->long_s, DurationSeconds(v, field));
    } else if (k == "short") {
      ASSIGN_OR_RETURN(burn->short_s, DurationSeconds(v, field));
    } else if (k == "rate") {
      ASSIGN_OR_RETURN(burn->rate, Number(v, field, 0.001, 1e6));
    } else {
      return absl::InvalidArgumentError(
          StrCat("unknown key '", field, "' (expected long, short, rate)"));
    }
  }
  if (burn->short_s > burn->long_s) {
    return absl::InvalidArgumentError(StrCat("'", key, "': short must not exceed long"));
  }
  return absl::OkStatus();
}

std::string Format(double value, int decimals = 1) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.*f", decimals, value);
  return text;
}

// Sample streams by device, newest last (QueryTelemetry orders by hub time).
using ByDevice = std::map<std::string, std::vector<StoredSample>>;

absl::StatusOr<ByDevice> SamplesSince(Store& store, std::string_view metric, TimeMs from,
                                      TimeMs now) {
  TelemetryQuery q;
  q.metric = std::string(metric);
  q.from = from;
  q.to = now + 1;
  q.by_hub_time = true;
  q.limit = kMaxWindowSamples;
  ASSIGN_OR_RETURN(std::vector<StoredSample> samples, store.QueryTelemetry(q));
  if (static_cast<int64_t>(samples.size()) == kMaxWindowSamples) {
    spdlog::warn("alerts: {} has more than {} samples in its window; the newest are left out",
                 metric, kMaxWindowSamples);
  }
  ByDevice out;
  for (StoredSample& s : samples) out[s.device_id].push_back(std::move(s));
  return out;
}

// The device's newest value per label set, then the largest of those.
std::optional<double> NewestMax(const std::vector<StoredSample>& samples) {
  std::map<std::string_view, const StoredSample*> newest;
  for (const StoredSample& s : samples) {
    const StoredSample*& slot = newest[s.labels_json];
    if (slot == nullptr ||
        std::tie(s.hub_time, s.device_time) >= std::tie(slot->hub_time, slot->device_time)) {
      slot = &s;
    }
  }
  std::optional<double> out;
  for (const auto& [labels, s] : newest) out = std::max(out.value_or(s->value), s->value);
  return out;
}

// Failed and total requests of a device's heartbeats received since
// `from`: each heartbeat's error_rate weighted by its request count (they
// share the heartbeat's device time).
struct Requests {
  double total = 0;
  double failed = 0;
  double ratio() const { return total > 0 ? failed / total : 0; }
};
Requests RequestsSince(const std::vector<StoredSample>& rates,
                       const std::vector<StoredSample>& requests, TimeMs from) {
  std::map<TimeMs, double> count_at;
  for (const StoredSample& r : requests) {
    if (r.hub_time >= from) count_at[r.device_time] += r.value;
  }
  Requests out;
  for (const StoredSample& e : rates) {
    if (e.hub_time < from) continue;
    auto it = count_at.find(e.device_time);
    if (it == count_at.end()) continue;
    out.total += it->second;
    out.failed += it->second * std::clamp(e.value, 0.0, 1.0);
  }
  return out;
}

const std::vector<StoredSample>& Of(const ByDevice& by_device, const std::string& id) {
  static const std::vector<StoredSample> kNone;
  auto it = by_device.find(id);
  return it == by_device.end() ? kNone : it->second;
}

std::string Minutes(int64_t ms) { return Format(static_cast<double>(ms) / 60'000, 0); }

}  // namespace

const std::vector<AlertRuleInfo>& AlertRuleCatalog() {
  static const std::vector<AlertRuleInfo> kRules = {
      {"device_offline", "critical", "the device has not contacted the hub for too long"},
      {"telemetry_stale", "warning", "the device polls but its heartbeats stopped arriving"},
      {"temperature_high", "warning", "the hottest thermal zone is above the limit"},
      {"error_rate_high", "critical", "the share of failed inference requests is over the SLO"},
      {"latency_p95_high", "warning", "the runtime's p95 inference latency is over the SLO"},
      {"error_budget_burn_fast", "critical",
       "the availability error budget burns fast over both fast windows"},
      {"error_budget_burn_slow", "warning",
       "the availability error budget burns steadily over both slow windows"},
      {"drift_high", "warning", "the model's input/output drift index (PSI) is over the limit"},
      {"update_failed", "warning", "the device's last update failed or was rolled back"},
      {"clock_skew", "warning", "the device's clock is off the hub's by more than the limit"},
  };
  return kRules;
}

absl::StatusOr<AlertRules> ParseAlertRules(std::string_view yaml, std::string_view source) {
  ASSIGN_OR_RETURN(json doc, YamlToJson(yaml, source));
  AlertRules rules;
  auto fail = [&](const absl::Status& s) {
    return absl::InvalidArgumentError(StrCat(source, ": ", MessageOf(s)));
  };
  for (const auto& item : doc.items()) {
    const std::string& key = item.key();
    const json& value = item.value();
    absl::Status status;
    auto seconds = [&](int64_t* out) {
      absl::StatusOr<int64_t> s = DurationSeconds(value, key);
      if (s.ok()) *out = *s;
      status = s.status();
    };
    auto number = [&](double* out, double min, double max) {
      absl::StatusOr<double> n = Number(value, key, min, max);
      if (n.ok()) *out = *n;
      status = n.status();
    };
    if (key == "device_offline_after") {
      seconds(&rules.offline_after_s);
    } else if (key == "telemetry_stale_after") {
      seconds(&rules.stale_after_s);
    } else if (key == "window") {
      seconds(&rules.window_s);
    } else if (key == "temperature_max_c") {
      number(&rules.temperature_max_c, -100, 1000);
    } else if (key == "error_rate_max") {
      number(&rules.error_rate_max, 0, 1);
    } else if (key == "min_requests") {
      double n = 0;
      number(&n, 0, 1e12);
      rules.min_requests = static_cast<int64_t>(n);
    } else if (key == "latency_p95_max_ms") {
      number(&rules.latency_p95_max_ms, 0, 1e9);
    } else if (key == "slo_availability") {
      number(&rules.slo_availability, 0.5, 0.999999);
    } else if (key == "burn_fast") {
      status = ParseBurn(value, key, &rules.burn_fast);
    } else if (key == "burn_slow") {
      status = ParseBurn(value, key, &rules.burn_slow);
    } else if (key == "drift_psi_max") {
      number(&rules.drift_psi_max, 0, 1e6);
    } else if (key == "update_failure_window") {
      seconds(&rules.update_failure_window_s);
    } else if (key == "clock_skew_max") {
      int64_t s = 0;
      seconds(&s);
      rules.clock_skew_max_ms = s * kSecond;
    } else if (key == "disabled") {
      if (!value.is_array()) {
        status = absl::InvalidArgumentError("'disabled': a list of rule names");
      } else {
        for (const json& name : value) {
          bool known = name.is_string() &&
                       std::any_of(AlertRuleCatalog().begin(), AlertRuleCatalog().end(),
                                   [&](const AlertRuleInfo& r) { return r.name == name; });
          if (!known) {
            status = absl::InvalidArgumentError(
                StrCat("'disabled': ", name.dump(), " is not an alert rule"));
            break;
          }
          rules.disabled.insert(name.get<std::string>());
        }
      }
    } else {
      status = absl::InvalidArgumentError(
          StrCat("unknown key '", key, "' (docs/alerts.md lists the keys)"));
    }
    if (!status.ok()) return fail(status);
  }
  return rules;
}

json AlertRulesJson(const AlertRules& r) {
  auto burn = [](const BurnWindow& b) {
    return json{{"long_s", b.long_s}, {"short_s", b.short_s}, {"rate", b.rate}};
  };
  return {{"device_offline_after_s", r.offline_after_s},
          {"telemetry_stale_after_s", r.stale_after_s},
          {"window_s", r.window_s},
          {"temperature_max_c", r.temperature_max_c},
          {"error_rate_max", r.error_rate_max},
          {"min_requests", r.min_requests},
          {"latency_p95_max_ms", r.latency_p95_max_ms},
          {"slo_availability", r.slo_availability},
          {"burn_fast", burn(r.burn_fast)},
          {"burn_slow", burn(r.burn_slow)},
          {"drift_psi_max", r.drift_psi_max},
          {"update_failure_window_s", r.update_failure_window_s},
          {"clock_skew_max_ms", r.clock_skew_max_ms},
          {"disabled", r.disabled}};
}

absl::StatusOr<std::vector<AlertObservation>> EvaluateAlerts(Store& store, const AlertRules& rules,
                                                             TimeMs now) {
  DeviceFilter active;
  active.status = DeviceStatus::kActive;
  ASSIGN_OR_RETURN(std::vector<Device> devices, store.ListDevices(active));
  ASSIGN_OR_RETURN(auto last_telemetry, store.LastTelemetryByDevice());
  const TimeMs window_from = now - rules.window_s * kSecond;
  const TimeMs longest =
      std::max({rules.window_s, rules.burn_fast.long_s, rules.burn_slow.long_s}) * kSecond;
  ASSIGN_OR_RETURN(ByDevice temperature, SamplesSince(store, kTemperature, window_from, now));
  ASSIGN_OR_RETURN(ByDevice latency, SamplesSince(store, kLatencyP95, window_from, now));
  ASSIGN_OR_RETURN(ByDevice drift, SamplesSince(store, kDriftPsi, window_from, now));
  ASSIGN_OR_RETURN(ByDevice error_rates, SamplesSince(store, kErrorRate, now - longest, now));
  ASSIGN_OR_RETURN(ByDevice requests, SamplesSince(store, kRequests, now - longest, now));

  const double budget = 1 - rules.slo_availability;
  std::vector<AlertObservation> out;
  auto on = [&](std::string_view rule) { return !rules.disabled.contains(std::string(rule)); };
  auto severity_of = [](std::string_view rule) {
    for (const AlertRuleInfo& r : AlertRuleCatalog()) {
      if (r.name == rule) return std::string(r.severity);
    }
    return std::string("warning");
  };
  for (const Device& d : devices) {
    auto add = [&](std::string_view rule, double value, double threshold, std::string summary) {
      out.push_back({std::string(rule), d.id, severity_of(rule), d.site, value, threshold,
                     std::move(summary)});
    };
    const TimeMs seen = d.last_seen_at > 0 ? d.last_seen_at : d.enrolled_at;
    const bool offline = now - seen > rules.offline_after_s * kSecond;
    if (offline) {
      if (on("device_offline")) {
        add("device_offline", (now - seen) / 60'000.0, rules.offline_after_s / 60.0,
            StrCat(d.id, " has not contacted the hub for ", Minutes(now - seen), " min",
                   d.last_seen_at == 0 ? " (never since enrolment)" : ""));
      }
      continue;  // nothing else about it is current
    }
    auto last = last_telemetry.find(d.id);
    const TimeMs telemetry_at = last != last_telemetry.end() ? last->second : d.enrolled_at;
    if (on("telemetry_stale") && now - telemetry_at > rules.stale_after_s * kSecond) {
      add("telemetry_stale", (now - telemetry_at) / 60'000.0, rules.stale_after_s / 60.0,
          StrCat(d.id, " polls the hub but sent no telemetry for ", Minutes(now - telemetry_at),
                 " min"));
    }
    if (std::optional<double> t = NewestMax(Of(temperature, d.id));
        on("temperature_high") && t && *t > rules.temperature_max_c) {
      add("temperature_high", *t, rules.temperature_max_c,
          StrCat(d.id, " runs at ", Format(*t), " °C (limit ", Format(rules.temperature_max_c),
                 " °C)"));
    }
    if (std::optional<double> p95 = NewestMax(Of(latency, d.id));
        on("latency_p95_high") && p95 && *p95 > rules.latency_p95_max_ms) {
      add("latency_p95_high", *p95, rules.latency_p95_max_ms,
          StrCat(d.id, " p95 latency ", Format(*p95), " ms (SLO ", Format(rules.latency_p95_max_ms),
                 " ms)"));
    }
    if (std::optional<double> psi = NewestMax(Of(drift, d.id));
        on("drift_high") && psi && *psi > rules.drift_psi_max) {
      add("drift_high", *psi, rules.drift_psi_max,
          StrCat(d.id, " drift index (PSI) ", Format(*psi, 3), " over ",
                 Format(rules.drift_psi_max, 3)));
    }
    const auto& rates = Of(error_rates, d.id);
    const auto& counts = Of(requests, d.id);
    Requests recent = RequestsSince(rates, counts, window_from);
    if (on("error_rate_high") && recent.total >= rules.min_requests &&
        recent.ratio() > rules.error_rate_max) {
      add("error_rate_high", recent.ratio(), rules.error_rate_max,
          StrCat(d.id, " failed ", Format(100 * recent.ratio()), "% of ",
                 static_cast<int64_t>(recent.total), " requests in ", rules.window_s / 60,
                 " min (SLO ", Format(100 * rules.error_rate_max), "%)"));
    }
    for (const auto& [rule, burn] : {std::pair{"error_budget_burn_fast", &rules.burn_fast},
                                     std::pair{"error_budget_burn_slow", &rules.burn_slow}}) {
      if (!on(rule) || budget <= 0) continue;
      Requests long_window = RequestsSince(rates, counts, now - burn->long_s * kSecond);
      Requests short_window = RequestsSince(rates, counts, now - burn->short_s * kSecond);
      if (long_window.total < rules.min_requests || short_window.total <= 0) continue;
      const double long_burn = long_window.ratio() / budget;
      const double short_burn = short_window.ratio() / budget;
      if (long_burn > burn->rate && short_burn > burn->rate) {
        add(rule, long_burn, burn->rate,
            StrCat(d.id, " burns its error budget ", Format(long_burn), "x over ",
                   burn->long_s / 60, " min and ", Format(short_burn), "x over ",
                   burn->short_s / 60, " min (limit ", Format(burn->rate), "x)"));
      }
    }
    if (on("clock_skew") && std::abs(d.last_clock_offset_ms) > rules.clock_skew_max_ms) {
      add("clock_skew", d.last_clock_offset_ms / 1000.0, rules.clock_skew_max_ms / 1000.0,
          StrCat(d.id, " clock is ", Format(d.last_clock_offset_ms / 1000.0), " s off the hub's"));
    }
    const std::string& state = d.update.update_state;
    if (on("update_failed") && (state == "rolled_back" || state == "failed")) {
      ASSIGN_OR_RETURN(std::vector<DeviceEvent> events, store.ListDeviceEvents(d.id, 0, 1));
      if (!events.empty() && now - events[0].hub_time <= rules.update_failure_window_s * kSecond) {
        add("update_failed", 1, 0,
            StrCat(d.id, " ", state == "failed" ? "failed to install" : "rolled back",
                   events[0].release.empty() ? "" : StrCat(" ", events[0].release),
                   d.update.update_reason.empty() ? "" : StrCat(": ", d.update.update_reason)));
      }
    }
  }
  return out;
}

json AlertJson(const Alert& a) {
  return {{"id", a.id},
          {"name", a.name},
          {"state", NameOf(a.state)},
          {"severity", a.severity},
          {"device_id", a.device_id},
          {"site", a.site},
          {"value", a.value},
          {"threshold", a.threshold},
          {"summary", a.summary},
          {"started_at", a.started_at},
          {"resolved_at", a.resolved_at},
          {"updated_at", a.updated_at}};
}

// ---------------------------------------------------------------- engine

AlertEngine::AlertEngine(Store& store, AlertRules rules, std::unique_ptr<WebhookNotifier> notifier,
                         Clock clock)
    : store_(store),
      rules_(std::move(rules)),
      notifier_(std::move(notifier)),
      clock_(std::move(clock)) {}

AlertEngine::~AlertEngine() { Stop(); }

void AlertEngine::Start(std::chrono::milliseconds interval) {
  if (thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stopping_ = false;
  }
  if (notifier_) notifier_->Start();
  thread_ = std::thread([this, interval] { Loop(interval); });
}

void AlertEngine::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (notifier_) notifier_->Stop();
}

absl::Status AlertEngine::EvaluateOnce() {
  const TimeMs now = clock_();
  absl::Status status = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::vector<AlertObservation> observations,
                     EvaluateAlerts(store_, rules_, now));
    std::vector<std::string> evaluated;
    for (const AlertRuleInfo& r : AlertRuleCatalog()) evaluated.emplace_back(r.name);
    ASSIGN_OR_RETURN(std::vector<Alert> changed,
                     store_.RecordAlertEvaluation(evaluated, observations, now));
    for (const Alert& a : changed) {
      spdlog::info("alerts: {} {} {}: {}", a.name, NameOf(a.state),
                   a.device_id.empty() ? "fleet" : a.device_id, a.summary);
    }
    if (notifier_ && !changed.empty()) notifier_->Enqueue(std::move(changed));
    return absl::OkStatus();
  }();
  std::lock_guard lock(mu_);
  ++evaluations_;
  if (!status.ok()) ++failures_;
  return status;
}

int64_t AlertEngine::evaluations() const {
  std::lock_guard lock(mu_);
  return evaluations_;
}

int64_t AlertEngine::failed_evaluations() const {
  std::lock_guard lock(mu_);
  return failures_;
}

void AlertEngine::Loop(std::chrono::milliseconds interval) {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    lock.unlock();
    absl::Status status = EvaluateOnce();
    if (!status.ok()) spdlog::warn("alerts: evaluation failed: {}", MessageOf(status));
    lock.lock();
    cv_.wait_for(lock, interval, [this] { return stopping_; });
  }
}

}  // namespace outpost::hub
