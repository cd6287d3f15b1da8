// The hub over real HTTPS on loopback (its own CA), on a SQLite store:
// admin tokens and roles, enrolment, desired state with ETag and long
// polls, status reports, release pushes, artifact downloads with Range,
// configuration layers and rollouts driven by device reports.
#include "hub/hub.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "bundle/builder.h"
#include "bundle/test_support.h"
#include "common/http_client.h"

namespace outpost::hub {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;
using bundle::testing::TempDir;
using bundle::testing::WriteBytes;

class HubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StartHub(50ms);
    admin_ = NewSecret("oat_");
    ASSERT_TRUE(hub_->store().CreateApiToken("root", Role::kAdmin, HashSecret(admin_), 1).ok());
    key_ = *bundle::GenerateKeyPair("release-key");
    WriteBytes(dir_ / "hub" / "trusted-keys" / "release-key.pub",
               bundle::SerializePublicKey(key_.public_key));
  }
  void TearDown() override { hub_->Stop(); }

  // (Re)starts the hub on the same data directory; the engine ticks once at
  // start, then every `rollout_tick`.
  void StartHub(std::chrono::milliseconds rollout_tick) {
    if (hub_) hub_->Stop();
    hub_.reset();
    HubOptions options;
    options.data_dir = dir_ / "hub";
    options.port = 0;
    options.rollout_tick = rollout_tick;
    options.long_poll_recheck = 200ms;
    options.worker_threads = 4;
    options.clock = [this] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count() +
             skew_ms_.load();
    };
    auto hub = Hub::Create(options);
    ASSERT_TRUE(hub.ok()) << hub.status();
    hub_ = std::move(*hub);
    hub_->Start();
  }

  // One request as `token` ("" = none).
  HttpResponse Call(const std::string& token, std::string method, const std::string& path,
                    std::string body = "",
                    std::vector<std::pair<std::string, std::string>> headers = {},
                    std::chrono::milliseconds timeout = 10s) {
    auto client = HttpClient::Create({.ca_file = hub_->ca_file(), .bearer_token = token});
    EXPECT_TRUE(client.ok());
    auto response = (*client)->Send({.method = std::move(method),
                                     .url = hub_->url() + path,
                                     .body = std::move(body),
                                     .content_type = "application/json",
                                     .headers = std::move(headers),
                                     .timeout = timeout});
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : HttpResponse{};
  }
  json Json(const HttpResponse& r) { return json::parse(r.body, nullptr, false); }

  // Enrols a device; returns its credential.
  std::string Enroll(const std::string& device_id, const std::string& site = "") {
    HttpResponse boot = Call(admin_, "POST", "/api/v1/admin/bootstrap-tokens",
                             json{{"uses", 1}, {"site", site}}.dump());
    EXPECT_EQ(boot.status, 201) << boot.body;
    std::string token = Json(boot)["token"];
    HttpResponse enrolled = Call(
        "", "POST", "/api/v1/device/enroll",
        json{{"token", token}, {"device_id", device_id}, {"facts", {{"arch", "x86_64"}}}}.dump());
    EXPECT_EQ(enrolled.status, 201) << enrolled.body;
    return Json(enrolled)["token"];
  }

  // Builds and signs a release bundle; returns its bytes.
  std::string Bundle(const std::string& release, uint64_t sequence, const bundle::PrivateKey* key) {
    fs::path models = dir_ / ("models-" + release);
    WriteBytes(models / "m" / "1" / "model.onnx", bundle::testing::RandomBytes(4096, sequence));
    bundle::BuildOptions options;
    options.models_dir = models;
    options.release = release;
    options.sequence = sequence;
    options.signing_key = key;
    fs::path out = dir_ / (release + ".tar.zst");
    auto built = bundle::BuildBundle(options, out);
    EXPECT_TRUE(built.ok()) << built.status();
    return bundle::testing::ReadBytes(out);
  }

  std::string Push(const std::string& bundle_bytes, int expect_status) {
    auto client = HttpClient::Create({.ca_file = hub_->ca_file(), .bearer_token = admin_});
    auto response = (*client)->Send({.method = "POST",
                                     .url = hub_->url() + "/api/v1/admin/releases",
                                     .body = bundle_bytes,
                                     .content_type = "application/octet-stream"});
    EXPECT_TRUE(response.ok());
    EXPECT_EQ(response->status, expect_status) << response->body;
    return response->body;
  }

  // A status report as the agent sends it.
  HttpResponse Report(const std::string& device, int64_t seq, const std::string& state,
                      const std::string& release, const std::string& committed) {
    json event = {{"seq", seq}, {"time", 1700000000}, {"state", state}, {"release", release}};
    json body = {{"events", json::array({event})},
                 {"state", {{"state", state}, {"committed", {{"release", committed}}}}}};
    return Call(device, "POST", "/api/v1/device/status", body.dump());
  }

  // Polls `predicate` for up to 5 s; its last answer.
  template <typename Predicate>
  static bool WaitFor(Predicate predicate) {
    for (int i = 0; i < 100 && !predicate(); ++i) std::this_thread::sleep_for(50ms);
    return predicate();
  }

  // Moves the hub's clock forward (HubOptions::clock).
  std::atomic<int64_t> skew_ms_{0};
  TempDir dir_;
  std::unique_ptr<Hub> hub_;
  std::string admin_;
  bundle::KeyPair key_;
};

