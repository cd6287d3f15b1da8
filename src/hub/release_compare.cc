#include "hub/release_compare.h"

#include <algorithm>
#include <map>
#include <set>

namespace outpost::hub {
namespace {

using json = nlohmann::json;

// Device history read per device: enough for months of updates.
constexpr int64_t kEventsPerDevice = 1000;
// Samples read per release and metric before the answer says "truncated".
constexpr int64_t kSampleLimit = 200000;

json Median(std::vector<double> values) {
  if (values.empty()) return nullptr;
  size_t mid = values.size() / 2;
  std::nth_element(values.begin(), values.begin() + mid, values.end());
  double upper = values[mid];
  if (values.size() % 2 == 1) return upper;
  double lower = *std::max_element(values.begin(), values.begin() + mid);
  return (lower + upper) / 2;
}

json Mean(const std::vector<double>& values) {
  if (values.empty()) return nullptr;
  double sum = 0;
  for (double v : values) sum += v;
  return sum / values.size();
}

// Every `step`-th point so at most `max_points` remain, the last kept.
json Thin(std::vector<std::pair<double, double>> points, int64_t max_points) {
  std::sort(points.begin(), points.end());
  json out = json::array();
  if (points.empty()) return out;
  size_t step = max_points > 0 ? (points.size() + max_points - 1) / max_points : 1;
  if (step == 0) step = 1;
  for (size_t i = 0; i < points.size(); i += step) {
    out.push_back({points[i].first, points[i].second});
  }
  return out;
}

}  // namespace

std::vector<ReleaseSpan> ReleaseSpansOf(const std::vector<DeviceEvent>& events_newest_first,
                                        TimeMs now) {
  std::vector<ReleaseSpan> spans;
  std::string running, before;
  auto switch_to = [&](const std::string& release, TimeMs at) {
    if (!spans.empty() && spans.back().to == 0) spans.back().to = at;
    if (!release.empty()) spans.push_back({release, at, 0});
  };
  for (auto it = events_newest_first.rbegin(); it != events_newest_first.rend(); ++it) {
    const DeviceEvent& e = *it;
    if (e.state == "committed" && !e.release.empty() && e.release != running) {
      before = running;
      running = e.release;
      switch_to(running, e.hub_time);
    } else if (e.state == "rolled_back" && e.release == running) {
      running = before;
      before.clear();
      switch_to(running, e.hub_time);
    }
  }
  if (!spans.empty() && spans.back().to == 0) spans.back().to = std::max(now, spans.back().from);
  // Zero-length spans (two reports in the same millisecond) hold no sample.
  std::erase_if(spans, [](const ReleaseSpan& s) { return s.to <= s.from; });
  return spans;
}

absl::StatusOr<json> CompareReleases(Store& store, const CompareRequest& request, TimeMs now) {
  if (request.release_a.empty() || request.release_b.empty()) {
    return absl::InvalidArgumentError("name two releases: ?a=<release>&b=<release>");
  }
  if (request.release_a == request.release_b) {
    return absl::InvalidArgumentError(
        StrCat("compare two different releases ('", request.release_a, "' twice)"));
  }
  for (const std::string& id : {request.release_a, request.release_b}) {
    RETURN_IF_ERROR(store.GetRelease(id).status());
  }
  const std::string* names[] = {&request.release_a, &request.release_b};

  // Spans of both releases on the devices that ran both.
  ASSIGN_OR_RETURN(std::vector<Device> devices, store.ListDevices(request.devices));
  std::map<std::string, std::vector<ReleaseSpan>> spans[2];  // by device id
  std::vector<std::string> common;
  TimeMs earliest[2] = {INT64_MAX, INT64_MAX};
  TimeMs latest[2] = {0, 0};
  for (const Device& d : devices) {
    ASSIGN_OR_RETURN(std::vector<DeviceEvent> events,
                     store.ListDeviceEvents(d.id, 0, kEventsPerDevice));
    std::vector<ReleaseSpan> all = ReleaseSpansOf(events, now);
    std::vector<ReleaseSpan> mine[2];
    for (ReleaseSpan& s : all) {
      for (int r = 0; r < 2; ++r) {
        if (s.release == *names[r]) mine[r].push_back(s);
      }
    }
    if (mine[0].empty() || mine[1].empty()) continue;
    common.push_back(d.id);
    for (int r = 0; r < 2; ++r) {
      for (const ReleaseSpan& s : mine[r]) {
        earliest[r] = std::min(earliest[r], s.from);
        latest[r] = std::max(latest[r], s.to);
      }
      spans[r][d.id] = std::move(mine[r]);
    }
  }

  json out = {{"a", request.release_a},
              {"b", request.release_b},
              {"devices", common},
              {"releases", json::object()},
              {"series", json::object()}};
  bool truncated = false;
  for (int r = 0; r < 2; ++r) {
    json figures = {{"devices", static_cast<int64_t>(common.size())}};
    json samples = json::object();
    json series = json::object();
    for (const char* metric : kComparedMetrics) {
      std::vector<double> values;
      std::vector<std::pair<double, double>> points;
      if (!common.empty()) {
        ASSIGN_OR_RETURN(std::vector<StoredSample> stored,
                         store.QueryTelemetry({.device_ids = common,
                                               .metric = metric,
                                               .from = earliest[r],
                                               .to = latest[r],
                                               .by_hub_time = true,
                                               .limit = kSampleLimit}));
        if (static_cast<int64_t>(stored.size()) >= kSampleLimit) truncated = true;
        for (const StoredSample& s : stored) {
          for (const ReleaseSpan& span : spans[r][s.device_id]) {
            if (s.hub_time >= span.from && s.hub_time < span.to) {
              values.push_back(s.value);
              points.emplace_back((s.hub_time - span.from) / 1000.0, s.value);
              break;
            }
          }
        }
      }
      samples[metric] = static_cast<int64_t>(values.size());
      series[metric] = Thin(std::move(points), request.max_points);
      std::string_view name = metric;
      if (name.starts_with("latency_")) {
        figures[metric] = Median(std::move(values));
      } else if (name == "request_rate") {
        figures["throughput_rps"] = Mean(values);
      } else {
        figures[metric] = Mean(values);
      }
    }
    figures["samples"] = std::move(samples);
    out["releases"][*names[r]] = std::move(figures);
    out["series"][*names[r]] = std::move(series);
  }
  out["truncated"] = truncated;
  return out;
}

}  // namespace outpost::hub
