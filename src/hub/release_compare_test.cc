// The version comparison on a real SQLite store: spans from device
// histories, samples matched to them by hub time, figures per release over
// the devices that ran both.
#include "hub/release_compare.h"

#include <gtest/gtest.h>

#include "bundle/test_support.h"
#include "common/sha256.h"

namespace outpost::hub {
namespace {

using bundle::testing::TempDir;
using json = nlohmann::json;

DeviceEvent Event(int64_t seq, std::string state, std::string release, TimeMs hub_time) {
  return {"d", seq, std::move(state), std::move(release), "", 1, hub_time, hub_time};
}

TEST(ReleaseSpansTest, CommitsStartSpansAndARollbackReturnsToTheReleaseBefore) {
  // Newest first, as the store lists them.
  std::vector<DeviceEvent> events = {
      Event(6, "committed", "r3", 9000),   Event(5, "rolled_back", "r2", 7000),
      Event(4, "soaking", "r2", 5500),     Event(3, "committed", "r2", 5000),
      Event(2, "downloading", "r2", 4000), Event(1, "committed", "r1", 1000),
  };
  std::vector<ReleaseSpan> spans = ReleaseSpansOf(events, 12000);
  ASSERT_EQ(spans.size(), 4u);
  EXPECT_EQ(spans[0].release, "r1");
  EXPECT_EQ(spans[0].from, 1000);
  EXPECT_EQ(spans[0].to, 5000);
  EXPECT_EQ(spans[1].release, "r2");
  EXPECT_EQ(spans[1].to, 7000);
  EXPECT_EQ(spans[2].release, "r1");  // back on r1 after the rollback
  EXPECT_EQ(spans[2].from, 7000);
  EXPECT_EQ(spans[2].to, 9000);
  EXPECT_EQ(spans[3].release, "r3");
  EXPECT_EQ(spans[3].to, 12000);  // still running
}

TEST(ReleaseSpansTest, ARollbackOfAReleaseNeverCommittedChangesNothing) {
  std::vector<DeviceEvent> events = {Event(3, "rolled_back", "r2", 6000),
                                     Event(2, "starting", "r2", 5000),
                                     Event(1, "committed", "r1", 1000)};
  std::vector<ReleaseSpan> spans = ReleaseSpansOf(events, 8000);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].release, "r1");
  EXPECT_EQ(spans[0].to, 8000);
  EXPECT_TRUE(ReleaseSpansOf({}, 8000).empty());
}

class CompareReleasesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(StrCat("sqlite://", (dir_ / "hub.db").string()));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    for (const char* id : {"r1", "r2", "r3"}) {
      Release r;
      r.id = id;
      r.sequence = id[1] - '0';
      r.bundle_sha256 = Sha256::HexOf(id);
      r.manifest_json = "{}";
      ASSERT_TRUE(store_->InsertRelease(r).ok());
    }
  }

  void AddDevice(const std::string& id, const std::string& site) {
    Device d;
    d.id = id;
    d.credential_hash = Sha256::HexOf(id);
    d.site = site;
    ASSERT_TRUE(store_->CreateDevice(d, 1).ok());
  }

  void Report(const std::string& id, int64_t seq, const std::string& state,
              const std::string& release, TimeMs at) {
    DeviceReport report;
    report.event = {id, seq, state, release, "", 1, at, at};
    ASSERT_TRUE(store_->RecordDeviceReport(report).ok());
  }

  // One heartbeat's samples, received by the hub at `at`.
  void Beat(const std::string& id, TimeMs at, double p95, double errors, double rate) {
    TelemetryBatch batch{id, StrCat("b-", at), at, {}};
    batch.samples = {{"latency_p50_ms", at, p95 / 2},
                     {"latency_p95_ms", at, p95},
                     {"latency_p99_ms", at, p95 * 2},
                     {"error_rate", at, errors},
                     {"request_rate", at, rate}};
    ASSERT_TRUE(store_->InsertTelemetryBatch(batch).ok());
  }

  TempDir dir_;
  std::unique_ptr<Store> store_;
};