TEST_F(HubTest, TokensAreRoleScopedAndRevocable) {
  EXPECT_EQ(Call("", "GET", "/api/v1/admin/whoami").status, 401);
  EXPECT_EQ(Call("oat_wrong", "GET", "/api/v1/admin/whoami").status, 401);
  HttpResponse me = Call(admin_, "GET", "/api/v1/admin/whoami");
  ASSERT_EQ(me.status, 200);
  EXPECT_EQ(Json(me)["role"], "admin");

  HttpResponse created = Call(admin_, "POST", "/api/v1/admin/tokens",
                              json{{"name", "grafana"}, {"role", "viewer"}}.dump());
  ASSERT_EQ(created.status, 201) << created.body;
  std::string viewer = Json(created)["token"];
  EXPECT_EQ(Call(viewer, "GET", "/api/v1/admin/devices").status, 200);
  HttpResponse forbidden = Call(viewer, "POST", "/api/v1/admin/bootstrap-tokens", "{}");
  EXPECT_EQ(forbidden.status, 403);
  EXPECT_NE(forbidden.ErrorMessage().find("operator role"), std::string::npos) << forbidden.body;
  EXPECT_EQ(Call(viewer, "GET", "/api/v1/admin/tokens").status, 403);
  EXPECT_EQ(
      Call(admin_, "POST", "/api/v1/admin/tokens", json{{"name", "x"}, {"role", "god"}}.dump())
          .status,
      400);

  int64_t id = Json(created)["id"];
  EXPECT_EQ(Call(admin_, "DELETE", StrCat("/api/v1/admin/tokens/", id)).status, 200);
  EXPECT_EQ(Call(viewer, "GET", "/api/v1/admin/devices").status, 401);
  EXPECT_EQ(Call(admin_, "GET", "/api/v1/admin/nope").status, 404);
  EXPECT_EQ(Call(admin_, "PUT", "/api/v1/admin/devices").status, 405);
}

TEST_F(HubTest, EnrolmentUsesBootstrapTokensOnceAndRevokedDevicesGet401) {
  HttpResponse boot = Call(admin_, "POST", "/api/v1/admin/bootstrap-tokens",
                           json{{"uses", 1}, {"site", "berlin"}}.dump());
  ASSERT_EQ(boot.status, 201);
  json bootstrap = Json(boot)["bootstrap"];
  EXPECT_EQ(bootstrap["hub_url"], hub_->url());
  EXPECT_NE(bootstrap["ca_pem"].get<std::string>().find("BEGIN CERTIFICATE"), std::string::npos);
  std::string token = Json(boot)["token"];
  HttpResponse first = Call("", "POST", "/api/v1/device/enroll",
                            json{{"token", token}, {"device_id", "cam-1"}}.dump());
  ASSERT_EQ(first.status, 201) << first.body;
  std::string credential = Json(first)["token"];
  HttpResponse again = Call("", "POST", "/api/v1/device/enroll",
                            json{{"token", token}, {"device_id", "cam-2"}}.dump());
  EXPECT_EQ(again.status, 401) << again.body;
  EXPECT_EQ(Call("", "POST", "/api/v1/device/enroll", json{{"token", "obt_unknown"}}.dump()).status,
            401);
  EXPECT_EQ(Call("", "POST", "/api/v1/device/enroll", "not json").status, 400);

  HttpResponse device = Call(admin_, "GET", "/api/v1/admin/devices/cam-1");
  ASSERT_EQ(device.status, 200);
  EXPECT_EQ(Json(device)["site"], "berlin");
  EXPECT_EQ(Call(credential, "GET", "/api/v1/device/desired").status, 200);

  EXPECT_EQ(Call(admin_, "POST", "/api/v1/admin/devices/cam-1/revoke").status, 200);
  HttpResponse refused = Call(credential, "GET", "/api/v1/device/desired");
  EXPECT_EQ(refused.status, 401);
  EXPECT_NE(refused.ErrorMessage().find("revoked"), std::string::npos) << refused.body;
}

