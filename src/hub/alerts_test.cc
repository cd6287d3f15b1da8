// Alert rules evaluated on a real (SQLite) store holding crafted devices,
// heartbeats and update reports; the engine records episodes; the rule
// configuration parser.
#include "hub/alerts.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "bundle/test_support.h"
#include "common/sha256.h"

namespace outpost::hub {
namespace {

using bundle::testing::TempDir;

constexpr TimeMs kMin = 60'000;
constexpr TimeMs kNow = 1'700'000'000'000;

class AlertsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(StrCat("sqlite://", (dir_.path() / "hub.db").string()));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  // A device enrolled a day ago, last seen `seen_ago` ms before kNow.
  void AddDevice(const std::string& id, TimeMs seen_ago, int64_t clock_offset_ms = 0,
                 const std::string& site = "store-1") {
    Device d;
    d.id = id;
    d.credential_hash = Sha256::HexOf(id);
    d.site = site;
    ASSERT_TRUE(store_->CreateDevice(d, kNow - 24 * 60 * kMin).ok());
    ASSERT_TRUE(store_
                    ->RecordDeviceContact(
                        id, {.seen_at = kNow - seen_ago, .clock_offset_ms = clock_offset_ms})
                    .ok());
  }

  // A heartbeat received `ago` ms before kNow.
  void Heartbeat(const std::string& id, TimeMs ago, std::vector<TelemetrySample> samples) {
    for (TelemetrySample& s : samples) s.device_time = kNow - ago;
    ASSERT_TRUE(
        store_->InsertTelemetryBatch({id, StrCat("b-", ++batches_), kNow - ago, std::move(samples)})
            .ok());
  }

  std::vector<AlertObservation> Evaluate(const AlertRules& rules = {}) {
    auto observations = EvaluateAlerts(*store_, rules, kNow);
    EXPECT_TRUE(observations.ok()) << observations.status();
    return observations.ok() ? *observations : std::vector<AlertObservation>{};
  }

