// Rollups and retention on a real (SQLite) store: a maintenance pass folds
// samples before it expires them, and queries pick their source by range.
#include "hub/telemetry_retention.h"

#include <gtest/gtest.h>

#include "bundle/test_support.h"
#include "common/sha256.h"

namespace outpost::hub {
namespace {

using bundle::testing::TempDir;
using namespace std::chrono_literals;

constexpr int64_t kHour = 3'600'000;
constexpr TimeMs kNow = 1'700'000'000'000 - 1'700'000'000'000 % kHour;

TEST(TelemetryRetentionTest, MaintenanceFoldsThenExpires) {
  TempDir dir;
  auto store = Store::Open(StrCat("sqlite://", (dir.path() / "hub.db").string()));
  ASSERT_TRUE(store.ok()) << store.status();
  Store& s = **store;
  Device d;
  d.id = "cam-1";
  d.credential_hash = Sha256::HexOf("cam-1");
  ASSERT_TRUE(s.CreateDevice(d, 0).ok());
  // A sample 50 hours old and one 1 hour old (device time = hub time).
  for (int64_t age : {50 * kHour, 1 * kHour}) {
    ASSERT_TRUE(
        s.InsertTelemetryBatch(
             {"cam-1", StrCat("b", age), kNow - age, {{"temperature_c", kNow - age, 40}}, "r1", ""})
            .ok());
  }
  TelemetryRetention retention;  // raw 48 h
  auto result = RunTelemetryMaintenance(s, retention, kNow);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->folded, 2);
  EXPECT_EQ(result->raw_deleted, 1);  // the 50-hour-old one, after folding it
  EXPECT_EQ(*s.RollupWatermark(), kNow - 60'000);

  // The old sample lives on in both rollups.
  for (int64_t resolution : RollupResolutions()) {
    SeriesQuery q;
    q.metric = "temperature_c";
    q.resolution_ms = resolution;
    q.step_ms = kHour;
    auto points = s.QueryTelemetrySeries(q);
    ASSERT_TRUE(points.ok());
    ASSERT_EQ(points->size(), 2u) << resolution;
    EXPECT_EQ((*points)[0].bucket_start, kNow - 50 * kHour);
  }
  // A pass 15 days later expires the 5-minute rollup (14 days), keeps the hour one.
  result = RunTelemetryMaintenance(s, retention, kNow + 15 * 24 * kHour);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->rollups_deleted, 2);
  SeriesQuery hourly;
  hourly.metric = "temperature_c";
  hourly.resolution_ms = kRollup1hMs;
  hourly.step_ms = kHour;
  EXPECT_EQ(s.QueryTelemetrySeries(hourly)->size(), 2u);
}

TEST(TelemetryRetentionTest, QueriesReadRawThenFinerThenCoarserRollups) {
  TelemetryRetention r;  // raw 48 h, 5 m 14 d
  int64_t step = 60'000;
  EXPECT_EQ(ChooseResolution(r, kNow, kNow - 6 * kHour, &step), 0);
  EXPECT_EQ(step, 60'000);
  step = 60'000;
  EXPECT_EQ(ChooseResolution(r, kNow, kNow - 72 * kHour, &step), kRollup5mMs);
  EXPECT_EQ(step, kRollup5mMs);
  step = 7 * 60'000;
  EXPECT_EQ(ChooseResolution(r, kNow, kNow - 72 * kHour, &step), kRollup5mMs);
  EXPECT_EQ(step, 2 * kRollup5mMs);
  step = 2 * kHour;
  EXPECT_EQ(ChooseResolution(r, kNow, kNow - 72 * kHour, &step), kRollup1hMs);
  step = 60'000;
  EXPECT_EQ(ChooseResolution(r, kNow, kNow - 30 * 24 * kHour, &step), kRollup1hMs);
  EXPECT_EQ(step, kHour);
}

}  // namespace
}  // namespace outpost::hub