TEST_F(HubTest, DesiredStateHasEtagAndLongPollWakesOnChange) {
  std::string device = Enroll("cam-1");
  HttpResponse first = Call(device, "GET", "/api/v1/device/desired");
  ASSERT_EQ(first.status, 200);
  std::string etag(first.Header("etag"));
  EXPECT_FALSE(etag.empty());
  EXPECT_TRUE(Json(first)["release"].is_null());
  EXPECT_FALSE(first.Header("x-outpost-hub-time").empty());
  EXPECT_EQ(
      Call(device, "GET", "/api/v1/device/desired?wait=0", "", {{"If-None-Match", etag}}).status,
      304);
  EXPECT_EQ(Call(device, "GET", "/api/v1/device/desired?wait=-1").status, 400);

  Push(Bundle("r1", 1, &key_.private_key), 201);
  auto start = std::chrono::steady_clock::now();
  auto poll = std::async(std::launch::async, [&] {
    return Call(device, "GET", "/api/v1/device/desired?wait=20", "", {{"If-None-Match", etag}},
                30s);
  });
  std::this_thread::sleep_for(300ms);
  ASSERT_EQ(
      Call(admin_, "POST", "/api/v1/admin/devices/cam-1/desired", json{{"release", "r1"}}.dump())
          .status,
      200);
  HttpResponse woken = poll.get();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  ASSERT_EQ(woken.status, 200) << woken.body;
  json release = Json(woken)["release"];
  EXPECT_EQ(release["name"], "r1");
  EXPECT_EQ(release["url"],
            StrCat("/api/v1/device/artifacts/", release["sha256"].get<std::string>()));

  // Unchanged: a short long poll ends with 304 after its wait.
  std::string etag2(woken.Header("etag"));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(
      Call(device, "GET", "/api/v1/device/desired?wait=1", "", {{"If-None-Match", etag2}}).status,
      304);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 900ms);
}

TEST_F(HubTest, ReleasePushVerifiesSignaturesAndArtifactsServeRanges) {
  std::string unsigned_bundle = Bundle("r0", 1, nullptr);
  EXPECT_NE(Push(unsigned_bundle, 422).find("signature"), std::string::npos);
  auto stranger = bundle::GenerateKeyPair("stranger");
  EXPECT_NE(Push(Bundle("rs", 1, &stranger->private_key), 422).find("key"), std::string::npos);
  std::string good = Bundle("r1", 5, &key_.private_key);
  json release = json::parse(Push(good, 201));
  EXPECT_EQ(release["sequence"], 5);
  EXPECT_EQ(release["key_id"], "release-key");
  EXPECT_NE(Push(Bundle("r-old", 4, &key_.private_key), 409).find("downgrade"), std::string::npos);
  Enroll("cam-9");
  ASSERT_EQ(Call(admin_, "POST", "/api/v1/admin/releases/r1/yank").status, 200);
  EXPECT_EQ(Call(admin_, "POST", "/api/v1/admin/devices/cam-9/pin", json{{"release", "r1"}}.dump())
                .status,
            409);
  EXPECT_EQ(Call(admin_, "GET", "/api/v1/admin/releases/r1").status, 200);

  std::string device = Enroll("cam-1");
  std::string path = StrCat("/api/v1/device/artifacts/", release["sha256"].get<std::string>());
  HttpResponse whole = Call(device, "GET", path);
  ASSERT_EQ(whole.status, 200);
  EXPECT_TRUE(whole.body == good);
  HttpResponse part = Call(device, "GET", path, "", {{"Range", "bytes=100-"}});
  ASSERT_EQ(part.status, 206);
  EXPECT_TRUE(part.body == good.substr(100));
  EXPECT_EQ(part.Header("content-range"), StrCat("bytes 100-", good.size() - 1, "/", good.size()));
  EXPECT_EQ(Call(device, "GET", path, "", {{"Range", StrCat("bytes=", good.size(), "-")}}).status,
            416);
  EXPECT_EQ(Call(device, "GET", "/api/v1/device/artifacts/" + std::string(64, 'a')).status, 404);
  EXPECT_EQ(Call(device, "GET", "/api/v1/device/artifacts/xyz").status, 400);
  EXPECT_EQ(Call("", "GET", path).status, 401);
}