TEST_F(CompareReleasesTest, FiguresPerReleaseOverTheDevicesThatRanBoth) {
  // dev-a and dev-b: r1 from 1 s, r2 from 20 s. dev-c only ever ran r1,
  // very slowly: it must not count.
  for (const char* id : {"dev-a", "dev-b", "dev-c"}) AddDevice(id, "north");
  for (const char* id : {"dev-a", "dev-b", "dev-c"}) Report(id, 1, "committed", "r1", 1000);
  for (const char* id : {"dev-a", "dev-b"}) Report(id, 2, "committed", "r2", 20000);
  for (TimeMs t = 2000; t < 20000; t += 2000) {
    Beat("dev-a", t, 10, 0.0, 40);
    Beat("dev-b", t, 12, 0.1, 60);
    Beat("dev-c", t, 900, 0.9, 1);
  }
  for (TimeMs t = 21000; t < 30000; t += 2000) {
    Beat("dev-a", t, 30, 0.5, 20);
    Beat("dev-b", t, 34, 0.5, 20);
  }
  auto result = CompareReleases(*store_, {.release_a = "r1", .release_b = "r2"}, 31000);
  ASSERT_TRUE(result.ok()) << result.status();
  const json& out = *result;
  EXPECT_EQ(out["devices"], json({"dev-a", "dev-b"}));
  const json& r1 = out["releases"]["r1"];
  const json& r2 = out["releases"]["r2"];
  EXPECT_EQ(r1["samples"]["latency_p95_ms"], 18);  // 9 beats x 2 devices
  EXPECT_EQ(r2["samples"]["latency_p95_ms"], 10);
  EXPECT_DOUBLE_EQ(r1["latency_p95_ms"].get<double>(), 11);  // median of 10s and 12s
  EXPECT_DOUBLE_EQ(r1["latency_p50_ms"].get<double>(), 5.5);
  EXPECT_DOUBLE_EQ(r1["latency_p99_ms"].get<double>(), 22);
  EXPECT_DOUBLE_EQ(r2["latency_p95_ms"].get<double>(), 32);
  EXPECT_NEAR(r1["error_rate"].get<double>(), 0.05, 1e-12);
  EXPECT_DOUBLE_EQ(r2["error_rate"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(r1["throughput_rps"].get<double>(), 50);
  EXPECT_DOUBLE_EQ(r2["throughput_rps"].get<double>(), 20);
  EXPECT_TRUE(r1["drift_psi"].is_null());
  EXPECT_EQ(r1["samples"]["drift_psi"], 0);
  // Series: seconds since each device switched to the release.
  const json& series = out["series"]["r2"]["latency_p95_ms"];
  ASSERT_EQ(series.size(), 10u);
  EXPECT_DOUBLE_EQ(series[0][0].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(series.back()[0].get<double>(), 9.0);
  EXPECT_FALSE(out["truncated"].get<bool>());
}

TEST_F(CompareReleasesTest, ARolledBackDevicesSamplesGoBackToTheOlderRelease) {
  AddDevice("dev-a", "north");
  Report("dev-a", 1, "committed", "r1", 1000);
  Report("dev-a", 2, "committed", "r2", 10000);
  Report("dev-a", 3, "rolled_back", "r2", 15000);
  Beat("dev-a", 5000, 10, 0, 10);
  Beat("dev-a", 12000, 50, 0, 10);
  Beat("dev-a", 17000, 11, 0, 10);  // on r1 again
  auto result = CompareReleases(*store_, {.release_a = "r1", .release_b = "r2"}, 20000);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ((*result)["releases"]["r1"]["samples"]["latency_p95_ms"], 2);
  EXPECT_DOUBLE_EQ((*result)["releases"]["r1"]["latency_p95_ms"].get<double>(), 10.5);
  EXPECT_DOUBLE_EQ((*result)["releases"]["r2"]["latency_p95_ms"].get<double>(), 50);
}

TEST_F(CompareReleasesTest, TheDeviceFilterAndDevicesWithoutBothReleases) {
  AddDevice("dev-a", "north");
  AddDevice("dev-b", "south");
  for (const char* id : {"dev-a", "dev-b"}) {
    Report(id, 1, "committed", "r1", 1000);
    Report(id, 2, "committed", "r2", 5000);
  }
  Beat("dev-a", 2000, 10, 0, 10);
  Beat("dev-b", 2000, 20, 0, 10);
  DeviceFilter south;
  south.site = "south";
  auto result =
      CompareReleases(*store_, {.release_a = "r1", .release_b = "r2", .devices = south}, 9000);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ((*result)["devices"], json({"dev-b"}));
  EXPECT_DOUBLE_EQ((*result)["releases"]["r1"]["latency_p95_ms"].get<double>(), 20);
  // Nobody ran r3: no devices, null figures, not an error.
  result = CompareReleases(*store_, {.release_a = "r1", .release_b = "r3"}, 9000);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE((*result)["devices"].empty());
  EXPECT_TRUE((*result)["releases"]["r3"]["latency_p95_ms"].is_null());
}

TEST_F(CompareReleasesTest, BadRequestsAreRefused) {
  EXPECT_EQ(CompareReleases(*store_, {.release_a = "r1"}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompareReleases(*store_, {.release_a = "r1", .release_b = "r1"}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompareReleases(*store_, {.release_a = "r1", .release_b = "nope"}, 1).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace outpost::hub
