#include "agent/telemetry.h"

#include <gtest/gtest.h>
#include <stdlib.h>

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

}  // namespace
}  // namespace outpost::agent