TEST_F(HubTest, StatusReportsAreIdempotentAndUpdateInventory) {
  std::string device = Enroll("cam-1");
  HttpResponse first = Report(device, 1, "committed", "r1", "r1");
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(Json(first)["acknowledged_seq"], 1);
  HttpResponse wrong_type =
      Call(device, "POST", "/api/v1/device/status", R"({"events": [{"seq": "one", "state": 7}]})");
  EXPECT_EQ(wrong_type.status, 400) << wrong_type.body;
  EXPECT_EQ(Call(device, "POST", "/api/v1/device/telemetry",
                 R"({"batch_id": 5, "samples": [{"metric": "x", "value": 1, "time_ms": "soon"}]})")
                .status,
            400);
  HttpResponse again = Report(device, 1, "committed", "r1", "r1");
  EXPECT_EQ(Json(again)["duplicates"], 1);
  json listed = Json(Call(admin_, "GET", "/api/v1/admin/devices?site="));
  json inventory = Json(Call(admin_, "GET", "/api/v1/admin/devices/cam-1"));
  EXPECT_EQ(inventory["current_release"], "r1");
  EXPECT_TRUE(inventory["online"].get<bool>());
  json events = Json(Call(admin_, "GET", "/api/v1/admin/devices/cam-1/events"))["events"];
  EXPECT_EQ(events.size(), 1u);
  // A device whose clock runs an hour ahead: its event lands on the hub's
  // clock at the moment it happened (10 s before it was reported).
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  const int64_t skew = 3600 * 1000;
  json late = {{"events", {{{"seq", 2}, {"time_ms", now_ms + skew - 10000}, {"state", "idle"}}}}};
  ASSERT_EQ(Call(device, "POST", "/api/v1/device/status", late.dump(),
                 {{"X-Outpost-Device-Time", StrCat(now_ms + skew)}})
                .status,
            200);
  json newest = Json(Call(admin_, "GET", "/api/v1/admin/devices/cam-1/events"))["events"][0];
  EXPECT_EQ(newest["device_time"], now_ms + skew - 10000);
  EXPECT_NEAR(newest["hub_time"].get<double>(), now_ms - 10000, 2000);
  // Telemetry from the same skewed clock, taken 30 s before it was sent
  // (an offline backlog): stored with both times, on the hub's clock at the
  // moment it was taken.
  json backlog = {{"batch_id", "late-1"},
                  {"time_ms", now_ms + skew - 30000},
                  {"samples", {{{"metric", "cpu_percent"}, {"value", 12.5}}}}};
  ASSERT_EQ(Call(device, "POST", "/api/v1/device/telemetry", backlog.dump(),
                 {{"X-Outpost-Device-Time", StrCat(now_ms + skew)}})
                .status,
            200);
  auto stored = hub_->store().QueryTelemetry({.device_ids = {"cam-1"}, .metric = "cpu_percent"});
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_EQ(stored->size(), 1u);
  EXPECT_EQ((*stored)[0].device_time, now_ms + skew - 30000);
  EXPECT_NEAR(static_cast<double>((*stored)[0].hub_time), now_ms - 30000, 2000);
  // A heartbeat says what runs: the inventory follows it.
  json beat = {{"batch_id", "inv-1"},
               {"samples",
                {{{"metric", "runtime_up"}, {"value", 1}},
                 {{"metric", "model_loaded"},
                  {"value", 1},
                  {"labels", {{"model", "detector"}, {"version", "3"}}}},
                 {{"metric", "runtime_info"},
                  {"value", 1},
                  {"labels", {{"version", "0.4.0"}, {"onnxruntime", "1.30.0"}}}}}}};
  ASSERT_EQ(Call(device, "POST", "/api/v1/device/telemetry", beat.dump()).status, 200);
  json facts = Json(Call(admin_, "GET", "/api/v1/admin/devices/cam-1"))["facts"];
  EXPECT_EQ(facts["model_versions"], json({{"detector", "3"}})) << facts.dump();
  EXPECT_EQ(facts["runtime_version"], "0.4.0");
  EXPECT_EQ(facts["onnxruntime_version"], "1.30.0");
  EXPECT_EQ(facts["arch"], "x86_64");  // enrolment facts kept
  // A heartbeat while the runtime is down keeps the last known versions.
  json down = {{"batch_id", "inv-2"}, {"samples", {{{"metric", "runtime_up"}, {"value", 0}}}}};
  ASSERT_EQ(Call(device, "POST", "/api/v1/device/telemetry", down.dump()).status, 200);
  EXPECT_EQ(Json(Call(admin_, "GET", "/api/v1/admin/devices/cam-1"))["facts"]["model_versions"],
            json({{"detector", "3"}}));
  HttpResponse csv = Call(admin_, "GET", "/api/v1/admin/devices?format=csv");
  EXPECT_EQ(csv.Header("content-type"), "text/csv; charset=utf-8");
  EXPECT_NE(csv.body.find("cam-1,cam-1,"), std::string::npos) << csv.body;
  EXPECT_NE(csv.body.find(",0.4.0,1.30.0,detector=3,"), std::string::npos) << csv.body;
}

