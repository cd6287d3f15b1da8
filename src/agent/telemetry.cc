#include "agent/telemetry.h"

#include <sys/statvfs.h>

#include <charconv>
#include <cmath>
#include <fstream>
#include <sstream>

#include "common/atomic_file.h"
#include "common/http_client.h"

namespace outpost::agent {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr double kMinRequestsForLatency = 10;

std::string_view TrimLeft(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  return s;
}

std::optional<double> ParseDouble(std::string_view s) {
  if (s == "+Inf") return INFINITY;
  if (s == "-Inf") return -INFINITY;
  if (s == "NaN") return NAN;
  double value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

// One sample. Its time is the heartbeat's (the batch carries it once) and
// empty labels are left out: an idle device's bytes are mostly heartbeats.
json Sample(std::string metric, double value, int64_t /*now_ms*/, json labels = json::object()) {
  json sample = {{"metric", std::move(metric)}, {"value", value}};
  if (!labels.empty()) sample["labels"] = std::move(labels);
  return sample;
}

}  // namespace

std::vector<PromSample> ParsePrometheusText(std::string_view text) {
  std::vector<PromSample> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    line = TrimLeft(line);
    if (line.empty() || line.front() == '#') continue;
    PromSample sample;
    size_t name_end = line.find_first_of("{ ");
    if (name_end == std::string_view::npos) continue;
    sample.name = std::string(line.substr(0, name_end));
    std::string_view rest = line.substr(name_end);
    bool ok = true;
    if (rest.front() == '{') {
      rest.remove_prefix(1);
      while (ok && !rest.empty() && rest.front() != '}') {
        size_t eq = rest.find('=');
        if (eq == std::string_view::npos || eq + 1 >= rest.size() || rest[eq + 1] != '"') {
          ok = false;
          break;
        }
        std::string key(TrimLeft(rest.substr(0, eq)));
        std::string value;
        size_t i = eq + 2;
        for (; i < rest.size() && rest[i] != '"'; ++i) {
          if (rest[i] == '\\' && i + 1 < rest.size()) {
            ++i;
            value.push_back(rest[i] == 'n' ? '\n' : rest[i]);
          } else {
            value.push_back(rest[i]);
          }
        }
        if (i >= rest.size()) {
          ok = false;
          break;
        }
        sample.labels[key] = std::move(value);
        rest.remove_prefix(i + 1);
        if (!rest.empty() && rest.front() == ',') rest.remove_prefix(1);
      }
      if (!ok || rest.empty()) continue;
      rest.remove_prefix(1);  // '}'
    }
    rest = TrimLeft(rest);
    std::string_view value_text = rest.substr(0, rest.find(' '));
    std::optional<double> value = ParseDouble(value_text);
    if (!value) continue;
    sample.value = *value;
    out.push_back(std::move(sample));
  }
  return out;
}

RuntimeSummary SummariseRuntime(const std::vector<PromSample>& samples) {
  RuntimeSummary s;
  auto worst = [](std::optional<double>& slot, double ms) {
    if (std::isfinite(ms)) slot = slot ? std::max(*slot, ms) : ms;
  };
  for (const PromSample& p : samples) {
    if (p.name == "outpost_inference_requests_total") {
      auto status = p.labels.find("status");
      if (status != p.labels.end() && status->second == "success") s.requests_success += p.value;
      if (status != p.labels.end() && status->second == "failure") s.requests_failure += p.value;
    } else if (p.name == "outpost_inference_latency_seconds") {
      auto q = p.labels.find("quantile");
      if (q == p.labels.end() || std::isnan(p.value)) continue;
      if (q->second == "0.5") worst(s.p50_ms, p.value * 1000);
      if (q->second == "0.95") worst(s.p95_ms, p.value * 1000);
      if (q->second == "0.99") worst(s.p99_ms, p.value * 1000);
    } else if (p.name == "outpost_inferences_per_second") {
      s.inferences_per_second += p.value;
    } else if (p.name == "outpost_last_inference_timestamp_seconds") {
      s.last_inference_unix = std::max(s.last_inference_unix, p.value);
    } else if (p.name == "outpost_build_info") {
      auto version = p.labels.find("version");
      auto ort = p.labels.find("onnxruntime");
      if (version != p.labels.end()) s.runtime_version = version->second;
      if (ort != p.labels.end()) s.onnxruntime_version = ort->second;
    } else if (p.name == "outpost_model_loaded" && p.value > 0) {
      auto model = p.labels.find("model");
      auto version = p.labels.find("version");
      if (model != p.labels.end() && version != p.labels.end()) {
        s.model_versions[model->second] = version->second;
      }
    }
  }
  return s;
}

std::optional<RuntimeSummary> TelemetryCollector::ScrapeRuntime() {
  absl::StatusOr<std::string> port_text = ReadFile(options_.state_dir / "current" / "port.json");
  if (!port_text.ok()) return std::nullopt;
  json port = json::parse(*port_text, nullptr, false);
  if (!port.is_object() || !port.contains("http") || !port["http"].is_number_integer()) {
    return std::nullopt;
  }
  static thread_local std::unique_ptr<HttpClient> client = [] {
    auto created = HttpClient::Create({.timeout = std::chrono::seconds(3)});
    return created.ok() ? std::move(*created) : nullptr;
  }();
  if (client == nullptr) return std::nullopt;
  absl::StatusOr<HttpResponse> response =
      client->Send({.url = StrCat("http://127.0.0.1:", port["http"].get<int>(), "/metrics")});
  if (!response.ok() || response->status != 200) return std::nullopt;
  return SummariseRuntime(ParsePrometheusText(response->body));
}

