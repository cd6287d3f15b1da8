// Telemetry queries and alerts in the admin API (docs/openapi.yaml, tag
// observe), and their families on /metrics.
#include <charconv>
#include <cmath>
#include <map>

#include "hub/alerts.h"
#include "hub/api.h"
#include "hub/telemetry_retention.h"
#include "hub/webhook.h"

namespace outpost::hub {
namespace {

using json = nlohmann::json;

constexpr std::string_view kBase = "/api/v1/admin";
constexpr int64_t kMaxPoints = 10000;

// "1700000000000" (unix ms) -> ms. False when malformed.
bool ParseMs(const std::string& text, int64_t* out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return !text.empty() && ec == std::errc() && end == text.data() + text.size();
}

// "60" (seconds), "90s", "5m", "1h", "1d" -> ms. False when malformed or <= 0.
bool ParseStep(const std::string& text, int64_t* out) {
  int64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  std::string_view unit(end, text.data() + text.size() - end);
  int64_t scale = unit.empty() || unit == "s" ? 1000
                  : unit == "ms"              ? 1
                  : unit == "m"               ? 60'000
                  : unit == "h"               ? 3'600'000
                  : unit == "d"               ? 86'400'000
                                              : 0;
  if (ec != std::errc() || n <= 0 || scale == 0 || n > INT64_MAX / scale) return false;
  *out = n * scale;
  return true;
}

std::vector<std::string> SplitCommas(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    if (comma > start) out.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

std::string_view SourceName(int64_t resolution) {
  return resolution == 0 ? "raw" : resolution == kRollup5mMs ? "5m" : "1h";
}

void QueryTelemetryRoute(HubContext& hub, Call& call) {
  SeriesQuery q;
  q.metric = call.Query("metric");
  if (q.metric.empty()) {
    return call.Fail(http::Status::bad_request, "query 'metric' is required (e.g. temperature_c)");
  }
  q.device_ids = SplitCommas(call.Query("device"));
  q.site = call.Query("site");
  q.release_id = call.Query("release");
  q.model_version = call.Query("model_version");
  q.to = call.now;
  std::string to = call.Query("to"), from = call.Query("from");
  if (!to.empty() && !ParseMs(to, &q.to)) {
    return call.Fail(http::Status::bad_request, "query 'to': unix time in milliseconds");
  }
  q.from = q.to - 3'600'000;
  if (!from.empty() && !ParseMs(from, &q.from)) {
    return call.Fail(http::Status::bad_request, "query 'from': unix time in milliseconds");
  }
  if (q.from >= q.to) {
    return call.Fail(http::Status::bad_request, "query 'from' must be before 'to'");
  }
  // Default: about 240 points over the range.
  int64_t step = std::max<int64_t>(1000, (q.to - q.from) / 240);
  std::string step_text = call.Query("step");
  if (!step_text.empty() && !ParseStep(step_text, &step)) {
    return call.Fail(http::Status::bad_request,
                     "query 'step': a duration like 60, 90s, 5m, 1h (seconds without a unit)");
  }
  absl::StatusOr<SeriesGroup> group = ParseSeriesGroup(call.Query("group_by", "device"));
  if (!group.ok()) return call.Fail(http::Status::bad_request, MessageOf(group.status()));
  q.group = *group;
  const TelemetryRetention& retention = hub.hub_options().telemetry_retention;
  std::string source = call.Query("source", "auto");
  if (source == "auto") {
    q.resolution_ms = ChooseResolution(retention, call.now, q.from, &step);
  } else if (source == "raw") {
    q.resolution_ms = 0;
  } else if (source == "5m" || source == "1h") {
    q.resolution_ms = source == "5m" ? kRollup5mMs : kRollup1hMs;
    step = std::max<int64_t>(1, (step + q.resolution_ms - 1) / q.resolution_ms) * q.resolution_ms;
  } else {
    return call.Fail(http::Status::bad_request, "query 'source': auto, raw, 5m or 1h");
  }
  q.step_ms = step;
  if ((q.to - q.from) / q.step_ms > kMaxPoints) {
    return call.Fail(http::Status::bad_request,
                     StrCat("the range holds more than ", kMaxPoints,
                            " steps: raise 'step' or narrow 'from'..'to'"));
  }
  q.limit = kMaxPoints + 1;
  absl::StatusOr<std::vector<SeriesPoint>> points = hub.store().QueryTelemetrySeries(q);
  if (!points.ok()) return call.Fail(points.status());
  const bool truncated = static_cast<int64_t>(points->size()) > kMaxPoints;
  if (truncated) points->resize(kMaxPoints);
  json series = json::array();
  const SeriesPoint* previous = nullptr;
  for (const SeriesPoint& p : *points) {
    if (previous == nullptr || previous->group != p.group ||
        previous->labels_json != p.labels_json) {
      json labels = json::parse(p.labels_json, nullptr, false);
      series.push_back({{"group", p.group},
                        {"labels", labels.is_object() ? labels : json::object()},
                        {"points", json::array()}});
    }
    previous = &p;
    series.back()["points"].push_back({{"t", p.bucket_start},
                                       {"count", p.count},
                                       {"mean", p.count > 0 ? p.sum / p.count : 0.0},
                                       {"min", p.min},
                                       {"max", p.max},
                                       {"sum", p.sum}});
  }
  call.Reply(http::Status::ok, {{"metric", q.metric},
                                {"from", q.from},
                                {"to", q.to},
                                {"step_ms", q.step_ms},
                                {"source", SourceName(q.resolution_ms)},
                                {"group_by", NameOf(q.group)},
                                {"truncated", truncated},
                                {"series", std::move(series)}});
}

void ListAlertsRoute(HubContext& hub, Call& call) {
  AlertFilter filter;
  std::string state = call.Query("state", "firing");
  if (state != "all") {
    absl::StatusOr<AlertState> parsed = ParseAlertState(state);
    if (!parsed.ok()) {
      return call.Fail(http::Status::bad_request, "query 'state': firing, resolved or all");
    }
    filter.state = *parsed;
  }
  filter.name = call.Query("name");
  filter.device_id = call.Query("device");
  filter.site = call.Query("site");
  std::string limit = call.Query("limit");
  if (!limit.empty() && (!ParseMs(limit, &filter.limit) || filter.limit < 1)) {
    return call.Fail(http::Status::bad_request, "query 'limit': a whole number >= 1");
  }
  filter.limit = std::min<int64_t>(filter.limit, kMaxPoints);
  absl::StatusOr<std::vector<Alert>> alerts = hub.store().ListAlerts(filter);
  if (!alerts.ok()) return call.Fail(alerts.status());
  json list = json::array();
  int64_t firing = 0;
  for (const Alert& a : *alerts) {
    list.push_back(AlertJson(a));
    if (a.state == AlertState::kFiring) ++firing;
  }
  call.Reply(http::Status::ok, {{"alerts", std::move(list)}, {"firing", firing}});
}

void AlertRulesRoute(HubContext& hub, Call& call) {
  const AlertRules& rules = hub.alerts().rules();
  json list = json::array();
  for (const AlertRuleInfo& r : AlertRuleCatalog()) {
    list.push_back({{"name", r.name},
                    {"severity", r.severity},
                    {"description", r.description},
                    {"enabled", !rules.disabled.contains(std::string(r.name))}});
  }
  WebhookNotifier* notifier = hub.alerts().notifier();
  json webhook = nullptr;
  if (notifier != nullptr) {
    WebhookNotifier::Counters c = notifier->counters();
    webhook = {{"format", notifier->options().format == WebhookFormat::kSlack ? "slack" : "json"},
               {"delivered", c.delivered},
               {"retried", c.retried},
               {"failed", c.failed},
               {"dropped", c.dropped}};
  }
  call.Reply(http::Status::ok, {{"rules", std::move(list)},
                                {"thresholds", AlertRulesJson(rules)},
                                {"interval_ms", hub.hub_options().alert_interval.count()},
                                {"webhook", std::move(webhook)}});
}

}  // namespace

absl::Status AppendAlertMetrics(HubContext& hub, TimeMs now, std::string* out) {
  AlertFilter firing;
  firing.state = AlertState::kFiring;
  firing.limit = 0;
  ASSIGN_OR_RETURN(std::vector<Alert> alerts, hub.store().ListAlerts(firing));
  std::map<std::pair<std::string, std::string>, int64_t> counts;
  // Every rule at its severity, so the series exist (at 0) before anything fires.
  for (const AlertRuleInfo& r : AlertRuleCatalog()) {
    counts[{std::string(r.name), std::string(r.severity)}] = 0;
  }
  for (const Alert& a : alerts) ++counts[{a.name, a.severity}];
  StrAppend(out,
            "# HELP outpost_hub_alerts_firing Alerts firing now, by rule and severity\n"
            "# TYPE outpost_hub_alerts_firing gauge\n");
  for (const auto& [key, count] : counts) {
    StrAppend(out, "outpost_hub_alerts_firing{alert=\"", key.first, "\",severity=\"", key.second,
              "\"} ", count, "\n");
  }
  AlertEngine& engine = hub.alerts();
  StrAppend(out,
            "# HELP outpost_hub_alert_evaluations_total Alert rule evaluations by result\n"
            "# TYPE outpost_hub_alert_evaluations_total counter\n",
            "outpost_hub_alert_evaluations_total{result=\"ok\"} ",
            engine.evaluations() - engine.failed_evaluations(), "\n",
            "outpost_hub_alert_evaluations_total{result=\"error\"} ", engine.failed_evaluations(),
            "\n");
  WebhookNotifier::Counters c;
  if (engine.notifier() != nullptr) c = engine.notifier()->counters();
  StrAppend(out,
            "# HELP outpost_hub_alert_notifications_total Webhook deliveries of alert changes "
            "by outcome (retried counts attempts)\n"
            "# TYPE outpost_hub_alert_notifications_total counter\n");
  for (const auto& [outcome, value] :
       {std::pair{"delivered", c.delivered}, std::pair{"retried", c.retried},
        std::pair{"failed", c.failed}, std::pair{"dropped", c.dropped}}) {
    StrAppend(out, "outpost_hub_alert_notifications_total{outcome=\"", outcome, "\"} ", value,
              "\n");
  }
  ASSIGN_OR_RETURN(TimeMs watermark, hub.store().RollupWatermark());
  StrAppend(out,
            "# HELP outpost_hub_telemetry_rollup_lag_seconds How far telemetry rollups trail "
            "the hub's clock\n"
            "# TYPE outpost_hub_telemetry_rollup_lag_seconds gauge\n"
            "outpost_hub_telemetry_rollup_lag_seconds ",
            watermark > 0 ? (now - watermark) / 1000.0 : 0.0, "\n");
  return absl::OkStatus();
}

void RegisterObservabilityApi(HubContext& hub, Router& router) {
  auto add = [&](const char* method, std::string_view path, Access access,
                 void (*fn)(HubContext&, Call&)) {
    router.Add(method, StrCat(kBase, path), access, [&hub, fn](Call& call) { fn(hub, call); });
  };
  add("GET", "/telemetry", Access::kViewer, &QueryTelemetryRoute);
  add("GET", "/alerts", Access::kViewer, &ListAlertsRoute);
  add("GET", "/alerts/rules", Access::kViewer, &AlertRulesRoute);
}

}  // namespace outpost::hub