TEST_F(HubTest, ConfigurationLayersMergeWithProvenance) {
  Enroll("cam-1", "berlin");
  ASSERT_EQ(Call(admin_, "PUT", "/api/v1/admin/config/fleet",
                 json{{"yaml", "threshold: 0.5\ncamera:\n  fps: 15\n  width: 640\n"}}.dump())
                .status,
            200);
  ASSERT_EQ(Call(admin_, "PUT", "/api/v1/admin/config/site/berlin",
                 json{{"yaml", "camera:\n  fps: 30\n"}}.dump())
                .status,
            200);
  EXPECT_EQ(Call(admin_, "PUT", "/api/v1/admin/config/site/berlin", json{{"yaml", "a: [1"}}.dump())
                .status,
            400);
  json effective = Json(Call(admin_, "GET", "/api/v1/admin/devices/cam-1/config"));
  EXPECT_EQ(effective["config"]["camera"]["fps"], 30);
  EXPECT_EQ(effective["config"]["camera"]["width"], 640);
  EXPECT_EQ(effective["config"]["threshold"], 0.5);
  EXPECT_EQ(effective["sources"]["camera"]["fps"], "site:berlin");
  EXPECT_EQ(effective["sources"]["camera"]["width"], "fleet");
  // Compare-and-swap delete: a stale version is refused.
  EXPECT_EQ(Call(admin_, "DELETE", "/api/v1/admin/config/site/berlin?expected_version=7").status,
            409);
  EXPECT_EQ(Call(admin_, "DELETE", "/api/v1/admin/config/site/berlin?expected_version=1").status,
            200);
}

TEST_F(HubTest, RolloutGoesWaveByWaveAndHaltsOnAFailedCanary) {
  std::vector<std::string> devices;
  for (int i = 0; i < 4; ++i) devices.push_back(Enroll(StrCat("cam-", i)));
  Push(Bundle("r1", 1, &key_.private_key), 201);
  HttpResponse created =
      Call(admin_, "POST", "/api/v1/admin/rollouts",
           json{{"release", "r1"}, {"waves", {1, "100%"}}, {"soak_s", 0}}.dump());
  ASSERT_EQ(created.status, 201) << created.body;
  int64_t id = Json(created)["id"];
  auto desired = [&](int i) {
    return Json(Call(devices[i], "GET", "/api/v1/device/desired"))["release"];
  };
  auto rollout = [&] { return Json(Call(admin_, "GET", StrCat("/api/v1/admin/rollouts/", id))); };
  // Wave 1: the canary (cam-0, first by id) alone.
  ASSERT_TRUE(WaitFor([&] { return !desired(0).is_null(); }));
  EXPECT_TRUE(desired(1).is_null());
  ASSERT_EQ(Report(devices[0], 1, "committed", "r1", "r1").status, 200);
  ASSERT_TRUE(WaitFor([&] { return !desired(3).is_null(); }));
  for (int i = 1; i < 4; ++i) ASSERT_EQ(Report(devices[i], 1, "committed", "r1", "r1").status, 200);
  ASSERT_TRUE(WaitFor([&] { return rollout()["state"] == "completed"; })) << rollout().dump();
  EXPECT_EQ(rollout()["counts"]["committed"], 4);

  // A release whose canary rolls back halts at wave 1; nobody else gets it.
  Push(Bundle("r2", 2, &key_.private_key), 201);
  created = Call(admin_, "POST", "/api/v1/admin/rollouts",
                 json{{"release", "r2"}, {"waves", {1, "100%"}}, {"soak_s", 0}}.dump());
  id = Json(created)["id"];
  ASSERT_TRUE(WaitFor([&] { return desired(0)["name"] == "r2"; }));
  ASSERT_EQ(Report(devices[0], 2, "rolled_back", "r2", "r1").status, 200);
  ASSERT_TRUE(WaitFor([&] { return rollout()["state"] == "halted"; })) << rollout().dump();
  EXPECT_NE(rollout()["gates"]["halt_reason"].get<std::string>().find("install failures"),
            std::string::npos);
  EXPECT_EQ(desired(0)["name"], "r1");  // back to what it ran
  for (int i = 1; i < 4; ++i) EXPECT_EQ(desired(i)["name"], "r1") << i;
}

