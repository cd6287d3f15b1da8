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

#include "common/status.h"

namespace outpost::agent {

// One value of the Prometheus text format.
struct PromSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
// Parses the text exposition format (comments skipped; malformed lines
// skipped, not fatal: a heartbeat should carry what it can).
std::vector<PromSample> ParsePrometheusText(std::string_view text);

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
};
RuntimeSummary SummariseRuntime(const std::vector<PromSample>& samples);

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

  const TelemetryOptions options_;
  std::optional<RuntimeSummary> last_runtime_;
  int64_t last_time_ms_ = 0;
  uint64_t last_cpu_busy_ = 0, last_cpu_total_ = 0;
};

}  // namespace outpost::agent
