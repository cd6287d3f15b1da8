#include "agent/telemetry.h"

#include <spdlog/spdlog.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "bundle/manifest.h"
#include "common/atomic_file.h"
#include "common/http_client.h"

namespace outpost::agent {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr double kMinRequestsForLatency = 10;
// Fewer scores than this in an interval say nothing about drift.
constexpr double kMinScoresForDrift = 10;

// One sample. Its time is the heartbeat's (the batch carries it once) and
// empty labels are left out: an idle device's bytes are mostly heartbeats.
json Sample(std::string metric, double value, int64_t /*now_ms*/, json labels = json::object()) {
  json sample = {{"metric", std::move(metric)}, {"value", value}};
  if (!labels.empty()) sample["labels"] = std::move(labels);
  return sample;
}

}  // namespace

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
    } else if (p.name == "process_start_time_seconds") {
      s.process_start_time = p.value;
    } else if (p.name.starts_with("outpost_output_score_")) {
      auto model = p.labels.find("model");
      auto version = p.labels.find("version");
      if (model == p.labels.end() || version == p.labels.end()) continue;
      ScoreHistogramScrape& h = s.output_scores[{model->second, version->second}];
      if (p.name == "outpost_output_score_bucket") {
        auto le = p.labels.find("le");
        if (le == p.labels.end()) continue;
        std::optional<double> edge = ParsePrometheusValue(le->second);
        if (edge && !std::isnan(*edge)) h.cumulative.emplace_back(*edge, p.value);
      } else if (p.name == "outpost_output_score_sum") {
        h.sum = p.value;
      } else if (p.name == "outpost_output_score_count") {
        h.count = p.value;
      }
    } else if (p.name == "outpost_model_loaded" && p.value > 0) {
      auto model = p.labels.find("model");
      auto version = p.labels.find("version");
      if (model != p.labels.end() && version != p.labels.end()) {
        s.model_versions[model->second] = version->second;
      }
    }
  }
  for (auto& [key, h] : s.output_scores) std::sort(h.cumulative.begin(), h.cumulative.end());
  return s;
}

std::optional<ScoreHistogramScrape> ScoreDelta(const ScoreHistogramScrape& now,
                                               const ScoreHistogramScrape& before) {
  if (now.cumulative.size() != before.cumulative.size() || now.count < before.count) {
    return std::nullopt;
  }
  ScoreHistogramScrape delta;
  delta.count = now.count - before.count;
  delta.sum = now.sum - before.sum;
  for (size_t i = 0; i < now.cumulative.size(); ++i) {
    if (now.cumulative[i].first != before.cumulative[i].first ||
        now.cumulative[i].second < before.cumulative[i].second) {
      return std::nullopt;
    }
    delta.cumulative.emplace_back(now.cumulative[i].first,
                                  now.cumulative[i].second - before.cumulative[i].second);
  }
  return delta;
}

std::optional<double> HistogramQuantile(const ScoreHistogramScrape& h, double q) {
  if (h.cumulative.empty()) return std::nullopt;
  const double total = h.cumulative.back().second;
  if (total <= 0) return std::nullopt;
  const double rank = q * total;
  double lower_edge = 0, lower_count = 0;
  for (size_t i = 0; i < h.cumulative.size(); ++i) {
    const auto [edge, count] = h.cumulative[i];
    if (count >= rank) {
      if (std::isinf(edge)) return i > 0 ? h.cumulative[i - 1].first : 0.0;
      if (i == 0) lower_edge = edge > 0 ? 0 : edge;
      if (count == lower_count) return edge;
      return lower_edge + (edge - lower_edge) * (rank - lower_count) / (count - lower_count);
    }
    lower_edge = edge;
    lower_count = count;
  }
  return h.cumulative.back().first;
}