TEST_F(HubTest, RolloutHaltsWhenTheCanaryIsSlowerThanItsBaseline) {
  std::vector<std::string> devices;
  for (int i = 0; i < 3; ++i) devices.push_back(Enroll(StrCat("cam-", i)));
  int batch = 0;
  auto telemetry = [&](int i, double p95) {
    json body = {{"batch_id", StrCat("b", ++batch)},
                 {"samples",
                  {{{"metric", "latency_p95_ms"}, {"value", p95}},
                   {{"metric", "error_rate"}, {"value", 0}}}}};
    ASSERT_EQ(Call(devices[i], "POST", "/api/v1/device/telemetry", body.dump()).status, 200);
  };
  for (int i = 0; i < 3; ++i) telemetry(i, 10);
  // A re-sent batch is acknowledged and stored once.
  json dup = {{"batch_id", "b1"}, {"samples", json::array()}};
  EXPECT_TRUE(Json(Call(devices[0], "POST", "/api/v1/device/telemetry", dup.dump()))["duplicate"]);
  EXPECT_EQ(
      Call(devices[0], "POST", "/api/v1/device/telemetry", json{{"samples", 1}}.dump()).status,
      400);
  json bad_seq = {{"batch_id", "b-seq"},
                  {"samples", {{{"metric", "x"}, {"value", 1}, {"seq", -4}}}}};
  HttpResponse refused = Call(devices[0], "POST", "/api/v1/device/telemetry", bad_seq.dump());
  EXPECT_EQ(refused.status, 400);
  EXPECT_NE(refused.body.find("samples[].seq"), std::string::npos);
  std::this_thread::sleep_for(20ms);
  Push(Bundle("r1", 1, &key_.private_key), 201);
  HttpResponse created =
      Call(admin_, "POST", "/api/v1/admin/rollouts",
           json{{"release", "r1"}, {"waves", {1, "100%"}}, {"soak_s", 30}}.dump());
  ASSERT_EQ(created.status, 201) << created.body;
  int64_t id = Json(created)["id"];
  auto rollout = [&] { return Json(Call(admin_, "GET", StrCat("/api/v1/admin/rollouts/", id))); };
  ASSERT_TRUE(WaitFor([&] { return rollout()["counts"].value("offered", 0) == 1; }));
  ASSERT_EQ(Report(devices[0], 1, "committed", "r1", "r1").status, 200);
  std::this_thread::sleep_for(20ms);
  telemetry(0, 31);
  telemetry(0, 33);
  ASSERT_TRUE(WaitFor([&] { return rollout()["state"] == "halted"; })) << rollout().dump();
  json gates = rollout()["gates"];
  EXPECT_NE(gates["halt_reason"].get<std::string>().find("p95 latency regression"),
            std::string::npos)
      << gates.dump();
  EXPECT_EQ(gates["baseline_p95_ms"], 10);
  EXPECT_EQ(gates["wave_p95_ms"], 32);
  // The gate values and thresholds are on the fleet /metrics too.
  std::string metrics = Call(admin_, "GET", "/metrics").body;
  EXPECT_NE(metrics.find(StrCat("outpost_hub_rollout_gate_value{rollout=\"", id,
                                "\",release=\"r1\",gate=\"wave_p95_ms\"} 32")),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find(StrCat("outpost_hub_rollout_gate_threshold{rollout=\"", id,
                                "\",release=\"r1\",gate=\"p95_regression_pct\"} 50")),
            std::string::npos)
      << metrics;
  // The canary is sent back (it ran nothing before: desired cleared); the
  // others never saw r1.
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(Json(Call(devices[i], "GET", "/api/v1/device/desired"))["release"].is_null()) << i;
  }
}

TEST_F(HubTest, RolloutHaltsOnOutputDriftInTheCanary) {
  std::vector<std::string> devices;
  for (int i = 0; i < 3; ++i) devices.push_back(Enroll(StrCat("cam-", i)));
  Push(Bundle("r1", 1, &key_.private_key), 201);
  HttpResponse created = Call(admin_, "POST", "/api/v1/admin/rollouts",
                              json{{"release", "r1"},
                                   {"waves", {1, "100%"}},
                                   {"soak_s", 30},
                                   {"gates", {{"max_drift_psi", 0.2}}}}
                                  .dump());
  ASSERT_EQ(created.status, 201) << created.body;
  int64_t id = Json(created)["id"];
  auto rollout = [&] { return Json(Call(admin_, "GET", StrCat("/api/v1/admin/rollouts/", id))); };
  ASSERT_TRUE(WaitFor([&] { return rollout()["counts"].value("offered", 0) == 1; }));
  ASSERT_EQ(Report(devices[0], 1, "committed", "r1", "r1").status, 200);
  std::this_thread::sleep_for(20ms);
  int batch = 0;
  auto drift = [&](double psi) {
    json body = {{"batch_id", StrCat("d", ++batch)},
                 {"samples",
                  {{{"metric", "drift_psi"},
                    {"value", psi},
                    {"labels", {{"model", "m"}, {"version", "1"}}}}}}};
    ASSERT_EQ(Call(devices[0], "POST", "/api/v1/device/telemetry", body.dump()).status, 200);
  };
  // Outputs distributed like the baseline: soaking goes on.
  drift(0.05);
  drift(0.1);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(rollout()["state"], "running") << rollout().dump();
  EXPECT_DOUBLE_EQ(rollout()["gates"]["wave_drift_psi"].get<double>(), 0.075);
  // Then they shift.
  drift(0.6);
  drift(0.7);
  ASSERT_TRUE(WaitFor([&] { return rollout()["state"] == "halted"; })) << rollout().dump();
  json gates = rollout()["gates"];
  EXPECT_NE(gates["halt_reason"].get<std::string>().find("output drift"), std::string::npos)
      << gates.dump();
  EXPECT_GT(gates["wave_drift_psi"].get<double>(), 0.2);
  EXPECT_TRUE(Json(Call(devices[0], "GET", "/api/v1/device/desired"))["release"].is_null());
  EXPECT_TRUE(Json(Call(devices[1], "GET", "/api/v1/device/desired"))["release"].is_null());
}

