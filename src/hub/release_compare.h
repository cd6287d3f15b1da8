// Two releases side by side on the same devices (the dashboard's version
// comparison, GET /api/v1/admin/releases/compare): latency percentiles,
// error rate, throughput and output drift, from the telemetry samples the
// devices sent while they ran each release.
//
// Which release a device ran when comes from its update history (the
// status reports it sent, on the hub's clock): a "committed" report starts
// a span on that release; a "rolled_back" report of the release it runs
// returns it to the release before. Samples are matched to spans by hub
// time, so device clocks do not matter.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "hub/store.h"

namespace outpost::hub {

// A stretch of time a device ran one release: [from, to) in hub time.
struct ReleaseSpan {
  std::string release;
  TimeMs from = 0;
  TimeMs to = 0;
};

// The spans of one device's history. `events_newest_first` as
// Store::ListDeviceEvents returns them; the span still running ends at
// `now`. Pure function.
std::vector<ReleaseSpan> ReleaseSpansOf(const std::vector<DeviceEvent>& events_newest_first,
                                        TimeMs now);

// The metrics compared (the agent's telemetry names). drift_psi is the
// population stability index of a model's outputs against the release's
// baseline, present only when devices report it.
inline constexpr const char* kComparedMetrics[] = {"latency_p50_ms", "latency_p95_ms",
                                                   "latency_p99_ms", "error_rate",
                                                   "request_rate",   "drift_psi"};

struct CompareRequest {
  std::string release_a;
  std::string release_b;
  DeviceFilter devices;      // which devices may take part (site, labels)
  int64_t max_points = 600;  // per release and metric in "series"
};

// The comparison, as the route answers it:
//   {"a": "r1", "b": "r2", "devices": ["dev-0", ...],   // ran both releases
//    "releases": {"r1": {"devices": 3, "samples": {...per metric},
//                        "latency_p50_ms": 1.2, ..., "error_rate": 0.0,
//                        "throughput_rps": 41.5, "drift_psi": null}, "r2": {...}},
//    "series": {"r1": {"latency_p95_ms": [[seconds since the device switched, value], ...]}}}
// Latency figures are medians of the devices' reported percentiles; error
// rate and throughput (requests/s per device) are means; a figure with no
// sample is null. Only devices that ran both releases count, so a slower
// site cannot make one release look slower.
// Errors: InvalidArgument (a or b empty, or the same), NotFound (no such
// release), those of the store.
absl::StatusOr<nlohmann::json> CompareReleases(Store& store, const CompareRequest& request,
                                               TimeMs now);

}  // namespace outpost::hub