std::optional<std::vector<double>> CountsInBins(const ScoreHistogramScrape& h,
                                                const std::vector<double>& bin_edges) {
  if (bin_edges.size() < 2 || h.cumulative.empty()) return std::nullopt;
  const double total = h.cumulative.back().second;
  auto cumulative_at = [&](double edge) -> std::optional<double> {
    for (const auto& [le, count] : h.cumulative) {
      if (std::abs(le - edge) <= 1e-9 * std::max(1.0, std::abs(edge))) return count;
    }
    return std::nullopt;
  };
  std::vector<double> counts;
  double previous = 0;
  for (size_t i = 1; i + 1 < bin_edges.size(); ++i) {
    std::optional<double> at = cumulative_at(bin_edges[i]);
    if (!at) return std::nullopt;
    counts.push_back(*at - previous);
    previous = *at;
  }
  counts.push_back(total - previous);
  return counts;
}

double PopulationStabilityIndex(const std::vector<double>& counts,
                                const std::vector<double>& expected_proportions) {
  double total = 0;
  for (double c : counts) total += c;
  double psi = 0;
  for (size_t i = 0; i < counts.size() && i < expected_proportions.size(); ++i) {
    const double a = std::max(total > 0 ? counts[i] / total : 0.0, kPsiEpsilon);
    const double e = std::max(expected_proportions[i], kPsiEpsilon);
    psi += (a - e) * std::log(a / e);
  }
  return psi;
}

void TelemetryCollector::AddDrift(const RuntimeSummary& runtime, int64_t now_ms, json& out) {
  // The baselines of the release being served, re-read when it changes.
  const fs::path manifest_path = options_.state_dir / "current" / "manifest.json";
  std::error_code ec;
  const fs::path resolved = fs::canonical(manifest_path, ec);
  auto mtime = ec ? fs::file_time_type() : fs::last_write_time(resolved, ec);
  std::string identity = ec ? "" : StrCat(resolved.string(), "@", mtime.time_since_epoch().count());
  if (identity != baseline_identity_) {
    baseline_identity_ = identity;
    baselines_.clear();
    mismatch_logged_.clear();
    absl::StatusOr<std::string> text = ReadFile(manifest_path);
    if (text.ok()) {
      absl::StatusOr<bundle::Manifest> manifest = bundle::ParseManifest(*text);
      if (manifest.ok()) {
        for (const auto& [model, baseline] : manifest->baselines) {
          baselines_[model] = {baseline.bin_edges, baseline.proportions};
        }
      } else {
        spdlog::warn("telemetry: {}: {}", manifest_path.string(), MessageOf(manifest.status()));
      }
    }
  }
  for (const auto& [key, now] : runtime.output_scores) {
    std::optional<ScoreHistogramScrape> delta = now;  // a version loaded since the last scrape
    if (last_runtime_ && last_runtime_->process_start_time != runtime.process_start_time) {
      delta = std::nullopt;  // a new runtime: its counts start over, no interval yet
    } else if (last_runtime_) {
      auto before = last_runtime_->output_scores.find(key);
      if (before != last_runtime_->output_scores.end()) delta = ScoreDelta(now, before->second);
    }
    if (!delta || delta->count < kMinScoresForDrift) continue;
    json labels = {{"model", key.first}, {"version", key.second}};
    out.push_back(Sample("score_count", delta->count, now_ms, labels));
    out.push_back(Sample("score_mean", delta->sum / delta->count, now_ms, labels));
    if (std::optional<double> p50 = HistogramQuantile(*delta, 0.5)) {
      out.push_back(Sample("score_p50", *p50, now_ms, labels));
    }
    auto baseline = baselines_.find(key.first);
    if (baseline == baselines_.end()) continue;
    std::optional<std::vector<double>> counts = CountsInBins(*delta, baseline->second.first);
    if (!counts) {
      if (!mismatch_logged_[key.first]) {
        spdlog::warn(
            "telemetry: model '{}': the baseline's bin edges are not among the runtime's "
            "output_score buckets; no drift_psi (set output_score.buckets in its config.yaml)",
            key.first);
        mismatch_logged_[key.first] = true;
      }
      continue;
    }
    out.push_back(Sample("drift_psi", PopulationStabilityIndex(*counts, baseline->second.second),
                         now_ms, std::move(labels)));
  }
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
    if (last_runtime_) AddDrift(*runtime, now_ms, out);
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