TEST_F(HubTest, RolloutHaltsWhenADeviceFallsSilentAfterTakingTheRelease) {
  std::vector<std::string> devices;
  for (int i = 0; i < 3; ++i) devices.push_back(Enroll(StrCat("cam-", i)));
  Push(Bundle("r1", 1, &key_.private_key), 201);
  HttpResponse created =
      Call(admin_, "POST", "/api/v1/admin/rollouts",
           json{{"release", "r1"}, {"waves", {1, "100%"}}, {"soak_s", 3600}, {"deadline_s", 7200}}
               .dump());
  ASSERT_EQ(created.status, 201) << created.body;
  int64_t id = Json(created)["id"];
  auto rollout = [&] { return Json(Call(admin_, "GET", StrCat("/api/v1/admin/rollouts/", id))); };
  ASSERT_TRUE(WaitFor([&] { return rollout()["counts"].value("offered", 0) == 1; }));
  ASSERT_EQ(Report(devices[0], 1, "committed", "r1", "r1").status, 200);
  // Soaking, the canary still in touch: no breach.
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(rollout()["state"], "running");
  EXPECT_TRUE(rollout()["gates"]["offline_after_commit"].empty());
  // Seven minutes without a word from it (others never took r1: not counted).
  skew_ms_ += 7 * 60 * 1000;
  ASSERT_TRUE(WaitFor([&] { return rollout()["state"] == "halted"; })) << rollout().dump();
  json gates = rollout()["gates"];
  EXPECT_NE(gates["halt_reason"].get<std::string>().find("went offline after taking the release"),
            std::string::npos)
      << gates.dump();
  EXPECT_EQ(gates["offline_after_commit"], json::array({"cam-0"}));
}

TEST_F(HubTest, DeviceTelemetryAndReleaseComparisonRoutes) {
  std::string cam = Enroll("cam-0");
  int batch = 0;
  auto telemetry = [&](double p95) {
    json body = {{"batch_id", StrCat("b", ++batch)},
                 {"samples",
                  {{{"metric", "latency_p95_ms"}, {"value", p95}},
                   {{"metric", "temperature_c"}, {"value", 51}}}}};
    ASSERT_EQ(Call(cam, "POST", "/api/v1/device/telemetry", body.dump()).status, 200);
    std::this_thread::sleep_for(5ms);  // distinct hub times
  };
  Push(Bundle("r1", 1, &key_.private_key), 201);
  Push(Bundle("r2", 2, &key_.private_key), 201);
  ASSERT_EQ(Report(cam, 1, "committed", "r1", "r1").status, 200);
  std::this_thread::sleep_for(5ms);
  telemetry(10);
  telemetry(12);
  ASSERT_EQ(Report(cam, 2, "committed", "r2", "r2").status, 200);
  std::this_thread::sleep_for(5ms);
  telemetry(40);

  HttpResponse series = Call(admin_, "GET",
                             "/api/v1/admin/devices/cam-0/telemetry?metrics=latency_p95_ms,"
                             "temperature_c&window_s=600");
  ASSERT_EQ(series.status, 200) << series.body;
  EXPECT_EQ(Json(series)["series"]["latency_p95_ms"].size(), 3u);
  EXPECT_EQ(Json(series)["series"]["latency_p95_ms"][2][1], 40);
  EXPECT_EQ(Json(series)["series"]["temperature_c"].size(), 3u);
  EXPECT_EQ(Call(admin_, "GET", "/api/v1/admin/devices/cam-0/telemetry").status, 400);
  EXPECT_EQ(
      Call(admin_, "GET", "/api/v1/admin/devices/cam-0/telemetry?metrics=x&window_s=0").status,
      400);
  EXPECT_EQ(Call(admin_, "GET", "/api/v1/admin/devices/nope/telemetry?metrics=x").status, 404);
  EXPECT_EQ(Call("", "GET", "/api/v1/admin/devices/cam-0/telemetry?metrics=x").status, 401);

  // /releases/compare is not taken for a release named "compare".
  HttpResponse compared = Call(admin_, "GET", "/api/v1/admin/releases/compare?a=r1&b=r2");
  ASSERT_EQ(compared.status, 200) << compared.body;
  json c = Json(compared);
  EXPECT_EQ(c["devices"], json::array({"cam-0"}));
  EXPECT_EQ(c["releases"]["r1"]["latency_p95_ms"], 11);
  EXPECT_EQ(c["releases"]["r2"]["latency_p95_ms"], 40);
  EXPECT_EQ(Call(admin_, "GET", "/api/v1/admin/releases/compare?a=r1&b=r1").status, 400);
  EXPECT_EQ(Call(admin_, "GET", "/api/v1/admin/releases/compare?a=r1&b=r9").status, 404);
  EXPECT_EQ(Call(admin_, "GET", "/api/v1/admin/releases/compare?a=r1&b=r2&labels=oops").status,
            400);
  EXPECT_EQ(Call(admin_, "GET", "/api/v1/admin/releases/r1").status, 200);
}

