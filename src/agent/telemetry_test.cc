#include "agent/telemetry.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace outpost::agent {
namespace {

namespace fs = std::filesystem;

constexpr const char* kScrape = R"(# HELP outpost_inference_requests_total Requests
# TYPE outpost_inference_requests_total counter
outpost_inference_requests_total{model="a",version="1",status="success"} 90
outpost_inference_requests_total{model="a",version="1",status="failure"} 10
outpost_inference_requests_total{model="b",version="3",status="success"} 5
outpost_inference_latency_seconds{model="a",version="1",quantile="0.5"} 0.002
outpost_inference_latency_seconds{model="a",version="1",quantile="0.95"} 0.004
outpost_inference_latency_seconds{model="b",version="3",quantile="0.95"} 0.009
outpost_inference_latency_seconds{model="b",version="3",quantile="0.99"} NaN
outpost_inferences_per_second{model="a",version="1"} 12.5
outpost_last_inference_timestamp_seconds{model="a",version="1"} 1700000000
outpost_model_loaded{model="a",version="1",provider="cpu"} 1
outpost_build_info{version="0.4.0",onnxruntime="1.30.0"} 1
weird line without value
broken{label="unterminated 3
escaped{path="a\"b\\c"} 7
)";

TEST(TelemetryTest, ParsesTheTextFormatAndSkipsBrokenLines) {
  std::vector<PromSample> samples = ParsePrometheusText(kScrape);
  ASSERT_EQ(samples.size(), 12u);
  EXPECT_EQ(samples[0].name, "outpost_inference_requests_total");
  EXPECT_EQ(samples[0].labels.at("status"), "success");
  EXPECT_EQ(samples[0].value, 90);
  EXPECT_EQ(samples.back().labels.at("path"), "a\"b\\c");
  EXPECT_EQ(samples.back().value, 7);
}

TEST(TelemetryTest, SummaryTakesTheWorstModelsQuantilesAndSumsCounters) {
  RuntimeSummary s = SummariseRuntime(ParsePrometheusText(kScrape));
  EXPECT_EQ(s.requests_success, 95);
  EXPECT_EQ(s.requests_failure, 10);
  EXPECT_DOUBLE_EQ(*s.p50_ms, 2);
  EXPECT_DOUBLE_EQ(*s.p95_ms, 9);
  EXPECT_FALSE(s.p99_ms.has_value());  // NaN: no data in the window
  EXPECT_EQ(s.inferences_per_second, 12.5);
  EXPECT_EQ(s.last_inference_unix, 1700000000);
  EXPECT_EQ(s.model_versions.at("a"), "1");
  EXPECT_EQ(s.runtime_version, "0.4.0");
  EXPECT_EQ(s.onnxruntime_version, "1.30.0");
}

TEST(TelemetryTest, DeviceHealthFromProcAndThermalZones) {
  char dir_template[] = "/tmp/telemetry_test_XXXXXX";
  fs::path dir = mkdtemp(dir_template);
  fs::create_directories(dir / "proc");
  fs::create_directories(dir / "thermal" / "thermal_zone0");
  fs::create_directories(dir / "thermal" / "thermal_zone1");
  std::ofstream(dir / "thermal" / "thermal_zone0" / "temp") << "45000\n";
  std::ofstream(dir / "thermal" / "thermal_zone1" / "temp") << "71500\n";
  std::ofstream(dir / "proc" / "meminfo")
      << "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n";
  std::ofstream(dir / "proc" / "uptime") << "1234.5 99.0\n";
  std::ofstream(dir / "proc" / "stat") << "cpu 100 0 100 800 0 0 0 0 0 0\n";
  TelemetryCollector collector(
      {.state_dir = dir, .thermal_root = dir / "thermal", .proc_root = dir / "proc"});
  nlohmann::json first = collector.Collect(1000, -20);
  std::ofstream(dir / "proc" / "stat") << "cpu 150 0 150 900 0 0 0 0 0 0\n";
  nlohmann::json second = collector.Collect(2000, -20);
  auto value = [](const nlohmann::json& samples,
                  const std::string& metric) -> std::optional<double> {
    for (const auto& s : samples) {
      if (s["metric"] == metric) return s["value"].get<double>();
    }
    return std::nullopt;
  };
  EXPECT_EQ(value(first, "runtime_up"), 0);  // no runtime on this "device"
  EXPECT_EQ(value(first, "temperature_c"), 71.5);
  EXPECT_EQ(value(first, "memory_used_percent"), 75);
  EXPECT_EQ(value(first, "uptime_s"), 1234.5);
  EXPECT_EQ(value(first, "clock_offset_ms"), -20);
  EXPECT_FALSE(value(first, "cpu_percent").has_value());
  EXPECT_EQ(value(second, "cpu_percent"), 50);  // 100 busy of 200 ticks
  EXPECT_TRUE(value(second, "disk_free_bytes").has_value());
  fs::remove_all(dir);
}

TEST(TelemetryTest, ScrapesOutputScoreHistograms) {
  RuntimeSummary s = SummariseRuntime(
      ParsePrometheusText("outpost_output_score_bucket{model=\"m\",version=\"2\",le=\"+Inf\"} 10\n"
                          "outpost_output_score_bucket{model=\"m\",version=\"2\",le=\"0.5\"} 4\n"
                          "outpost_output_score_bucket{model=\"m\",version=\"2\",le=\"1\"} 9\n"
                          "outpost_output_score_sum{model=\"m\",version=\"2\"} 6.5\n"
                          "outpost_output_score_count{model=\"m\",version=\"2\"} 10\n"));
  ASSERT_EQ(s.output_scores.size(), 1u);
  const ScoreHistogramScrape& h = s.output_scores.at({"m", "2"});
  ASSERT_EQ(h.cumulative.size(), 3u);  // sorted by edge
  EXPECT_EQ(h.cumulative[0], (std::pair<double, double>{0.5, 4}));
  EXPECT_EQ(h.cumulative[1], (std::pair<double, double>{1, 9}));
  EXPECT_TRUE(std::isinf(h.cumulative[2].first));
  EXPECT_EQ(h.sum, 6.5);
  EXPECT_EQ(h.count, 10);
}

ScoreHistogramScrape Histogram(std::vector<std::pair<double, double>> cumulative, double sum = 0) {
  ScoreHistogramScrape h;
  h.cumulative = std::move(cumulative);
  h.count = h.cumulative.back().second;
  h.sum = sum;
  return h;
}

TEST(TelemetryTest, IntervalDeltaQuantileAndBins) {
  ScoreHistogramScrape before = Histogram({{0.5, 2}, {0.9, 3}, {1, 4}, {INFINITY, 4}}, 3);
  ScoreHistogramScrape now = Histogram({{0.5, 4}, {0.9, 9}, {1, 14}, {INFINITY, 14}}, 11);
  std::optional<ScoreHistogramScrape> delta = ScoreDelta(now, before);
  ASSERT_TRUE(delta);
  EXPECT_EQ(delta->count, 10);
  EXPECT_EQ(delta->sum, 8);
  EXPECT_EQ(delta->cumulative[1], (std::pair<double, double>{0.9, 6}));
  // A restarted runtime (counts went down) gives no interval.
  EXPECT_FALSE(ScoreDelta(before, now));
  // p50: rank 5 of 10, in (0.5, 0.9] which holds ranks 3..6.
  EXPECT_NEAR(*HistogramQuantile(*delta, 0.5), 0.5 + 0.4 * (5 - 2) / 4.0, 1e-12);
  EXPECT_NEAR(*HistogramQuantile(*delta, 0.1), 0.5 * 1 / 2.0, 1e-12);  // first bucket from 0
  EXPECT_FALSE(HistogramQuantile(Histogram({{1, 0}, {INFINITY, 0}}), 0.5));
  // Bins [0, 0.5, 1, 1.1]: interior edges 0.5 and 1 are runtime edges.
  EXPECT_EQ(*CountsInBins(*delta, {0, 0.5, 1, 1.1}), (std::vector<double>{2, 8, 0}));
  // Bins [0, 0.9, 1]: the scores above 1 (none) would go to the last bin.
  EXPECT_EQ(*CountsInBins(*delta, {0, 0.9, 1}), (std::vector<double>{6, 4}));
  EXPECT_FALSE(CountsInBins(*delta, {0, 0.7, 1}));  // 0.7 is not a runtime edge
}

TEST(TelemetryTest, PopulationStabilityIndex) {
  // Same distribution: 0.
  EXPECT_NEAR(PopulationStabilityIndex({25, 75}, {0.25, 0.75}), 0, 1e-12);
  // By hand: a = (0.5, 0.5), e = (0.25, 0.75).
  const double expected = (0.5 - 0.25) * std::log(0.5 / 0.25) + (0.5 - 0.75) * std::log(0.5 / 0.75);
  EXPECT_NEAR(PopulationStabilityIndex({10, 10}, {0.25, 0.75}), expected, 1e-12);
  // An empty bin is floored at the epsilon instead of giving infinity.
  const double floored =
      (1 - 0.5) * std::log(1 / 0.5) + (kPsiEpsilon - 0.5) * std::log(kPsiEpsilon / 0.5);
  EXPECT_NEAR(PopulationStabilityIndex({7, 0}, {0.5, 0.5}), floored, 1e-12);
}

}  // namespace
}  // namespace outpost::agent
