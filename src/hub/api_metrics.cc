// The hub's fleet /metrics for Prometheus: devices online/offline by site,
// releases in the field, rollout progress and gate values. Label values are
// sites, releases and rollout ids, never device ids, so cardinality stays
// bounded by what operators create, not by fleet size.
#include <map>
#include <tuple>

#include "hub/api.h"

namespace outpost::hub {
namespace {

using json = nlohmann::json;

// A label value in the text exposition format.
std::string Escape(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

void Family(std::string* out, std::string_view name, std::string_view type, std::string_view help) {
  StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

void Metrics(HubContext& hub, Call& call) {
  absl::StatusOr<std::vector<Device>> devices = hub.store().ListDevices({});
  if (!devices.ok()) return call.Fail(devices.status());
  std::map<std::tuple<std::string, std::string, bool>, int64_t> by_site;  // site, status, online
  std::map<std::string, int64_t> by_release;
  std::map<std::string, int64_t> by_update_state;
  for (const Device& d : *devices) {
    const bool online = d.last_seen_at > 0 && call.now - d.last_seen_at < kOnlineWindowMs;
    ++by_site[{d.site, std::string(NameOf(d.status)), online}];
    if (d.status == DeviceStatus::kActive) {
      ++by_release[d.update.current_release];
      if (!d.update.update_state.empty()) ++by_update_state[d.update.update_state];
    }
  }
  std::string out;
  Family(&out, "outpost_hub_devices", "gauge",
         "Enrolled devices by site, status and whether they checked in within 6 minutes (the "
         "longest long poll plus a minute)");
  for (const auto& [key, count] : by_site) {
    const auto& [site, status, online] = key;
    StrAppend(&out, "outpost_hub_devices{site=\"", Escape(site), "\",status=\"", status,
              "\",online=\"", online ? "true" : "false", "\"} ", count, "\n");
  }
  Family(&out, "outpost_hub_devices_by_release", "gauge",
         "Active devices by the release they run (\"\" = none installed yet)");
  for (const auto& [release, count] : by_release) {
    StrAppend(&out, "outpost_hub_devices_by_release{release=\"", Escape(release), "\"} ", count,
              "\n");
  }
  Family(&out, "outpost_hub_devices_by_update_state", "gauge",
         "Active devices by the state of their update state machine");
  for (const auto& [state, count] : by_update_state) {
    StrAppend(&out, "outpost_hub_devices_by_update_state{state=\"", Escape(state), "\"} ", count,
              "\n");
  }

  absl::StatusOr<std::vector<Rollout>> rollouts =
      hub.store().ListRollouts({RolloutState::kPending, RolloutState::kRunning,
                                RolloutState::kPaused, RolloutState::kHalted});
  if (!rollouts.ok()) return call.Fail(rollouts.status());
  std::string states, waves, failures, values, thresholds;
  Family(&states, "outpost_hub_rollout_devices", "gauge",
         "Devices of each unfinished rollout by their state in it");
  Family(&waves, "outpost_hub_rollout_wave", "gauge",
         "Current wave (1-based) of each unfinished rollout; state label is the rollout's");
  Family(&failures, "outpost_hub_rollout_failures", "gauge",
         "Failed or rolled-back devices counted by each unfinished rollout's install gate");
  Family(&values, "outpost_hub_rollout_gate_value", "gauge",
         "What each unfinished rollout's gates last measured on its wave (p95 in ms, rates "
         "and drift as fractions, offline devices as a count)");
  Family(&thresholds, "outpost_hub_rollout_gate_threshold", "gauge",
         "Each unfinished rollout's gate thresholds from its plan (0 = gate off)");
  for (const Rollout& r : *rollouts) {
    std::string labels = StrCat("rollout=\"", r.id, "\",release=\"", Escape(r.release_id), "\"");
    absl::StatusOr<std::vector<RolloutDevice>> members = hub.store().ListRolloutDevices(r.id);
    if (!members.ok()) return call.Fail(members.status());
    std::map<std::string, int64_t> counts;
    for (const RolloutDevice& d : *members) ++counts[std::string(NameOf(d.state))];
    for (const auto& [state, count] : counts) {
      StrAppend(&states, "outpost_hub_rollout_devices{", labels, ",state=\"", state, "\"} ", count,
                "\n");
    }
    StrAppend(&waves, "outpost_hub_rollout_wave{", labels, ",state=\"", NameOf(r.state), "\"} ",
              r.current_wave + 1, "\n");
    json gates = json::parse(r.gates_json, nullptr, false);
    int64_t failed = gates.is_object() ? gates.value("failures", int64_t{0}) : 0;
    StrAppend(&failures, "outpost_hub_rollout_failures{", labels, "} ", failed, "\n");
    if (gates.is_object()) {
      for (const char* key : {"wave_p95_ms", "baseline_p95_ms", "p95_regression_pct",
                              "wave_error_rate", "wave_drift_psi"}) {
        if (gates.contains(key) && gates[key].is_number()) {
          StrAppend(&values, "outpost_hub_rollout_gate_value{", labels, ",gate=\"", key, "\"} ",
                    gates[key].get<double>(), "\n");
        }
      }
      if (gates.contains("offline_after_commit") && gates["offline_after_commit"].is_array()) {
        StrAppend(&values, "outpost_hub_rollout_gate_value{", labels,
                  ",gate=\"offline_after_commit\"} ", gates["offline_after_commit"].size(), "\n");
      }
    }
    json plan = json::parse(r.waves_json, nullptr, false);
    if (plan.is_object() && plan.contains("gates") && plan["gates"].is_object()) {
      for (const auto& [key, value] : plan["gates"].items()) {
        if (!value.is_number()) continue;
        StrAppend(&thresholds, "outpost_hub_rollout_gate_threshold{", labels, ",gate=\"",
                  Escape(key), "\"} ", value.get<double>(), "\n");
      }
    }
  }
  out += states + waves + failures + values + thresholds;
  absl::Status alerts = AppendAlertMetrics(hub, call.now, &out);
  if (!alerts.ok()) return call.Fail(alerts);
  Family(&out, "outpost_hub_info", "gauge", "Always 1; the hub's version");
  StrAppend(&out, "outpost_hub_info{version=\"", OUTPOST_VERSION, "\"} 1\n");

  http::Response response{http::Status::ok, call.request.version()};
  response.set(boost::beast::http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
  response.body() = std::move(out);
  call.responder.Send(std::move(response));
}

}  // namespace

void RegisterMetricsApi(HubContext& hub, Router& router) {
  router.Add("GET", "/metrics", Access::kPublic, [&hub](Call& call) { Metrics(hub, call); });
}

}  // namespace outpost::hub