TEST_F(HubTest, RootRedirectsToTheDashboardWhichIsServedFromItsFolder) {
  HttpResponse root = Call("", "GET", "/");
  EXPECT_EQ(root.status, 302);
  EXPECT_EQ(root.Header("location"), "/ui/");

  WriteBytes(dir_ / "web" / "index.html", "<!doctype html><title>hub</title>");
  HubOptions options;
  options.data_dir = dir_ / "hub2";
  options.port = 0;
  options.web_dir = dir_ / "web";
  auto hub = Hub::Create(options);
  ASSERT_TRUE(hub.ok()) << hub.status();
  (*hub)->Start();
  auto client = HttpClient::Create({.ca_file = (*hub)->ca_file()});
  ASSERT_TRUE(client.ok());
  auto index = (*client)->Send({.url = (*hub)->url() + "/ui/"});
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->status, 200);
  EXPECT_EQ(index->body, "<!doctype html><title>hub</title>");
  EXPECT_EQ(index->Header("content-type"), "text/html; charset=utf-8");
  EXPECT_NE(index->Header("content-security-policy").find("default-src 'self'"),
            std::string_view::npos);
  // (curl would squash a literal "/../" before sending it.)
  auto traversal = (*client)->Send({.url = (*hub)->url() + "/ui/%2e%2e/hub.db"});
  ASSERT_TRUE(traversal.ok());
  EXPECT_EQ(traversal->status, 400);
  // The API is unaffected.
  auto health = (*client)->Send({.url = (*hub)->url() + "/api/v1/health"});
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(health->status, 200);
  (*hub)->Stop();

  // A --web-dir without a dashboard in it is refused at start.
  options.data_dir = dir_ / "hub3";
  options.web_dir = dir_ / "nothing-here";
  EXPECT_EQ(Hub::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(HubTest, ARolloutPausedBeforeItsFirstWaveStartsItWhenResumed) {
  std::string device = Enroll("cam-0");
  Push(Bundle("r1", 1, &key_.private_key), 201);
  StartHub(10min);  // the engine ticks once now, then not again in this test
  HttpResponse created = Call(admin_, "POST", "/api/v1/admin/rollouts",
                              json{{"release", "r1"}, {"waves", {"100%"}}, {"soak_s", 0}}.dump());
  ASSERT_EQ(created.status, 201) << created.body;
  int64_t id = Json(created)["id"];
  auto rollout = [&] { return Json(Call(admin_, "GET", StrCat("/api/v1/admin/rollouts/", id))); };
  EXPECT_EQ(rollout()["state"], "pending");
  ASSERT_EQ(Call(admin_, "POST", StrCat("/api/v1/admin/rollouts/", id, "/pause")).status, 200);
  EXPECT_EQ(rollout()["state"], "paused");
  ASSERT_EQ(Call(admin_, "POST", StrCat("/api/v1/admin/rollouts/", id, "/resume")).status, 200);
  // No wave ever started: it is pending again, so the engine starts wave 1
  // (a "running" rollout with no device offered would wait forever).
  EXPECT_EQ(rollout()["state"], "pending");
  StartHub(50ms);
  ASSERT_TRUE(WaitFor([&] { return rollout()["counts"].value("offered", 0) == 1; }))
      << rollout().dump();
  ASSERT_EQ(Report(device, 1, "committed", "r1", "r1").status, 200);
  EXPECT_TRUE(WaitFor([&] { return rollout()["state"] == "completed"; })) << rollout().dump();
}

}  // namespace
}  // namespace outpost::hub