json TelemetryCollector::Collect(int64_t now_ms, int64_t clock_offset_ms) {
  json out = json::array();
  std::optional<RuntimeSummary> runtime = ScrapeRuntime();
  out.push_back(Sample("runtime_up", runtime ? 1 : 0, now_ms));
  if (runtime) {
    const double elapsed_s = last_time_ms_ > 0 ? (now_ms - last_time_ms_) / 1000.0 : 0;
    out.push_back(Sample("inferences_per_second", runtime->inferences_per_second, now_ms));
    if (runtime->last_inference_unix > 0) {
      out.push_back(Sample("last_inference_age_s",
                           std::max(0.0, now_ms / 1000.0 - runtime->last_inference_unix), now_ms));
    }
    // Rates over the interval; a runtime restart (counters went down)
    // starts over.
    if (last_runtime_ && elapsed_s > 0 &&
        runtime->requests_success >= last_runtime_->requests_success &&
        runtime->requests_failure >= last_runtime_->requests_failure) {
      double ok = runtime->requests_success - last_runtime_->requests_success;
      double failed = runtime->requests_failure - last_runtime_->requests_failure;
      out.push_back(Sample("requests", ok + failed, now_ms));
      out.push_back(Sample("request_rate", (ok + failed) / elapsed_s, now_ms));
      out.push_back(Sample("error_rate", ok + failed > 0 ? failed / (ok + failed) : 0, now_ms));
      // Quantiles of a handful of requests (self-tests, the first calls
      // after a start) say nothing about the model's speed; rollout gates
      // compare these, so they are sent only for a real workload.
      if (ok + failed >= kMinRequestsForLatency) {
        if (runtime->p50_ms) out.push_back(Sample("latency_p50_ms", *runtime->p50_ms, now_ms));
        if (runtime->p95_ms) out.push_back(Sample("latency_p95_ms", *runtime->p95_ms, now_ms));
        if (runtime->p99_ms) out.push_back(Sample("latency_p99_ms", *runtime->p99_ms, now_ms));
      }
    }
    for (const auto& [model, version] : runtime->model_versions) {
      out.push_back(Sample("model_loaded", 1, now_ms, {{"model", model}, {"version", version}}));
    }
    if (!runtime->runtime_version.empty()) {
      out.push_back(Sample(
          "runtime_info", 1, now_ms,
          {{"version", runtime->runtime_version}, {"onnxruntime", runtime->onnxruntime_version}}));
    }
    last_runtime_ = runtime;
  }
  last_time_ms_ = now_ms;

  // CPU busy share since the last call, from /proc/stat's first line.
  std::ifstream stat(options_.proc_root / "stat");
  std::string cpu;
  uint64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  if (stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal) {
    uint64_t busy = user + nice + system + irq + softirq + steal;
    uint64_t total = busy + idle + iowait;
    if (last_cpu_total_ > 0 && total > last_cpu_total_) {
      out.push_back(Sample("cpu_percent",
                           100.0 * (busy - last_cpu_busy_) / (total - last_cpu_total_), now_ms));
    }
    last_cpu_busy_ = busy;
    last_cpu_total_ = total;
  }
  std::ifstream meminfo(options_.proc_root / "meminfo");
  std::string key;
  uint64_t kb = 0, mem_total = 0, mem_available = 0;
  std::string unit;
  while (meminfo >> key >> kb) {
    std::getline(meminfo, unit);
    if (key == "MemTotal:") mem_total = kb;
    if (key == "MemAvailable:") mem_available = kb;
  }
  if (mem_total > 0) {
    out.push_back(
        Sample("memory_used_percent", 100.0 * (mem_total - mem_available) / mem_total, now_ms));
  }
  struct statvfs fs_stat {};
  if (statvfs(options_.state_dir.c_str(), &fs_stat) == 0 && fs_stat.f_blocks > 0) {
    out.push_back(Sample("disk_free_bytes",
                         static_cast<double>(fs_stat.f_bavail) * fs_stat.f_frsize, now_ms));
    out.push_back(Sample("disk_used_percent",
                         100.0 * (fs_stat.f_blocks - fs_stat.f_bfree) / fs_stat.f_blocks, now_ms));
  }
  // The hottest thermal zone (SoC boards have several).
  std::optional<double> hottest;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(options_.thermal_root, ec)) {
    std::ifstream temp(entry.path() / "temp");
    long millideg = 0;
    if (temp >> millideg) hottest = std::max(hottest.value_or(-273.0), millideg / 1000.0);
  }
  if (hottest) out.push_back(Sample("temperature_c", *hottest, now_ms));
  std::ifstream uptime(options_.proc_root / "uptime");
  double up = 0;
  if (uptime >> up) out.push_back(Sample("uptime_s", up, now_ms));
  out.push_back(Sample("clock_offset_ms", static_cast<double>(clock_offset_ms), now_ms));
  return out;
}

}  // namespace outpost::agent
