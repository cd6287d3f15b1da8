#include "hub/rollout_engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/str_join.h"
#include "hub/api.h"

namespace outpost::hub {
namespace {

using json = nlohmann::json;

// Cumulative device count a wave spec asks for out of `total`.
int64_t CumulativeCount(const json& spec, int64_t total) {
  if (spec.is_number_integer()) return std::min<int64_t>(spec.get<int64_t>(), total);
  std::string text = spec.get<std::string>();
  double percent = std::stod(text.substr(0, text.size() - 1));
  return std::min<int64_t>(total, static_cast<int64_t>(std::ceil(percent * total / 100.0 - 1e-9)));
}

bool Settled(RolloutDeviceState s) {
  return s == RolloutDeviceState::kCommitted || s == RolloutDeviceState::kFailed ||
         s == RolloutDeviceState::kRolledBack;
}

bool Failed(RolloutDeviceState s) {
  return s == RolloutDeviceState::kFailed || s == RolloutDeviceState::kRolledBack;
}

void Log(json& gates, TimeMs now, std::string event) {
  spdlog::info("rollout: {}", event);
  if (!gates["history"].is_array()) gates["history"] = json::array();
  gates["history"].push_back({{"time", now}, {"event", std::move(event)}});
}

}  // namespace

absl::StatusOr<RolloutPlan> ParseRolloutPlan(const json& j) {
  RolloutPlan plan;
  if (!j.is_object()) return absl::InvalidArgumentError("the rollout plan must be a JSON object");
  json waves = j.value("waves", json::array({1, "10%", "100%"}));
  if (!waves.is_array() || waves.empty()) {
    return absl::InvalidArgumentError(
        "field 'waves': a non-empty array such as [1, \"10%\", \"100%\"]");
  }
  for (size_t i = 0; i < waves.size(); ++i) {
    const json& w = waves[i];
    bool ok = (w.is_number_integer() && w.get<int64_t>() >= 1);
    if (w.is_string()) {
      std::string text = w.get<std::string>();
      char* end = nullptr;
      double percent = text.size() > 1 && text.back() == '%' ? std::strtod(text.c_str(), &end) : -1;
      ok = end == text.c_str() + text.size() - 1 && percent > 0 && percent <= 100;
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          StrCat("field 'waves[", i, "]': a device count >= 1 or a percentage such as \"10%\""));
    }
    plan.waves.push_back(w);
  }
  auto non_negative = [&](const json& obj, const char* name, auto* out) -> absl::Status {
    if (!obj.contains(name)) return absl::OkStatus();
    if (!obj[name].is_number() || obj[name].get<double>() < 0) {
      return absl::InvalidArgumentError(StrCat("field '", name, "': a number >= 0"));
    }
    *out = obj[name].get<std::remove_pointer_t<decltype(out)>>();
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(non_negative(j, "soak_s", &plan.soak_s));
  RETURN_IF_ERROR(non_negative(j, "deadline_s", &plan.deadline_s));
  if (plan.deadline_s < 1) return absl::InvalidArgumentError("field 'deadline_s': at least 1");
  json gates = j.value("gates", json::object());
  if (!gates.is_object()) return absl::InvalidArgumentError("field 'gates': an object");
  RETURN_IF_ERROR(non_negative(gates, "max_failures", &plan.max_failures));
  RETURN_IF_ERROR(non_negative(gates, "max_failure_rate", &plan.max_failure_rate));
  RETURN_IF_ERROR(non_negative(gates, "p95_regression_pct", &plan.p95_regression_pct));
  RETURN_IF_ERROR(non_negative(gates, "p95_min_delta_ms", &plan.p95_min_delta_ms));
  RETURN_IF_ERROR(non_negative(gates, "max_error_rate", &plan.max_error_rate));
  RETURN_IF_ERROR(non_negative(gates, "max_drift_psi", &plan.max_drift_psi));
  if (gates.contains("max_offline") && gates["max_offline"].is_null()) {
    plan.offline_gate = false;
  } else {
    RETURN_IF_ERROR(non_negative(gates, "max_offline", &plan.max_offline));
  }
  RETURN_IF_ERROR(non_negative(gates, "min_samples", &plan.min_samples));
  if (j.contains("maintenance_window") && !j["maintenance_window"].is_null()) {
    const json& w = j["maintenance_window"];
    auto valid = [](const json& v) {
      if (!v.is_string()) return false;
      std::string t = v.get<std::string>();
      if (t.size() != 5 && t.size() != 8) return false;
      for (size_t i = 0; i < t.size(); ++i) {
        bool colon = i == 2 || i == 5;
        if (colon ? t[i] != ':' : !std::isdigit(static_cast<unsigned char>(t[i]))) return false;
      }
      return std::stoi(t.substr(0, 2)) < 24 && std::stoi(t.substr(3, 2)) < 60 &&
             (t.size() == 5 || std::stoi(t.substr(6, 2)) < 60);
    };
    if (!w.is_object() || !valid(w.value("start", json())) || !valid(w.value("end", json()))) {
      return absl::InvalidArgumentError(
          "field 'maintenance_window': {\"start\": \"HH:MM\", \"end\": \"HH:MM\"} in the "
          "devices' local time");
    }
    plan.window_start = w["start"].get<std::string>();
    plan.window_end = w["end"].get<std::string>();
  }
  return plan;
}

json PlanJson(const RolloutPlan& plan) {
  json window = plan.window_start.empty()
                    ? json(nullptr)
                    : json{{"start", plan.window_start}, {"end", plan.window_end}};
  return {{"waves", plan.waves},
          {"maintenance_window", window},
          {"soak_s", plan.soak_s},
          {"deadline_s", plan.deadline_s},
          {"gates",
           {{"max_failures", plan.max_failures},
            {"max_failure_rate", plan.max_failure_rate},
            {"p95_regression_pct", plan.p95_regression_pct},
            {"p95_min_delta_ms", plan.p95_min_delta_ms},
            {"max_error_rate", plan.max_error_rate},
            {"max_drift_psi", plan.max_drift_psi},
            {"max_offline", plan.offline_gate ? json(plan.max_offline) : json(nullptr)},
            {"min_samples", plan.min_samples}}}};
}

std::vector<RolloutDevice> AssignWaves(const std::vector<std::string>& device_ids,
                                       const RolloutPlan& plan) {
  const int64_t total = static_cast<int64_t>(device_ids.size());
  std::vector<RolloutDevice> out;
  int64_t assigned = 0;
  for (size_t wave = 0; wave < plan.waves.size() && assigned < total; ++wave) {
    int64_t upto = wave + 1 == plan.waves.size() ? total : CumulativeCount(plan.waves[wave], total);
    upto = std::max(upto, assigned + 1);  // every wave moves forward
    for (; assigned < upto; ++assigned) {
      RolloutDevice d;
      d.device_id = device_ids[assigned];
      d.wave = static_cast<int64_t>(wave);
      out.push_back(std::move(d));
    }
  }
  return out;
}

void RolloutEngine::Start(std::chrono::milliseconds tick) {
  thread_ = std::thread([this, tick] {
    std::unique_lock lock(mu_);
    while (!stop_) {
      lock.unlock();
      Tick();
      lock.lock();
      cv_.wait_for(lock, tick, [this] { return stop_; });
    }
  });
}

void RolloutEngine::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void RolloutEngine::Tick() {
  absl::StatusOr<std::vector<Rollout>> active =
      hub_.store().ListRollouts({RolloutState::kPending, RolloutState::kRunning});
  if (!active.ok()) {
    spdlog::warn("rollout engine: listing rollouts failed: {}", MessageOf(active.status()));
    return;
  }
  for (const Rollout& r : *active) {
    absl::Status status = Step(r.id);
    if (!status.ok()) {
      spdlog::warn("rollout {}: step failed (retried next tick): {}", r.id, MessageOf(status));
    }
  }
}

static double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// Reads telemetry outside the rollout lock (a step must not call the store).
GateMeasurements RolloutEngine::Measure(const Rollout& rollout) {
  GateMeasurements m;
  if (rollout.state != RolloutState::kRunning) return m;
  absl::StatusOr<std::vector<RolloutDevice>> wave =
      hub_.store().ListRolloutDevices(rollout.id, rollout.current_wave);
  if (!wave.ok()) return m;
  std::vector<double> p95, errors, drift;
  std::vector<std::string> wave_ids;
  for (const RolloutDevice& d : *wave) {
    wave_ids.push_back(d.device_id);
    if (d.state != RolloutDeviceState::kCommitted) continue;
    for (const char* metric : {"latency_p95_ms", "error_rate", "drift_psi"}) {
      absl::StatusOr<std::vector<StoredSample>> samples =
          hub_.store().QueryTelemetry({.device_ids = {d.device_id},
                                       .metric = metric,
                                       .from = d.updated_at,
                                       .by_hub_time = true});
      if (!samples.ok()) continue;
      for (const StoredSample& s : *samples) {
        const std::string_view name = metric;
        (name == "error_rate" ? errors : name == "drift_psi" ? drift : p95).push_back(s.value);
      }
    }
  }
  m.samples = static_cast<int64_t>(p95.size());
  m.drift_samples = static_cast<int64_t>(drift.size());
  if (!drift.empty()) m.wave_drift_psi = Median(drift);
  // Devices running the release that have fallen silent: one query for
  // the release's devices, kept when they committed in this rollout.
  absl::StatusOr<std::vector<RolloutDevice>> all =
      hub_.store().ListRolloutDevices(rollout.id, std::nullopt);
  absl::StatusOr<std::vector<Device>> running =
      hub_.store().ListDevices({.current_release = rollout.release_id});
  if (all.ok() && running.ok()) {
    std::map<std::string_view, TimeMs> committed_at;
    for (const RolloutDevice& d : *all) {
      if (d.state == RolloutDeviceState::kCommitted) committed_at[d.device_id] = d.updated_at;
    }
    const TimeMs now = hub_.Now();
    for (const Device& device : *running) {
      auto it = committed_at.find(device.id);
      if (it == committed_at.end()) continue;
      if (now - std::max(device.last_seen_at, it->second) >= kOnlineWindowMs) {
        m.offline_after_commit.push_back(device.id);
      }
    }
  }
  if (!p95.empty()) m.wave_p95_ms = Median(p95);
  if (!errors.empty()) {
    double sum = 0;
    for (double e : errors) sum += e;
    m.wave_error_rate = sum / errors.size();
  }
  // Baseline: these devices before the rollout began; else the others now.
  constexpr TimeMs kBaselineWindow = 15 * 60 * 1000;
  absl::StatusOr<std::vector<StoredSample>> before =
      hub_.store().QueryTelemetry({.device_ids = wave_ids,
                                   .metric = "latency_p95_ms",
                                   .from = rollout.created_at - kBaselineWindow,
                                   .to = rollout.created_at,
                                   .by_hub_time = true});
  std::vector<double> baseline;
  if (before.ok()) {
    for (const StoredSample& s : *before) baseline.push_back(s.value);
  }
  if (baseline.empty()) {
    absl::StatusOr<std::vector<StoredSample>> fleet = hub_.store().QueryTelemetry(
        {.metric = "latency_p95_ms", .from = hub_.Now() - kBaselineWindow, .by_hub_time = true});
    if (fleet.ok()) {
      std::set<std::string> in_wave(wave_ids.begin(), wave_ids.end());
      for (const StoredSample& s : *fleet) {
        if (!in_wave.count(s.device_id)) baseline.push_back(s.value);
      }
    }
  }
  if (!baseline.empty()) m.baseline_p95_ms = Median(baseline);
  return m;
}

absl::Status RolloutEngine::Step(int64_t id) {
  GateMeasurements measured;
  if (absl::StatusOr<Rollout> before = hub_.store().GetRollout(id); before.ok()) {
    measured = Measure(*before);
  }
  std::vector<std::string> woken;
  RETURN_IF_ERROR(hub_.store().WithRolloutLock(id, [&](RolloutTransaction& tx) -> absl::Status {
    woken.clear();
    Rollout r = tx.rollout();
    if (r.state != RolloutState::kPending && r.state != RolloutState::kRunning) {
      return absl::OkStatus();
    }
    const TimeMs now = hub_.Now();
    ASSIGN_OR_RETURN(RolloutPlan plan, ParseRolloutPlan(json::parse(r.waves_json)));
    json gates = json::parse(r.gates_json, nullptr, false);
    if (!gates.is_object()) gates = json::object();
    ASSIGN_OR_RETURN(std::vector<RolloutDevice> devices, tx.ListDevices(std::nullopt));
    int64_t last_wave = -1;
    for (const RolloutDevice& d : devices) last_wave = std::max(last_wave, d.wave);

    auto start_wave = [&](int64_t wave) -> absl::Status {
      int64_t count = 0;
      for (const RolloutDevice& d : devices) {
        if (d.wave != wave || d.state != RolloutDeviceState::kPending) continue;
        RETURN_IF_ERROR(tx.SetDesiredRelease(d.device_id, r.release_id, now).status());
        RETURN_IF_ERROR(tx.SetDeviceState(d.device_id, RolloutDeviceState::kOffered, now));
        woken.push_back(d.device_id);
        ++count;
      }
      r.current_wave = wave;
      r.wave_started_at = now;
      Log(gates, now,
          StrCat("rollout ", id, " of ", r.release_id, ": wave ", wave + 1, "/", last_wave + 1,
                 " started with ", count, " device(s)"));
      return absl::OkStatus();
    };

    if (r.state == RolloutState::kPending) {
      r.state = RolloutState::kRunning;
      if (last_wave < 0) {
        r.state = RolloutState::kCompleted;
        Log(gates, now, StrCat("rollout ", id, ": no devices matched; completed"));
      } else {
        RETURN_IF_ERROR(start_wave(0));
      }
    } else {
      // Devices that missed the wave's deadline have failed (a device that
      // never reports must not hold the rollout forever).
      const TimeMs deadline = r.wave_started_at + plan.deadline_s * 1000;
      int64_t failures = 0, offered = 0, in_wave = 0, committed_in_wave = 0;
      TimeMs last_commit = r.wave_started_at;
      for (RolloutDevice& d : devices) {
        if (d.wave > r.current_wave) continue;
        ++offered;
        if (!Settled(d.state) && now >= deadline) {
          RETURN_IF_ERROR(tx.SetDeviceState(d.device_id, RolloutDeviceState::kFailed, now));
          d.state = RolloutDeviceState::kFailed;
          Log(gates, now,
              StrCat("rollout ", id, ": device ", d.device_id, " did not commit within ",
                     plan.deadline_s, " s: failed"));
        }
        if (Failed(d.state)) ++failures;
        if (d.wave == r.current_wave) {
          ++in_wave;
          if (d.state == RolloutDeviceState::kCommitted) {
            ++committed_in_wave;
            last_commit = std::max(last_commit, d.updated_at);
          }
        }
      }
      gates["failures"] = failures;
      gates["offered"] = offered;
      const double rate = offered > 0 ? static_cast<double>(failures) / offered : 0.0;
      std::string breach;
      if (failures > plan.max_failures ||
          (plan.max_failure_rate > 0 && failures > 0 && rate > plan.max_failure_rate)) {
        breach = StrCat("install failures: ", failures, " of ", offered,
                        " device(s) (gate: at most ", plan.max_failures, ")");
      }
      if (measured.wave_p95_ms) gates["wave_p95_ms"] = *measured.wave_p95_ms;
      if (measured.baseline_p95_ms) gates["baseline_p95_ms"] = *measured.baseline_p95_ms;
      if (measured.wave_error_rate) gates["wave_error_rate"] = *measured.wave_error_rate;
      gates["telemetry_samples"] = measured.samples;
      const bool enough = measured.samples >= plan.min_samples;
      if (breach.empty() && enough && plan.p95_regression_pct > 0 && measured.wave_p95_ms &&
          measured.baseline_p95_ms && *measured.baseline_p95_ms > 0) {
        double regression = 100.0 * (*measured.wave_p95_ms / *measured.baseline_p95_ms - 1.0);
        gates["p95_regression_pct"] = regression;
        const double delta = *measured.wave_p95_ms - *measured.baseline_p95_ms;
        if (regression > plan.p95_regression_pct && delta >= plan.p95_min_delta_ms) {
          breach = StrCat("p95 latency regression: ", static_cast<int64_t>(regression), "% (wave ",
                          *measured.wave_p95_ms, " ms vs baseline ", *measured.baseline_p95_ms,
                          " ms; gate: ", plan.p95_regression_pct, "%)");
        }
      }
      if (breach.empty() && enough && plan.max_error_rate > 0 && measured.wave_error_rate &&
          *measured.wave_error_rate > plan.max_error_rate) {
        breach = StrCat("inference error rate ", *measured.wave_error_rate, " over the gate ",
                        plan.max_error_rate);
      }
      if (measured.wave_drift_psi) gates["wave_drift_psi"] = *measured.wave_drift_psi;
      if (breach.empty() && plan.max_drift_psi > 0 && measured.wave_drift_psi &&
          measured.drift_samples >= plan.min_samples &&
          *measured.wave_drift_psi > plan.max_drift_psi) {
        breach = StrCat("output drift: population stability index ", *measured.wave_drift_psi,
                        " over the gate ", plan.max_drift_psi);
      }
      gates["offline_after_commit"] = measured.offline_after_commit;
      if (breach.empty() && plan.offline_gate &&
          static_cast<int64_t>(measured.offline_after_commit.size()) > plan.max_offline) {
        breach = StrCat(measured.offline_after_commit.size(),
                        " device(s) went offline after taking the release (",
                        absl::StrJoin(measured.offline_after_commit, ", "), "; gate: at most ",
                        plan.max_offline, ")");
      }
      // Without telemetry a wave is judged on installs alone.
      if (!breach.empty()) {
        r.state = RolloutState::kHalted;
        gates["halt_reason"] = breach;
        Log(gates, now,
            StrCat("rollout ", id, " halted: ", gates["halt_reason"].get<std::string>()));
        // Every device that was offered the release goes back to what it ran.
        const json previous = gates.value("previous", json::object());
        for (const RolloutDevice& d : devices) {
          if (d.wave > r.current_wave) continue;
          std::string prev = previous.value(d.device_id, "");
          RETURN_IF_ERROR(tx.SetDesiredRelease(
                                d.device_id,
                                prev.empty() ? std::nullopt : std::optional<std::string_view>(prev),
                                now)
                              .status());
          woken.push_back(d.device_id);
        }
      } else if (committed_in_wave == in_wave && now - last_commit >= plan.soak_s * 1000) {
        if (r.current_wave >= last_wave) {
          r.state = RolloutState::kCompleted;
          Log(gates, now, StrCat("rollout ", id, " of ", r.release_id, " completed"));
        } else {
          RETURN_IF_ERROR(start_wave(r.current_wave + 1));
        }
      }
    }
    r.gates_json = gates.dump();
    r.updated_at = now;
    return tx.SaveRollout(r);
  }));
  for (const std::string& device : woken) hub_.DesiredChanged(device);
  return absl::OkStatus();
}

absl::Status RolloutEngine::Pause(int64_t id) {
  return hub_.store().WithRolloutLock(id, [&](RolloutTransaction& tx) -> absl::Status {
    Rollout r = tx.rollout();
    if (r.state == RolloutState::kPaused) return absl::OkStatus();
    if (!IsActive(r.state)) {
      return absl::FailedPreconditionError(
          StrCat("rollout ", id, " is ", NameOf(r.state), ": only an active rollout can pause"));
    }
    r.state = RolloutState::kPaused;
    r.updated_at = hub_.Now();
    return tx.SaveRollout(r);
  });
}

absl::Status RolloutEngine::Resume(int64_t id) {
  return hub_.store().WithRolloutLock(id, [&](RolloutTransaction& tx) -> absl::Status {
    Rollout r = tx.rollout();
    if (r.state == RolloutState::kRunning || r.state == RolloutState::kPending) {
      return absl::OkStatus();
    }
    if (r.state != RolloutState::kPaused && r.state != RolloutState::kHalted) {
      return absl::FailedPreconditionError(StrCat("rollout ", id, " is ", NameOf(r.state),
                                                  ": only a paused or halted rollout resumes"));
    }
    r.updated_at = hub_.Now();
    if (r.wave_started_at == 0) {
      // Paused before its first wave began: the engine starts it.
      r.state = RolloutState::kPending;
      return tx.SaveRollout(r);
    }
    r.state = RolloutState::kRunning;
    // A resumed wave gets a fresh deadline.
    r.wave_started_at = r.updated_at;
    return tx.SaveRollout(r);
  });
}

absl::Status RolloutEngine::Abort(int64_t id) {
  return hub_.store().WithRolloutLock(id, [&](RolloutTransaction& tx) -> absl::Status {
    Rollout r = tx.rollout();
    if (r.state == RolloutState::kAborted) return absl::OkStatus();
    if (r.state == RolloutState::kCompleted) {
      return absl::FailedPreconditionError(StrCat("rollout ", id, " already completed"));
    }
    r.state = RolloutState::kAborted;
    r.updated_at = hub_.Now();
    return tx.SaveRollout(r);
  });
}

absl::Status RolloutEngine::Rollback(int64_t id, std::string_view reason) {
  std::vector<std::string> woken;
  RETURN_IF_ERROR(hub_.store().WithRolloutLock(id, [&](RolloutTransaction& tx) -> absl::Status {
    woken.clear();
    Rollout r = tx.rollout();
    const TimeMs now = hub_.Now();
    json gates = json::parse(r.gates_json, nullptr, false);
    if (!gates.is_object()) gates = json::object();
    const json previous = gates.value("previous", json::object());
    ASSIGN_OR_RETURN(std::vector<RolloutDevice> devices, tx.ListDevices(std::nullopt));
    for (const RolloutDevice& d : devices) {
      if (d.state == RolloutDeviceState::kPending) continue;
      std::string prev = previous.value(d.device_id, "");
      RETURN_IF_ERROR(
          tx.SetDesiredRelease(d.device_id,
                               prev.empty() ? std::nullopt : std::optional<std::string_view>(prev),
                               now)
              .status());
      woken.push_back(d.device_id);
    }
    r.state = RolloutState::kHalted;
    gates["halt_reason"] = StrCat("manual rollback: ", reason);
    Log(gates, now, StrCat("rollout ", id, " rolled back by an operator: ", reason));
    r.gates_json = gates.dump();
    r.updated_at = now;
    return tx.SaveRollout(r);
  }));
  for (const std::string& device : woken) hub_.DesiredChanged(device);
  return absl::OkStatus();
}

}  // namespace outpost::hub
