#include "hub/rollout_engine.h"

#include <gtest/gtest.h>

#include "hub/config_merge.h"
#include "hub/router.h"

namespace outpost::hub {
namespace {

using json = nlohmann::json;

std::vector<std::string> Ids(int n) {
  std::vector<std::string> ids;
  for (int i = 0; i < n; ++i) ids.push_back(StrCat("d", 100 + i));
  return ids;
}

std::vector<int> WaveSizes(const std::vector<RolloutDevice>& devices) {
  std::vector<int> sizes;
  for (const RolloutDevice& d : devices) {
    if (static_cast<size_t>(d.wave) >= sizes.size()) sizes.resize(d.wave + 1);
    ++sizes[d.wave];
  }
  return sizes;
}

TEST(RolloutPlanTest, WavesAreCumulativeAndReachEveryDevice) {
  auto plan = ParseRolloutPlan(json{{"waves", {1, "10%", "50%", "100%"}}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(WaveSizes(AssignWaves(Ids(100), *plan)), (std::vector<int>{1, 9, 40, 50}));
  EXPECT_EQ(WaveSizes(AssignWaves(Ids(5), *plan)), (std::vector<int>{1, 1, 1, 2}));
  EXPECT_EQ(WaveSizes(AssignWaves(Ids(1), *plan)), (std::vector<int>{1}));
  EXPECT_TRUE(AssignWaves({}, *plan).empty());
  // The last wave takes the rest even if it asks for less.
  auto partial = ParseRolloutPlan(json{{"waves", {2, "50%"}}});
  EXPECT_EQ(WaveSizes(AssignWaves(Ids(10), *partial)), (std::vector<int>{2, 8}));
}

TEST(RolloutPlanTest, DefaultsAndErrorsNameTheField) {
  auto plan = ParseRolloutPlan(json::object());
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->waves.size(), 3u);
  EXPECT_EQ(plan->p95_regression_pct, 50);
  EXPECT_EQ(PlanJson(*plan)["gates"]["max_failures"], 0);
  for (const json& bad : {json{{"waves", {0}}}, json{{"waves", {"150%"}}}, json{{"waves", {"x%"}}},
                          json{{"waves", json::array()}}, json{{"soak_s", -1}},
                          json{{"deadline_s", 0}}, json{{"gates", {{"max_failures", "a"}}}}}) {
    auto parsed = ParseRolloutPlan(bad);
    EXPECT_FALSE(parsed.ok()) << bad.dump();
    EXPECT_NE(parsed.status().message().find("field '"), absl::string_view::npos)
        << parsed.status();
  }
}

TEST(RolloutPlanTest, MaintenanceWindowIsTwoLocalTimesOfDay) {
  auto plan =
      ParseRolloutPlan(json{{"maintenance_window", {{"start", "22:00"}, {"end", "04:30:15"}}}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->window_start, "22:00");
  EXPECT_EQ(PlanJson(*plan)["maintenance_window"]["end"], "04:30:15");
  json stored = PlanJson(*ParseRolloutPlan(json::object()));
  EXPECT_TRUE(stored["maintenance_window"].is_null());
  EXPECT_TRUE(ParseRolloutPlan(stored).ok());  // the engine re-reads what it stored
  EXPECT_TRUE(ParseRolloutPlan(PlanJson(*plan)).ok());
  for (const json& bad : {json{{"maintenance_window", "02:00-04:00"}},
                          json{{"maintenance_window", {{"start", "25:00"}, {"end", "04:00"}}}},
                          json{{"maintenance_window", {{"start", "2:00"}, {"end", "04:00"}}}},
                          json{{"maintenance_window", {{"start", "02:00"}}}}}) {
    auto parsed = ParseRolloutPlan(bad);
    EXPECT_FALSE(parsed.ok()) << bad.dump();
  }
}

TEST(RouterTest, MatchesPatternsAndTellsMissingPathFromWrongMethod) {
  Router router;
  router.Add("GET", "/a/{id}/b", Access::kViewer, [](Call&) {});
  router.Add("POST", "/a/{id}/b", Access::kOperator, [](Call&) {});
  std::map<std::string, std::string> params;
  Router::Miss miss;
  const Route* route = router.Match("POST", "/a/x%20y/b", &params, &miss);
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->access, Access::kOperator);
  EXPECT_EQ(params["id"], "x y");
  EXPECT_EQ(router.Match("DELETE", "/a/1/b", &params, &miss), nullptr);
  EXPECT_EQ(miss, Router::Miss::kNoMethod);
  EXPECT_EQ(router.Match("GET", "/a/1", &params, &miss), nullptr);
  EXPECT_EQ(miss, Router::Miss::kNoPath);
  auto query = ParseQuery("wait=30&labels=a%3Db,c%3Dd&flag&x=%zz");
  EXPECT_EQ(query["wait"], "30");
  EXPECT_EQ(query["labels"], "a=b,c=d");
  EXPECT_EQ(query["flag"], "");
  EXPECT_EQ(query["x"], "%zz");
}

TEST(ConfigMergeTest, LaterLayersWinKeyByKeyAndScalarsKeepTheirTypes) {
  std::vector<ConfigLayer> layers = {
      {.scope = ConfigScope::kFleet,
       .yaml = "a: 1\nmap: {x: 1, y: 2}\nlist: [1, 2]\nname: '007'\n"},
      {.scope = ConfigScope::kSite, .scope_key = "s1", .yaml = "map: {y: 3}\nlist: [9]\n"},
      {.scope = ConfigScope::kDevice, .scope_key = "d1", .yaml = "a: true\n"}};
  auto merged = MergeLayers(layers);
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(merged->value["a"], true);
  EXPECT_EQ(merged->value["map"], (json{{"x", 1}, {"y", 3}}));
  EXPECT_EQ(merged->value["list"], json::array({9}));
  EXPECT_EQ(merged->value["name"], "007");  // quoted: stays a string
  EXPECT_EQ(merged->sources["a"], "device:d1");
  EXPECT_EQ(merged->sources["map"]["x"], "fleet");
  EXPECT_EQ(merged->sources["map"]["y"], "site:s1");
  auto bad =
      MergeLayers({{.scope = ConfigScope::kGroup, .scope_key = "g", .yaml = "- just a list"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("group:g"), absl::string_view::npos);
  Device device;
  device.labels["group"] = "line-1,,line-2";
  EXPECT_EQ(DeviceGroups(device), (std::vector<std::string>{"line-1", "line-2"}));
}

}  // namespace
}  // namespace outpost::hub
