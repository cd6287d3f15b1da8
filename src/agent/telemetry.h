// The device's heartbeat: what the runtime did (scraped from outpost-serve's
// /metrics on loopback) and how the device is (CPU, memory, disk,
// temperature, uptime), as telemetry samples for the hub's rollout gates,
// alerts and dashboard (docs/device-api.md).
//
// Thread safety: a TelemetryCollector is used by one thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/prometheus_text.h"
#include "common/status.h"

namespace outpost::agent {

using outpost::ParsePrometheusText;
using outpost::PromSample;

// One model version's `outpost_output_score` histogram as scraped:
// cumulative counts by upper edge (ascending, the last +Inf).
struct ScoreHistogramScrape {
  std::vector<std::pair<double, double>> cumulative;  // (le, count)
  double sum = 0;
  double count = 0;
};
using ModelVersionKey = std::pair<std::string, std::string>;  // (model, version)

// Summary of a runtime scrape, over every model it serves.
struct RuntimeSummary {
  double requests_success = 0;  // counters since the runtime started
  double requests_failure = 0;
  std::optional<double> p50_ms, p95_ms, p99_ms;  // worst model's rolling quantiles
  double inferences_per_second = 0;
  double last_inference_unix = 0;                     // 0 = never
  std::map<std::string, std::string> model_versions;  // model -> version serving
  std::string runtime_version;      // outpost-serve's (outpost_build_info), "" = unknown
  std::string onnxruntime_version;  // the ONNX Runtime library it runs on
  std::map<ModelVersionKey, ScoreHistogramScrape> output_scores;
  double process_start_time = 0;  // tells a restarted runtime from a busy one
};
RuntimeSummary SummariseRuntime(const std::vector<PromSample>& samples);

// --- Drift (docs/agent.md "Drift") ---
//
// The scores of an interval are `now - before` (nullopt when the runtime
// restarted: a count went down, or the edges changed).
std::optional<ScoreHistogramScrape> ScoreDelta(const ScoreHistogramScrape& now,
                                               const ScoreHistogramScrape& before);
// Linear interpolation inside the bucket holding the q-quantile, as
// Prometheus' histogram_quantile (the lowest bucket's lower edge is 0 when
// its upper edge is positive; a quantile in +Inf is the highest finite
// edge). nullopt when empty.
std::optional<double> HistogramQuantile(const ScoreHistogramScrape& h, double q);
// The histogram's counts in the baseline's bins. Every interior baseline
// edge must be one of the histogram's edges (else nullopt: the runtime's
// buckets do not match the bundle's baseline); scores below the first
// edge count in the first bin, above the last edge in the last bin.
std::optional<std::vector<double>> CountsInBins(const ScoreHistogramScrape& h,
                                                const std::vector<double>& bin_edges);
// Population stability index of observed counts against expected
// proportions (same bins): sum over bins of (a - e) * ln(a / e), a and e
// proportions, each floored at kPsiEpsilon so empty bins stay finite.
inline constexpr double kPsiEpsilon = 1e-4;
double PopulationStabilityIndex(const std::vector<double>& counts,
                                const std::vector<double>& expected_proportions);

struct TelemetryOptions {
  std::filesystem::path state_dir;  // <state>/current/port.json names the runtime's port
  std::filesystem::path thermal_root = "/sys/class/thermal";
  std::filesystem::path proc_root = "/proc";
};

class TelemetryCollector {
 public:
  explicit TelemetryCollector(TelemetryOptions options) : options_(std::move(options)) {}

  // One heartbeat's samples: [{"metric", "value", "labels"?}] (all taken
  // at `now_ms`, which the batch carries as its time_ms),
  // metric names as in docs/device-api.md. Rates (requests, errors, CPU)
  // are over the time since the previous call; the first call has none.
  nlohmann::json Collect(int64_t now_ms, int64_t clock_offset_ms);

 private:
  std::optional<RuntimeSummary> ScrapeRuntime();
  void AddDrift(const RuntimeSummary& runtime, int64_t now_ms, nlohmann::json& out);

  const TelemetryOptions options_;
  std::optional<RuntimeSummary> last_runtime_;
  int64_t last_time_ms_ = 0;
  uint64_t last_cpu_busy_ = 0, last_cpu_total_ = 0;
  // Baselines of the release behind `current`, cached by manifest identity.
  std::string baseline_identity_;
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> baselines_;
  std::map<std::string, bool> mismatch_logged_;
};

}  // namespace outpost::agent