  // The rules that fired for `device`, sorted.
  static std::vector<std::string> Fired(const std::vector<AlertObservation>& all,
                                        const std::string& device) {
    std::vector<std::string> out;
    for (const AlertObservation& o : all) {
      if (o.device_id == device) out.push_back(o.name);
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  static const AlertObservation* Find(const std::vector<AlertObservation>& all,
                                      const std::string& device, const std::string& rule) {
    for (const AlertObservation& o : all) {
      if (o.device_id == device && o.name == rule) return &o;
    }
    return nullptr;
  }

  TempDir dir_;
  std::unique_ptr<Store> store_;
  int batches_ = 0;
};

TEST_F(AlertsTest, AHealthyDeviceRaisesNothing) {
  AddDevice("ok", 1 * kMin);
  Heartbeat("ok", 5 * kMin,
            {{"temperature_c", 0, 60},
             {"requests", 0, 1000},
             {"error_rate", 0, 0.001},
             {"latency_p95_ms", 0, 40},
             {"drift_psi", 0, 0.05}});
  EXPECT_TRUE(Evaluate().empty());
}

TEST_F(AlertsTest, EachRuleFiresOnItsCondition) {
  AddDevice("offline", 30 * kMin);
  AddDevice("quiet", 1 * kMin);  // polls, but its last heartbeat is an hour old
  Heartbeat("quiet", 60 * kMin, {{"temperature_c", 0, 50}});
  AddDevice("hot", 1 * kMin);
  Heartbeat("hot", 20 * kMin, {{"temperature_c", 0, 99}});  // older, outside the window
  Heartbeat("hot", 5 * kMin, {{"temperature_c", 0, 91.5}});
  AddDevice("slow", 1 * kMin);
  Heartbeat("slow", 5 * kMin, {{"latency_p95_ms", 0, 900}});
  AddDevice("failing", 1 * kMin);
  // 30% of 1000 requests failed in the last 15 min; fast burn: 0.3 / 0.005 = 60x.
  Heartbeat("failing", 5 * kMin, {{"requests", 0, 1000}, {"error_rate", 0, 0.3}});
  AddDevice("drifting", 1 * kMin);
  Heartbeat(
      "drifting", 5 * kMin,
      {{"drift_psi", 0, 0.4, R"({"model":"yolo"})"}, {"drift_psi", 0, 0.01, R"({"model":"ocr"})"}});
  AddDevice("skewed", 1 * kMin, /*clock_offset_ms=*/-5 * kMin);
  Heartbeat("skewed", 5 * kMin, {{"temperature_c", 0, 40}});

  std::vector<AlertObservation> all = Evaluate();
  EXPECT_EQ(Fired(all, "offline"), std::vector<std::string>{"device_offline"});
  EXPECT_EQ(Fired(all, "quiet"), std::vector<std::string>{"telemetry_stale"});
  EXPECT_EQ(Fired(all, "hot"), std::vector<std::string>{"temperature_high"});
  EXPECT_EQ(Find(all, "hot", "temperature_high")->value, 91.5);
  EXPECT_EQ(Find(all, "hot", "temperature_high")->threshold, 85);
  EXPECT_EQ(Fired(all, "slow"), std::vector<std::string>{"latency_p95_high"});
  EXPECT_EQ(Fired(all, "failing"),
            (std::vector<std::string>{"error_budget_burn_fast", "error_budget_burn_slow",
                                      "error_rate_high"}));
  EXPECT_NEAR(Find(all, "failing", "error_rate_high")->value, 0.3, 1e-9);
  EXPECT_NEAR(Find(all, "failing", "error_budget_burn_fast")->value, 60, 1e-6);
  EXPECT_EQ(Fired(all, "drifting"), std::vector<std::string>{"drift_high"});
  EXPECT_EQ(Find(all, "drifting", "drift_high")->value, 0.4);
  EXPECT_EQ(Fired(all, "skewed"), std::vector<std::string>{"clock_skew"});
  EXPECT_EQ(Find(all, "skewed", "clock_skew")->value, -300);
  EXPECT_EQ(Find(all, "offline", "device_offline")->severity, "critical");
  EXPECT_EQ(Find(all, "offline", "device_offline")->site, "store-1");
  EXPECT_NE(Find(all, "offline", "device_offline")->summary.find("30 min"), std::string::npos);
}

TEST_F(AlertsTest, BurnRatesNeedBothWindows) {
  // Errors an hour ago, none in the last 15 minutes: the long window still
  // burns, the short one says it is over, so the fast alert stays quiet.
  AddDevice("recovered", 1 * kMin);
  Heartbeat("recovered", 50 * kMin, {{"requests", 0, 1000}, {"error_rate", 0, 0.5}});
  Heartbeat("recovered", 5 * kMin, {{"requests", 0, 1000}, {"error_rate", 0, 0}});
  std::vector<AlertObservation> all = Evaluate();
  EXPECT_EQ(Find(all, "recovered", "error_budget_burn_fast"), nullptr);
  EXPECT_EQ(Find(all, "recovered", "error_rate_high"), nullptr);
  // Slow windows (6 h and 1 h) both still see the errors: 0.25 / 0.005 = 50x.
  ASSERT_NE(Find(all, "recovered", "error_budget_burn_slow"), nullptr);
  EXPECT_NEAR(Find(all, "recovered", "error_budget_burn_slow")->value, 50, 1e-6);

  // Too few requests to judge.
  AddDevice("idle", 1 * kMin);
  Heartbeat("idle", 5 * kMin, {{"requests", 0, 3}, {"error_rate", 0, 1}});
  EXPECT_TRUE(Fired(Evaluate(), "idle").empty());
}

TEST_F(AlertsTest, UpdateFailuresFireWhileRecent) {
  AddDevice("broken", 1 * kMin);
  DeviceReport report;
  report.event = {"broken",           1, "rolled_back",    "r7",
                  "self_test_failed", 0, kNow - 10 * kMin, kNow - 10 * kMin};
  report.status = DeviceUpdateStatus{"r6", "r6", "rolled_back", "self_test_failed"};
  ASSERT_TRUE(store_->RecordDeviceReport(report).ok());
  Heartbeat("broken", 2 * kMin, {{"temperature_c", 0, 40}});
  std::vector<AlertObservation> all = Evaluate();
  ASSERT_EQ(Fired(all, "broken"), std::vector<std::string>{"update_failed"});
  EXPECT_NE(Find(all, "broken", "update_failed")->summary.find("r7"), std::string::npos);
  EXPECT_NE(Find(all, "broken", "update_failed")->summary.find("self_test_failed"),
            std::string::npos);
  AlertRules short_memory;
  short_memory.update_failure_window_s = 5 * 60;
  EXPECT_TRUE(Fired(Evaluate(short_memory), "broken").empty());
}

TEST_F(AlertsTest, ThresholdsAndDisabledRulesApply) {
  AddDevice("warm", 1 * kMin);
  Heartbeat("warm", 5 * kMin, {{"temperature_c", 0, 70}});
  AddDevice("gone", 60 * kMin);
  AlertRules rules;
  rules.temperature_max_c = 65;
  rules.disabled = {"device_offline"};
  std::vector<AlertObservation> all = Evaluate(rules);
  EXPECT_EQ(Fired(all, "warm"), std::vector<std::string>{"temperature_high"});
  EXPECT_TRUE(Fired(all, "gone").empty());
  // Revoked devices are not watched.
  ASSERT_TRUE(store_->SetDeviceStatus("warm", DeviceStatus::kRevoked).ok());
  EXPECT_TRUE(Fired(Evaluate(rules), "warm").empty());
}

TEST_F(AlertsTest, TheEngineRecordsEpisodesAndResolvesThem) {
  AddDevice("hot", 1 * kMin);
  Heartbeat("hot", 5 * kMin, {{"temperature_c", 0, 95}});
  TimeMs now = kNow;
  AlertEngine engine(*store_, {}, nullptr, [&now] { return now; });
  ASSERT_TRUE(engine.EvaluateOnce().ok());
  AlertFilter firing;
  firing.state = AlertState::kFiring;
  auto alerts = store_->ListAlerts(firing);
  ASSERT_TRUE(alerts.ok());
  ASSERT_EQ(alerts->size(), 1u);
  EXPECT_EQ((*alerts)[0].name, "temperature_high");
  EXPECT_EQ((*alerts)[0].started_at, kNow);
  // Twenty minutes on the device cooled down (and kept polling).
  now = kNow + 20 * kMin;
  ASSERT_TRUE(store_->RecordDeviceContact("hot", {.seen_at = now}).ok());
  ASSERT_TRUE(
      store_->InsertTelemetryBatch({"hot", "cool", now, {{"temperature_c", now, 50}}}).ok());
  ASSERT_TRUE(engine.EvaluateOnce().ok());
  EXPECT_TRUE(store_->ListAlerts(firing)->empty());
  auto all = store_->ListAlerts({});
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].state, AlertState::kResolved);
  EXPECT_EQ((*all)[0].resolved_at, now);
  EXPECT_EQ(engine.evaluations(), 2);
  EXPECT_EQ(engine.failed_evaluations(), 0);
}

TEST(AlertRulesTest, ParsesDurationsNumbersAndRefusesTypos) {
  auto rules = ParseAlertRules(R"(
device_offline_after: 5m
telemetry_stale_after: 3600
temperature_max_c: 70
error_rate_max: 0.01
slo_availability: 0.999
burn_fast: {long: 2h, short: 10m, rate: 10}
clock_skew_max: 90s
disabled: [drift_high]
)",
                               "alerts.yaml");
  ASSERT_TRUE(rules.ok()) << rules.status();
  EXPECT_EQ(rules->offline_after_s, 300);
  EXPECT_EQ(rules->stale_after_s, 3600);
  EXPECT_EQ(rules->temperature_max_c, 70);
  EXPECT_EQ(rules->slo_availability, 0.999);
  EXPECT_EQ(rules->burn_fast.long_s, 7200);
  EXPECT_EQ(rules->burn_fast.short_s, 600);
  EXPECT_EQ(rules->burn_fast.rate, 10);
  EXPECT_EQ(rules->burn_slow.long_s, AlertRules{}.burn_slow.long_s);
  EXPECT_EQ(rules->clock_skew_max_ms, 90'000);
  EXPECT_TRUE(rules->disabled.contains("drift_high"));
  EXPECT_EQ(AlertRulesJson(*rules)["temperature_max_c"], 70);

  for (const char* bad :
       {"temprature_max_c: 70", "device_offline_after: soon", "error_rate_max: 2",
        "disabled: [nope]", "burn_slow: {long: 1h, short: 2h}", "window: -5", "- a list"}) {
    auto parsed = ParseAlertRules(bad, "alerts.yaml");
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(std::string(MessageOf(parsed.status())).find("alerts.yaml"), std::string::npos)
        << MessageOf(parsed.status());
  }
  EXPECT_TRUE(ParseAlertRules("", "empty.yaml").ok());
}

}  // namespace
}  // namespace outpost::hub
