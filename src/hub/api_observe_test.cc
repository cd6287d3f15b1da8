// GET /telemetry, /alerts, /alerts/rules and the alert families of
// /metrics on a real hub (HTTPS on loopback, SQLite), fed through the
// device API; alert changes reach a real loopback webhook receiver.
#include <gtest/gtest.h>

#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "bundle/test_support.h"
#include "common/http_client.h"
#include "common/http_server.h"
#include "hub/hub.h"

namespace outpost::hub {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using bundle::testing::TempDir;

class ObserveApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    http::ServerOptions receiver;
    receiver.port = 0;
    auto server =
        http::Server::Create(receiver, [this](http::Request&& request, http::Responder responder) {
          {
            std::lock_guard lock(mu_);
            hooks_.push_back(json::parse(request.body(), nullptr, false));
          }
          responder.Send(http::JsonResponse(request, http::Status::ok, "{}"));
        });
    ASSERT_TRUE(server.ok()) << server.status();
    receiver_ = std::move(*server);
    receiver_->Start();

    HubOptions options;
    options.data_dir = dir_ / "hub";
    options.port = 0;
    options.worker_threads = 2;
    options.alert_interval = 1h;  // evaluated on demand below
    options.alert_webhook.url = StrCat("http://127.0.0.1:", receiver_->port(), "/hook");
    auto hub = Hub::Create(options);
    ASSERT_TRUE(hub.ok()) << hub.status();
    hub_ = std::move(*hub);
    hub_->Start();
    admin_ = NewSecret("oat_");
    ASSERT_TRUE(hub_->store().CreateApiToken("root", Role::kViewer, HashSecret(admin_), 1).ok());
  }
  void TearDown() override {
    hub_->Stop();
    receiver_->Stop();
  }

  HttpResponse Call(const std::string& token, std::string method, const std::string& path,
                    std::string body = "") {
    auto client = HttpClient::Create({.ca_file = hub_->ca_file(), .bearer_token = token});
    EXPECT_TRUE(client.ok());
    auto response = (*client)->Send({.method = std::move(method),
                                     .url = hub_->url() + path,
                                     .body = std::move(body),
                                     .content_type = "application/json"});
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : HttpResponse{};
  }
  json Get(const std::string& path, long expect = 200) {
    HttpResponse r = Call(admin_, "GET", path);
    EXPECT_EQ(r.status, expect) << path << ": " << r.body;
    return json::parse(r.body, nullptr, false);
  }

  // Enrols `id` at `site` (stored directly: the admin token is a viewer).
  std::string Enroll(const std::string& id, const std::string& site) {
    std::string secret = NewSecret("odc_");
    Device d;
    d.id = id;
    d.site = site;
    d.credential_hash = HashSecret(secret);
    EXPECT_TRUE(hub_->store().CreateDevice(d, NowMs()).ok());
    return secret;
  }

  static int64_t NowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }

  std::vector<json> Hooks() {
    std::lock_guard lock(mu_);
    return hooks_;
  }

  TempDir dir_;
  std::unique_ptr<http::Server> receiver_;
  std::mutex mu_;
  std::vector<json> hooks_;
  std::unique_ptr<Hub> hub_;
  std::string admin_;
};

