// outpost telemetry | alerts (docs/cli.md "Telemetry and alerts").
#include <CLI/CLI.hpp>
#include <charconv>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cli/format.h"
#include "cli/hub_command_support.h"

namespace outpost::cli {
namespace {

using json = nlohmann::json;

struct TelemetryArgs {
  std::string metric;
  std::vector<std::string> devices;
  std::string site;
  std::string release;
  std::string model_version;
  std::string since = "1h";
  int64_t from = 0;
  int64_t to = 0;
  std::string step;
  std::string group_by = "device";
  std::string source = "auto";
};

// "90s", "15m", "6h", "7d" or plain seconds -> ms; nullopt when malformed.
std::optional<int64_t> DurationMs(const std::string& text) {
  int64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  std::string_view unit(end, text.data() + text.size() - end);
  int64_t scale = unit.empty() || unit == "s" ? 1000
                  : unit == "m"               ? 60'000
                  : unit == "h"               ? 3'600'000
                  : unit == "d"               ? 86'400'000
                                              : 0;
  if (ec != std::errc() || n <= 0 || scale == 0) return std::nullopt;
  return n * scale;
}

std::string Number(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.4g", value);
  return text;
}

absl::Status Telemetry(const TelemetryArgs& a, Context& c) {
  int64_t to = a.to, from = a.from;
  if (from == 0) {
    std::optional<int64_t> since = DurationMs(a.since);
    if (!since) return Usage(StrCat("--since ", a.since, ": a duration like 90s, 15m, 6h, 7d"));
    if (to == 0) to = c.api.HubNowMs();
    from = to - *since;
  }
  ASSIGN_OR_RETURN(json answer,
                   c.api.Get(StrCat("/telemetry", QueryString({{"metric", a.metric},
                                                               {"device", Join(a.devices, ",")},
                                                               {"site", a.site},
                                                               {"release", a.release},
                                                               {"model_version", a.model_version},
                                                               {"from", StrCat(from)},
                                                               {"to", to > 0 ? StrCat(to) : ""},
                                                               {"step", a.step},
                                                               {"group_by", a.group_by},
                                                               {"source", a.source}}))));
  if (c.json_output) {
    c.PrintJson(answer);
    return absl::OkStatus();
  }
  Table table({a.group_by == "none" ? "series" : a.group_by, "labels", "time", "count", "mean",
               "min", "max"});
  for (const json& s : Array(answer, "series")) {
    for (const json& p : Array(s, "points")) {
      table.AddRow({OrDash(Text(s, "group")), FormatLabels(Object(s, "labels")),
                    FormatTime(Int(p, "t")), StrCat(Int(p, "count")), Number(p.value("mean", 0.0)),
                    Number(p.value("min", 0.0)), Number(p.value("max", 0.0))});
    }
  }
  table.Print(c.out);
  c.out << Text(answer, "metric") << ": " << Array(answer, "series").size() << " series, step "
        << Int(answer, "step_ms") / 1000 << " s, from " << Text(answer, "source")
        << (answer.value("truncated", false) ? " (truncated: raise --step)" : "") << "\n";
  return absl::OkStatus();
}

struct AlertArgs {
  std::string state = "firing";
  std::string name;
  std::string device;
  std::string site;
  bool rules = false;
};

absl::Status Alerts(const AlertArgs& a, Context& c) {
  if (a.rules) {
    ASSIGN_OR_RETURN(json answer, c.api.Get("/alerts/rules"));
    if (c.json_output) {
      c.PrintJson(answer);
      return absl::OkStatus();
    }
    Table table({"rule", "severity", "enabled", "what"});
    for (const json& r : Array(answer, "rules")) {
      table.AddRow({Text(r, "name"), Text(r, "severity"), r.value("enabled", true) ? "yes" : "no",
                    Text(r, "description")});
    }
    table.Print(c.out);
    c.out << "thresholds: " << Object(answer, "thresholds").dump() << "\n";
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(json answer, c.api.Get(StrCat("/alerts", QueryString({{"state", a.state},
                                                                         {"name", a.name},
                                                                         {"device", a.device},
                                                                         {"site", a.site}}))));
  if (c.json_output) {
    c.PrintJson(answer);
    return absl::OkStatus();
  }
  Table table({"state", "severity", "alert", "device", "site", "since", "summary"});
  const int64_t now = c.api.HubNowMs();
  for (const json& al : Array(answer, "alerts")) {
    const bool firing = Text(al, "state") == "firing";
    table.AddRow({Text(al, "state"), Text(al, "severity"), Text(al, "name"),
                  OrDash(Text(al, "device_id")), OrDash(Text(al, "site")),
                  firing ? FormatAgo(Int(al, "started_at"), now)
                         : StrCat("resolved ", FormatAgo(Int(al, "resolved_at"), now)),
                  Text(al, "summary")});
  }
  table.Print(c.out);
  c.out << Int(answer, "firing") << " firing\n";
  return absl::OkStatus();
}

}  // namespace

void AddObserveCommands(CLI::App& app, CommandRegistry& r) {
  TelemetryArgs& t = r.New<TelemetryArgs>();
  CLI::App* telemetry = r.Add(&app, "telemetry",
                              "a metric's samples from the hub: raw or rolled up, by device, "
                              "release or model version",
                              [&t](Context& c) { return Telemetry(t, c); });
  telemetry->add_option("metric", t.metric, "heartbeat metric, e.g. temperature_c, latency_p95_ms")
      ->required();
  telemetry->add_option("--device", t.devices, "only these devices (repeatable)");
  telemetry->add_option("--site", t.site, "only devices at this site");
  telemetry->add_option("--release", t.release, "only samples sent while running this release");
  telemetry->add_option("--model-version", t.model_version,
                        "only samples sent with this model loaded (model/version)");
  telemetry->add_option("--since", t.since, "how far back (default 1h): 90s, 15m, 6h, 7d");
  telemetry->add_option("--from", t.from, "start, unix ms (instead of --since)");
  telemetry->add_option("--to", t.to, "end, unix ms (default now)");
  telemetry->add_option("--step", t.step, "bucket width: 60, 5m, 1h (default: range/240)");
  telemetry->add_option("--group-by", t.group_by, "device, release, model_version or none")
      ->check(CLI::IsMember({"device", "release", "model_version", "none"}));
  telemetry->add_option("--source", t.source, "auto (by range and step), raw, 5m or 1h")
      ->check(CLI::IsMember({"auto", "raw", "5m", "1h"}));

  AlertArgs& a = r.New<AlertArgs>();
  CLI::App* alerts = r.Add(&app, "alerts", "alerts the hub evaluates: firing now, or history",
                           [&a](Context& c) { return Alerts(a, c); });
  alerts->add_option("--state", a.state, "firing (default), resolved or all")
      ->check(CLI::IsMember({"firing", "resolved", "all"}));
  alerts->add_option("--name", a.name, "only this rule, e.g. device_offline");
  alerts->add_option("--device", a.device, "only this device");
  alerts->add_option("--site", a.site, "only this site");
  alerts->add_flag("--rules", a.rules, "list the rules and their thresholds instead");
}

}  // namespace outpost::cli