TEST_F(ObserveApiTest, TelemetryIsQueryableByDeviceSiteReleaseAndModelVersion) {
  std::string cam1 = Enroll("cam-1", "store-1");
  std::string cam2 = Enroll("cam-2", "store-2");
  const int64_t t0 = NowMs() - 10 * 60'000;
  // Two heartbeats from cam-1 (model yolo/3), one from cam-2 (yolo/4).
  for (int i = 0; i < 2; ++i) {
    json batch = {{"batch_id", StrCat("b", i)},
                  {"time_ms", t0 + i * 60'000},
                  {"samples",
                   {{{"metric", "latency_p95_ms"}, {"value", 10 + i * 10}},
                    {{"metric", "model_loaded"},
                     {"value", 1},
                     {"labels", {{"model", "yolo"}, {"version", "3"}}}}}}};
    EXPECT_EQ(Call(cam1, "POST", "/api/v1/device/telemetry", batch.dump()).status, 200);
  }
  json other = {{"batch_id", "b0"},
                {"time_ms", t0},
                {"samples",
                 {{{"metric", "latency_p95_ms"}, {"value", 100}},
                  {{"metric", "model_loaded"},
                   {"value", 1},
                   {"labels", {{"model", "yolo"}, {"version", "4"}}}}}}};
  EXPECT_EQ(Call(cam2, "POST", "/api/v1/device/telemetry", other.dump()).status, 200);

  const std::string range = StrCat("&from=", t0 - 60'000, "&to=", NowMs() + 1000);
  json all = Get(StrCat("/api/v1/admin/telemetry?metric=latency_p95_ms&step=1h", range));
  EXPECT_EQ(all["source"], "raw");  // within raw retention: raw, even at a coarse step
  ASSERT_EQ(all["series"].size(), 2u);
  EXPECT_EQ(all["series"][0]["group"], "cam-1");
  int64_t count = 0;
  for (const json& p : all["series"][0]["points"]) count += p["count"].get<int64_t>();
  EXPECT_EQ(count, 2);

  json by_model = Get(StrCat(
      "/api/v1/admin/telemetry?metric=latency_p95_ms&step=1d&group_by=model_version", range));
  ASSERT_EQ(by_model["series"].size(), 2u);
  EXPECT_EQ(by_model["series"][0]["group"], "yolo/3");
  EXPECT_EQ(by_model["series"][1]["group"], "yolo/4");

  json site = Get(StrCat("/api/v1/admin/telemetry?metric=latency_p95_ms&site=store-2", range));
  ASSERT_EQ(site["series"].size(), 1u);
  EXPECT_EQ(site["series"][0]["group"], "cam-2");
  EXPECT_EQ(site["series"][0]["points"][0]["mean"], 100);

  json model = Get(
      StrCat("/api/v1/admin/telemetry?metric=latency_p95_ms&model_version=yolo/3&step=1d&group_by="
             "none",
             range));
  ASSERT_EQ(model["series"].size(), 1u);
  EXPECT_EQ(model["series"][0]["points"][0]["max"], 20);

  json devices =
      Get(StrCat("/api/v1/admin/telemetry?metric=latency_p95_ms&device=cam-2,cam-9", range));
  EXPECT_EQ(devices["series"].size(), 1u);

  // The rollups answer the long view once the maintenance pass ran; until
  // then a rollup source is simply empty, never an error.
  json rolled = Get(StrCat("/api/v1/admin/telemetry?metric=latency_p95_ms&source=5m", range));
  EXPECT_EQ(rolled["source"], "5m");
  EXPECT_EQ(rolled["step_ms"].get<int64_t>() % 300'000, 0);

  // Bad queries are 400 with a message.
  for (const char* bad :
       {"/api/v1/admin/telemetry", "/api/v1/admin/telemetry?metric=x&step=soon",
        "/api/v1/admin/telemetry?metric=x&from=abc", "/api/v1/admin/telemetry?metric=x&from=5&to=4",
        "/api/v1/admin/telemetry?metric=x&group_by=planet",
        "/api/v1/admin/telemetry?metric=x&source=10m",
        "/api/v1/admin/telemetry?metric=x&from=0&to=999999999999&step=1ms"}) {
    json error = Get(bad, 400);
    EXPECT_TRUE(error.contains("error")) << bad;
  }
  // Unauthenticated: 401.
  EXPECT_EQ(Call("", "GET", "/api/v1/admin/telemetry?metric=x").status, 401);
}

TEST_F(ObserveApiTest, AlertsAreListedExportedAndSentToTheWebhook) {
  std::string cam = Enroll("cam-hot", "store-1");
  json batch = {{"batch_id", "hot"}, {"samples", {{{"metric", "temperature_c"}, {"value", 97}}}}};
  ASSERT_EQ(Call(cam, "POST", "/api/v1/device/telemetry", batch.dump()).status, 200);
  ASSERT_TRUE(hub_->EvaluateAlerts().ok());

  json firing = Get("/api/v1/admin/alerts");
  ASSERT_EQ(firing["alerts"].size(), 1u) << firing.dump();
  EXPECT_EQ(firing["firing"], 1);
  const json& alert = firing["alerts"][0];
  EXPECT_EQ(alert["name"], "temperature_high");
  EXPECT_EQ(alert["device_id"], "cam-hot");
  EXPECT_EQ(alert["site"], "store-1");
  EXPECT_EQ(alert["value"], 97);
  EXPECT_EQ(alert["state"], "firing");
  EXPECT_EQ(Get("/api/v1/admin/alerts?state=resolved")["alerts"].size(), 0u);
  EXPECT_EQ(Get("/api/v1/admin/alerts?site=store-9")["alerts"].size(), 0u);
  EXPECT_EQ(Get("/api/v1/admin/alerts?name=temperature_high&device=cam-hot")["alerts"].size(), 1u);
  EXPECT_TRUE(Get("/api/v1/admin/alerts?state=burning", 400).contains("error"));
  EXPECT_TRUE(Get("/api/v1/admin/alerts?limit=0", 400).contains("error"));

  json rules = Get("/api/v1/admin/alerts/rules");
  EXPECT_EQ(rules["rules"].size(), AlertRuleCatalog().size());
  EXPECT_EQ(rules["thresholds"]["temperature_max_c"], 85);

  // /metrics: counts by rule and severity, every rule present, no device ids.
  HttpResponse metrics = Call("", "GET", "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("outpost_hub_alerts_firing{alert=\"temperature_high\",severity="
                              "\"warning\"} 1\n"),
            std::string::npos)
      << metrics.body;
  EXPECT_NE(metrics.body.find("outpost_hub_alerts_firing{alert=\"device_offline\",severity="
                              "\"critical\"} 0\n"),
            std::string::npos);
  EXPECT_NE(metrics.body.find("outpost_hub_alert_evaluations_total{result=\"error\"} 0\n"),
            std::string::npos);
  EXPECT_NE(metrics.body.find("outpost_hub_telemetry_rollup_lag_seconds"), std::string::npos);
  EXPECT_EQ(metrics.body.find("cam-hot"), std::string::npos);

  // The webhook received the firing alert.
  for (int i = 0; i < 500 && Hooks().empty(); ++i) std::this_thread::sleep_for(10ms);
  std::vector<json> hooks = Hooks();
  ASSERT_EQ(hooks.size(), 1u);
  EXPECT_EQ(hooks[0]["alerts"][0]["name"], "temperature_high");
  EXPECT_EQ(hooks[0]["alerts"][0]["state"], "firing");
  EXPECT_EQ(hooks[0]["hub"], hub_->url());

  // Cooled down: the alert resolves, and the webhook hears about it.
  json cool = {{"batch_id", "cool"}, {"samples", {{{"metric", "temperature_c"}, {"value", 50}}}}};
  ASSERT_EQ(Call(cam, "POST", "/api/v1/device/telemetry", cool.dump()).status, 200);
  ASSERT_TRUE(hub_->EvaluateAlerts().ok());
  json resolved = Get("/api/v1/admin/alerts?state=all");
  ASSERT_EQ(resolved["alerts"].size(), 1u);
  EXPECT_EQ(resolved["alerts"][0]["state"], "resolved");
  EXPECT_EQ(resolved["firing"], 0);
  for (int i = 0; i < 500 && Hooks().size() < 2; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(Hooks().size(), 2u);
  EXPECT_EQ(Hooks()[1]["alerts"][0]["state"], "resolved");
}

}  // namespace
}  // namespace outpost::hub
