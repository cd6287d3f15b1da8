// The `outpost` hub commands against a real hub started in-process (HTTPS
// on loopback with its own CA, port 0, SQLite in a temporary directory):
// every command, its tables and --json output, and its exit codes.
#include "cli/hub_commands.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bundle/builder.h"
#include "bundle/test_support.h"
#include "cli/commands.h"
#include "common/http_client.h"
#include "hub/hub.h"

namespace outpost::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;
using bundle::testing::ReadBytes;
using bundle::testing::TempDir;
using bundle::testing::WriteBytes;
using ::testing::HasSubstr;
using ::testing::Not;

struct Result {
  int code = -1;
  std::string out;
  std::string err;
  json Json() const { return json::parse(out, nullptr, false); }
};

std::ostream& operator<<(std::ostream& os, const Result& r) {
  return os << "exit " << r.code << "\nstdout:\n" << r.out << "stderr:\n" << r.err;
}

class HubCommandsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"OUTPOST_HUB_URL", "OUTPOST_HUB_TOKEN", "OUTPOST_HUB_CA"}) {
      ::unsetenv(name);
    }
    hub::HubOptions options;
    options.data_dir = dir_ / "hub";
    options.port = 0;
    options.rollout_tick = 50ms;
    options.long_poll_recheck = 200ms;
    options.worker_threads = 4;
    auto created = hub::Hub::Create(options);
    ASSERT_TRUE(created.ok()) << created.status();
    hub_ = std::move(*created);
    hub_->Start();
    admin_ = hub::NewSecret("oat_");
    ASSERT_TRUE(
        hub_->store().CreateApiToken("root", hub::Role::kAdmin, hub::HashSecret(admin_), 1).ok());
    key_ = *bundle::GenerateKeyPair("release-key");
    WriteBytes(dir_ / "hub" / "trusted-keys" / "release-key.pub",
               bundle::SerializePublicKey(key_.public_key));
  }
  void TearDown() override { hub_->Stop(); }

  // `outpost <args>` in-process, exactly as given.
  Result RunRaw(const std::vector<std::string>& args) {
    std::vector<const char*> argv = {"outpost"};
    for (const std::string& arg : args) argv.push_back(arg.c_str());
    std::ostringstream out, err;
    Result result;
    result.code = RunOutpost(static_cast<int>(argv.size()), argv.data(), out, err);
    result.out = out.str();
    result.err = err.str();
    return result;
  }

  // `outpost <args> --hub ... --token <token> --ca-file ...`.
  Result Run(std::vector<std::string> args, const std::string& token = "") {
    args.insert(args.end(), {"--hub", hub_->url(), "--token", token.empty() ? admin_ : token,
                             "--ca-file", hub_->ca_file()});
    return RunRaw(args);
  }

  // Builds and signs (unless key is null) a bundle; returns its path.
  std::string Bundle(const std::string& release, uint64_t sequence, const bundle::PrivateKey* key) {
    fs::path models = dir_ / ("models-" + release);
    WriteBytes(models / "m" / "1" / "model.onnx",
               bundle::testing::RandomBytes(300000, static_cast<uint32_t>(sequence)));
    bundle::BuildOptions options;
    options.models_dir = models;
    options.release = release;
    options.sequence = sequence;
    options.signing_key = key;
    fs::path out = dir_ / (release + ".tar.zst");
    auto built = bundle::BuildBundle(options, out);
    EXPECT_TRUE(built.ok()) << built.status();
    return out.string();
  }

  // A device-API request as device credential `token` ("" = none).
  HttpResponse DeviceCall(const std::string& token, std::string method, const std::string& path,
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

  // Enrols `device_id` with the bootstrap file `bootstrap`; returns its credential.
  std::string Enroll(const fs::path& bootstrap, const std::string& device_id) {
    json file = json::parse(ReadBytes(bootstrap));
    HttpResponse enrolled = DeviceCall(
        "", "POST", "/api/v1/device/enroll",
        json{{"token", file["token"]}, {"device_id", device_id}, {"facts", {{"arch", "x86_64"}}}}
            .dump());
    EXPECT_EQ(enrolled.status, 201) << enrolled.body;
    return json::parse(enrolled.body, nullptr, false).value("token", "");
  }

  // Enrols `count` devices cam-<first>.. at `site`; returns their credentials.
  std::vector<std::string> EnrollDevices(int count, const std::string& site = "berlin",
                                         int first = 0) {
    fs::path file = dir_ / StrCat("boot-", site, ".json");
    Result boot = Run({"bootstrap", "create", "--uses", StrCat(count), "--site", site, "--out",
                       file.string(), "--force"});
    EXPECT_EQ(boot.code, 0) << boot;
    std::vector<std::string> devices;
    for (int i = 0; i < count; ++i) devices.push_back(Enroll(file, StrCat("cam-", first + i)));
    return devices;
  }

  HttpResponse Report(const std::string& device, int64_t seq, const std::string& state,
                      const std::string& release, const std::string& committed) {
    json event = {{"seq", seq}, {"time", 1700000000}, {"state", state}, {"release", release}};
    json body = {{"events", json::array({event})},
                 {"state", {{"state", state}, {"committed", {{"release", committed}}}}}};
    return DeviceCall(device, "POST", "/api/v1/device/status", body.dump());
  }

  std::string Desired(const std::string& device) {
    json desired = json::parse(DeviceCall(device, "GET", "/api/v1/device/desired").body);
    return desired["release"].is_object() ? desired["release"].value("name", "") : "";
  }

  TempDir dir_;
  std::unique_ptr<hub::Hub> hub_;
  std::string admin_;
  bundle::KeyPair key_;
};

TEST_F(HubCommandsTest, ConnectionProblemsHaveTheirOwnExitCodes) {
  Result ok = Run({"whoami"});
  ASSERT_EQ(ok.code, 0) << ok;
  EXPECT_THAT(ok.out, HasSubstr("root (admin)"));
  EXPECT_THAT(ok.out, HasSubstr(StrCat("outpost-hub ", OUTPOST_VERSION)));
  Result ok_json = Run({"whoami", "--json"});
  ASSERT_EQ(ok_json.code, 0) << ok_json;
  EXPECT_EQ(ok_json.Json()["role"], "admin");
  EXPECT_EQ(ok_json.Json()["hub"], hub_->url());

  Result no_hub = RunRaw({"device", "list", "--token", admin_});
  EXPECT_EQ(no_hub.code, 2) << no_hub;
  EXPECT_THAT(no_hub.err, HasSubstr("OUTPOST_HUB_URL"));
  Result no_token = RunRaw({"device", "list", "--hub", hub_->url()});
  EXPECT_EQ(no_token.code, 2) << no_token;
  EXPECT_THAT(no_token.err, HasSubstr("OUTPOST_HUB_TOKEN"));
  Result bad_url = RunRaw({"device", "list", "--hub", "ftp://hub", "--token", admin_});
  EXPECT_EQ(bad_url.code, 2) << bad_url;

  Result bad_token = Run({"device", "list"}, "oat_wrong");
  EXPECT_EQ(bad_token.code, 1) << bad_token;
  EXPECT_THAT(bad_token.err, HasSubstr("401"));
  EXPECT_THAT(bad_token.err, HasSubstr("unknown or revoked API token"));

  Result unreachable =
      RunRaw({"device", "list", "--hub", "https://127.0.0.1:1", "--token", admin_});
  EXPECT_EQ(unreachable.code, 3) << unreachable;
  EXPECT_THAT(unreachable.err, HasSubstr("cannot reach the hub at https://127.0.0.1:1"));

  // Without the hub's CA, TLS verification fails: not reached, with a hint.
  Result untrusted = RunRaw({"device", "list", "--hub", hub_->url(), "--token", admin_});
  EXPECT_EQ(untrusted.code, 3) << untrusted;
  EXPECT_THAT(untrusted.err, HasSubstr("--ca-file"));

  // The environment supplies all three.
  ::setenv("OUTPOST_HUB_URL", hub_->url().c_str(), 1);
  ::setenv("OUTPOST_HUB_TOKEN", admin_.c_str(), 1);
  ::setenv("OUTPOST_HUB_CA", hub_->ca_file().c_str(), 1);
  Result from_env = RunRaw({"whoami"});
  for (const char* name : {"OUTPOST_HUB_URL", "OUTPOST_HUB_TOKEN", "OUTPOST_HUB_CA"}) {
    ::unsetenv(name);
  }
  EXPECT_EQ(from_env.code, 0) << from_env;
  EXPECT_THAT(from_env.out, HasSubstr("root (admin)"));

  Result help = RunRaw({"device", "list", "--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.out, HasSubstr("OUTPOST_HUB_URL"));
  EXPECT_THAT(help.out, HasSubstr("Exit codes"));
}

TEST_F(HubCommandsTest, TokensAreCreatedListedAndRevokedAndRolesAreEnforced) {
  Result created = Run({"token", "create", "--name", "ci", "--role", "viewer", "--json"});
  ASSERT_EQ(created.code, 0) << created;
  std::string viewer = created.Json()["token"];
  int64_t viewer_id = created.Json()["id"];
  ASSERT_TRUE(viewer.starts_with("oat_"));

  Result human = Run({"token", "create", "--name", "grafana", "--role", "operator"});
  ASSERT_EQ(human.code, 0) << human;
  EXPECT_THAT(human.out, HasSubstr("'grafana' (operator)"));
  EXPECT_THAT(human.out, HasSubstr("oat_"));

  Result list = Run({"token", "list"});
  ASSERT_EQ(list.code, 0) << list;
  EXPECT_THAT(list.out, HasSubstr("ROLE"));
  EXPECT_THAT(list.out, HasSubstr("ci"));
  EXPECT_THAT(list.out, HasSubstr("grafana"));
  EXPECT_THAT(list.out, Not(HasSubstr(viewer)));

  // A viewer reads but may not push.
  EXPECT_EQ(Run({"release", "list"}, viewer).code, 0);
  Result push = Run({"release", "push", Bundle("r1", 1, &key_.private_key)}, viewer);
  EXPECT_EQ(push.code, 1) << push;
  EXPECT_THAT(push.err, HasSubstr("403"));
  EXPECT_THAT(push.err, HasSubstr("operator role"));
  Result tokens = Run({"token", "list"}, viewer);
  EXPECT_EQ(tokens.code, 1) << tokens;
  EXPECT_THAT(tokens.err, HasSubstr("admin role"));

  EXPECT_EQ(Run({"token", "create", "--name", "x", "--role", "god"}).code, 2);
  Result revoke = Run({"token", "revoke", StrCat(viewer_id)});
  ASSERT_EQ(revoke.code, 0) << revoke;
  EXPECT_THAT(revoke.out, HasSubstr(StrCat("token ", viewer_id, " revoked")));
  Result revoked = Run({"whoami"}, viewer);
  EXPECT_EQ(revoked.code, 1) << revoked;
  EXPECT_THAT(revoked.err, HasSubstr("unknown or revoked"));
  Result json_list = Run({"token", "list", "--json"});
  ASSERT_EQ(json_list.code, 0);
  bool found = false;
  json listed = json_list.Json();
  for (const json& t : listed["tokens"]) {
    if (t["id"] == viewer_id) found = t["revoked"] == true;
  }
  EXPECT_TRUE(found) << json_list.out;
  EXPECT_EQ(Run({"token", "revoke", "999"}).code, 1);
  EXPECT_EQ(Run({"token", "revoke", "abc"}).code, 2);
}

TEST_F(HubCommandsTest, ReleasesArePushedWithProgressListedInspectedAndYanked) {
  std::string r1 = Bundle("r1", 5, &key_.private_key);
  Result push = Run({"release", "push", r1});
  ASSERT_EQ(push.code, 0) << push;
  EXPECT_THAT(push.out, HasSubstr("pushed release r1: sequence 5"));
  EXPECT_THAT(push.out, HasSubstr("signed by key release-key"));
  EXPECT_THAT(push.err, HasSubstr("uploading r1.tar.zst"));
  EXPECT_THAT(push.err, HasSubstr("100%"));

  Result again = Run({"release", "push", r1});
  EXPECT_EQ(again.code, 1) << again;
  EXPECT_THAT(again.err, HasSubstr("409"));
  EXPECT_THAT(again.err, HasSubstr("downgrade"));
  Result unsigned_push = Run({"release", "push", Bundle("r0", 9, nullptr)});
  EXPECT_EQ(unsigned_push.code, 1) << unsigned_push;
  EXPECT_THAT(unsigned_push.err, HasSubstr("bundle refused"));
  Result missing = Run({"release", "push", (dir_ / "nope.tar.zst").string()});
  EXPECT_EQ(missing.code, 3) << missing;
  EXPECT_THAT(missing.err, HasSubstr("nope.tar.zst"));

  Result pushed_json = Run({"release", "push", "--json", Bundle("r2", 6, &key_.private_key)});
  ASSERT_EQ(pushed_json.code, 0) << pushed_json;
  EXPECT_EQ(pushed_json.Json()["id"], "r2");
  EXPECT_EQ(pushed_json.Json()["sequence"], 6);

  Result list = Run({"release", "list"});
  ASSERT_EQ(list.code, 0) << list;
  EXPECT_THAT(list.out, HasSubstr("NAME"));
  EXPECT_THAT(list.out, HasSubstr("r1"));
  EXPECT_LT(list.out.find("r2"), list.out.find("r1"));  // newest first
  Result list_json = Run({"release", "list", "--json"});
  ASSERT_EQ(list_json.code, 0);
  EXPECT_EQ(list_json.Json()["releases"].size(), 2u);

  Result inspect = Run({"release", "inspect", "r1"});
  ASSERT_EQ(inspect.code, 0) << inspect;
  EXPECT_THAT(inspect.out, HasSubstr("sequence:   5"));
  EXPECT_THAT(inspect.out, HasSubstr("models/m/1/model.onnx"));
  Result inspect_json = Run({"release", "inspect", "r1", "--json"});
  EXPECT_EQ(inspect_json.Json()["manifest"]["release"], "r1");
  Result unknown = Run({"release", "inspect", "nope"});
  EXPECT_EQ(unknown.code, 1) << unknown;
  EXPECT_THAT(unknown.err, HasSubstr("404"));

  Result yank = Run({"release", "yank", "r1"});
  ASSERT_EQ(yank.code, 0) << yank;
  EXPECT_THAT(yank.out, HasSubstr("yanked release r1"));
  EXPECT_THAT(Run({"release", "list"}).out, Not(HasSubstr("r1")));
  Result with_yanked = Run({"release", "list", "--yanked"});
  EXPECT_THAT(with_yanked.out, HasSubstr("r1"));
  EXPECT_THAT(with_yanked.out, HasSubstr("yes"));
}

TEST_F(HubCommandsTest, BootstrapFilesAreWrittenPrivatelyAndTokensListedAndRevoked) {
  fs::path file = dir_ / "boot.json";
  Result created =
      Run({"bootstrap", "create", "--uses", "2", "--ttl", "3600", "--site", "berlin", "--label",
           "group=line-1", "--label", "zone=a", "--device-id", "cam-7", "--out", file.string()});
  ASSERT_EQ(created.code, 0) << created;
  EXPECT_THAT(created.out, HasSubstr("2 use(s)"));
  EXPECT_THAT(created.out, HasSubstr("site berlin"));
  struct stat st;
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  json bootstrap = json::parse(ReadBytes(file));
  EXPECT_EQ(bootstrap["hub_url"], hub_->url());
  EXPECT_EQ(bootstrap["device_id"], "cam-7");
  EXPECT_THAT(bootstrap["ca_pem"].get<std::string>(), HasSubstr("BEGIN CERTIFICATE"));
  std::string secret = bootstrap["token"];
  ASSERT_TRUE(secret.starts_with("obt_"));
  EXPECT_THAT(created.out + created.err, Not(HasSubstr(secret)));

  // Never overwritten by accident; --force replaces it.
  Result exists = Run({"bootstrap", "create", "--out", file.string()});
  EXPECT_EQ(exists.code, 2) << exists;
  EXPECT_THAT(exists.err, HasSubstr("--force"));
  Result no_dir = Run({"bootstrap", "create", "--out", (dir_ / "no/such/boot.json").string()});
  EXPECT_EQ(no_dir.code, 3) << no_dir;
  Result bad_label =
      Run({"bootstrap", "create", "--label", "nolabel", "--out", (dir_ / "b2.json").string()});
  EXPECT_EQ(bad_label.code, 2) << bad_label;

  Result as_json = Run({"bootstrap", "create", "--json", "--out", (dir_ / "b3.json").string()});
  ASSERT_EQ(as_json.code, 0) << as_json;
  EXPECT_EQ(as_json.Json()["uses"], 1);
  EXPECT_FALSE(as_json.Json().contains("token"));
  int64_t id = as_json.Json()["id"];

  Result list = Run({"bootstrap", "list"});
  ASSERT_EQ(list.code, 0) << list;
  EXPECT_THAT(list.out, HasSubstr("berlin"));
  EXPECT_THAT(list.out, HasSubstr("group=line-1,zone=a"));
  EXPECT_THAT(list.out, Not(HasSubstr(secret)));

  // The file works for enrolment.
  std::string credential = Enroll(file, "cam-7");
  EXPECT_FALSE(credential.empty());

  Result revoke = Run({"bootstrap", "revoke", StrCat(id)});
  ASSERT_EQ(revoke.code, 0) << revoke;
  json tokens = Run({"bootstrap", "list", "--json"}).Json()["bootstrap_tokens"];
  for (const json& t : tokens) {
    if (t["id"] == id) {
      EXPECT_EQ(t["uses_left"], 0);
    }
  }
  HttpResponse refused = DeviceCall(
      "", "POST", "/api/v1/device/enroll",
      json{{"token", json::parse(ReadBytes(dir_ / "b3.json"))["token"]}, {"device_id", "x"}}
          .dump());
  EXPECT_NE(refused.status, 201);
}

TEST_F(HubCommandsTest, DevicesAreListedFilteredLabelledPinnedAssignedAndRetired) {
  std::vector<std::string> devices = EnrollDevices(2, "berlin");
  EnrollDevices(1, "paris", 2);
  ASSERT_EQ(Run({"release", "push", Bundle("r1", 1, &key_.private_key)}).code, 0);

  Result list = Run({"device", "list"});
  ASSERT_EQ(list.code, 0) << list;
  EXPECT_THAT(list.out, HasSubstr("LAST SEEN"));
  EXPECT_THAT(list.out, HasSubstr("cam-0"));
  EXPECT_THAT(list.out, HasSubstr("cam-1"));
  EXPECT_THAT(list.out, HasSubstr("device(s)"));

  Result berlin = Run({"device", "list", "--site", "berlin", "--json"});
  ASSERT_EQ(berlin.code, 0) << berlin;
  EXPECT_EQ(berlin.Json()["count"], 2);

  Result csv = Run({"device", "list", "--csv"});
  ASSERT_EQ(csv.code, 0) << csv;
  EXPECT_TRUE(csv.out.starts_with("id,name,site,labels,status,")) << csv.out;
  EXPECT_EQ(Run({"device", "list", "--csv", "--json"}).code, 2);
  EXPECT_EQ(Run({"device", "list", "--status", "sleeping"}).code, 2);
  EXPECT_EQ(Run({"device", "list", "--labels", "novalue"}).code, 2);

  Result label =
      Run({"device", "label", "cam-0", "group=line-1", "zone=a", "--name", "Front door"});
  ASSERT_EQ(label.code, 0) << label;
  EXPECT_THAT(label.out, HasSubstr("group=line-1,zone=a"));
  Result unlabel = Run({"device", "label", "cam-0", "zone-", "--site", "munich"});
  ASSERT_EQ(unlabel.code, 0) << unlabel;
  EXPECT_THAT(unlabel.out, HasSubstr("site munich"));
  EXPECT_THAT(unlabel.out, HasSubstr("labels group=line-1\n"));
  EXPECT_EQ(Run({"device", "label", "cam-0"}).code, 2);
  Result filtered = Run({"device", "list", "--labels", "group=line-1", "--json"});
  ASSERT_EQ(filtered.code, 0) << filtered;
  ASSERT_EQ(filtered.Json()["count"], 1);
  EXPECT_EQ(filtered.Json()["devices"][0]["name"], "Front door");

  Result show = Run({"device", "show", "cam-0"});
  ASSERT_EQ(show.code, 0) << show;
  EXPECT_THAT(show.out, HasSubstr("name:             Front door"));
  EXPECT_THAT(show.out, HasSubstr("site:             munich"));
  EXPECT_THAT(show.out, HasSubstr("arch=x86_64"));
  EXPECT_EQ(Run({"device", "show", "cam-9"}).code, 1);

  Result pin = Run({"device", "pin", "cam-0", "r1"});
  ASSERT_EQ(pin.code, 0) << pin;
  EXPECT_THAT(pin.out, HasSubstr("pinned release r1"));
  EXPECT_EQ(Run({"device", "show", "cam-0", "--json"}).Json()["pinned_release"], "r1");
  EXPECT_EQ(Desired(devices[0]), "r1");
  EXPECT_EQ(Run({"device", "pin", "cam-0", "r1", "--unpin"}).code, 2);
  EXPECT_EQ(Run({"device", "pin", "cam-0"}).code, 2);
  Result unpin = Run({"device", "pin", "cam-0", "--unpin", "--json"});
  ASSERT_EQ(unpin.code, 0) << unpin;
  EXPECT_TRUE(unpin.Json()["pinned_release"].is_null());
  EXPECT_EQ(Run({"device", "pin", "cam-0", "nope"}).code, 1);

  Result assign = Run({"device", "assign", "cam-1", "r1"});
  ASSERT_EQ(assign.code, 0) << assign;
  EXPECT_EQ(Desired(devices[1]), "r1");
  Result clear = Run({"device", "assign", "cam-1", "--clear"});
  ASSERT_EQ(clear.code, 0) << clear;
  EXPECT_EQ(Desired(devices[1]), "");

  ASSERT_EQ(Report(devices[1], 1, "committed", "r1", "r1").status, 200);
  Result events = Run({"device", "events", "cam-1"});
  ASSERT_EQ(events.code, 0) << events;
  EXPECT_THAT(events.out, HasSubstr("committed"));
  EXPECT_THAT(events.out, HasSubstr("2023-11-14"));  // device time 1700000000
  EXPECT_EQ(Run({"device", "events", "cam-1", "--json"}).Json()["events"].size(), 1u);

  fs::path csv_file = dir_ / "devices.csv";
  Result export_csv = Run({"device", "export", "--format", "csv", "--out", csv_file.string()});
  ASSERT_EQ(export_csv.code, 0) << export_csv;
  EXPECT_THAT(export_csv.out, HasSubstr("exported 3 device(s)"));
  EXPECT_THAT(ReadBytes(csv_file), HasSubstr("cam-1,cam-1,berlin"));
  Result export_json = Run({"device", "export", "--format", "json", "--site", "berlin"});
  ASSERT_EQ(export_json.code, 0) << export_json;
  EXPECT_EQ(export_json.Json()["count"], 1);  // cam-0 moved to munich
  EXPECT_EQ(Run({"device", "export", "--format", "xml"}).code, 2);

  Result revoke = Run({"device", "revoke", "cam-1"});
  ASSERT_EQ(revoke.code, 0) << revoke;
  EXPECT_THAT(revoke.out, HasSubstr("cam-1 is now revoked"));
  EXPECT_EQ(DeviceCall(devices[1], "GET", "/api/v1/device/desired").status, 401);
  EXPECT_EQ(Run({"device", "list", "--status", "revoked", "--json"}).Json()["count"], 1);
  Result decommission = Run({"device", "decommission", "cam-1", "--json"});
  ASSERT_EQ(decommission.code, 0) << decommission;
  EXPECT_EQ(decommission.Json()["status"], "decommissioned");
  Result back = Run({"device", "revoke", "cam-1"});
  EXPECT_EQ(back.code, 1) << back;  // decommissioned is final
}

TEST_F(HubCommandsTest, ConfigLayersAreSetReadListedMergedAndDeleted) {
  EnrollDevices(1, "berlin");
  WriteBytes(dir_ / "fleet.yaml", "threshold: 0.5\ncamera:\n  fps: 15\n  width: 640\n");
  WriteBytes(dir_ / "berlin.yaml", "camera:\n  fps: 30\n");
  WriteBytes(dir_ / "bad.yaml", "a: [1\n");

  Result fleet = Run({"config", "set", "fleet", "--file", (dir_ / "fleet.yaml").string()});
  ASSERT_EQ(fleet.code, 0) << fleet;
  EXPECT_THAT(fleet.out, HasSubstr("layer fleet set: version 1"));
  Result site = Run({"config", "set", "site", "berlin", "--file", (dir_ / "berlin.yaml").string()});
  ASSERT_EQ(site.code, 0) << site;
  EXPECT_THAT(site.out, HasSubstr("layer site:berlin set: version 1"));
  Result stale = Run({"config", "set", "site", "berlin", "--file", (dir_ / "berlin.yaml").string(),
                      "--expected-version", "0"});
  EXPECT_EQ(stale.code, 1) << stale;
  Result bad = Run({"config", "set", "site", "berlin", "--file", (dir_ / "bad.yaml").string()});
  EXPECT_EQ(bad.code, 1) << bad;
  EXPECT_THAT(bad.err, HasSubstr("400"));
  EXPECT_EQ(Run({"config", "set", "fleet", "--file", (dir_ / "none.yaml").string()}).code, 3);
  EXPECT_EQ(Run({"config", "set", "site", "--file", (dir_ / "berlin.yaml").string()}).code, 2);
  EXPECT_EQ(Run({"config", "get", "fleet", "extra"}).code, 2);
  EXPECT_EQ(Run({"config", "get", "region", "x"}).code, 2);

  Result get = Run({"config", "get", "fleet"});
  ASSERT_EQ(get.code, 0) << get;
  EXPECT_THAT(get.out, HasSubstr("# fleet layer, version 1"));
  EXPECT_THAT(get.out, HasSubstr("threshold: 0.5\ncamera:\n  fps: 15\n"));
  Result get_json = Run({"config", "get", "site", "berlin", "--json"});
  ASSERT_EQ(get_json.code, 0) << get_json;
  EXPECT_EQ(get_json.Json()["yaml"], "camera:\n  fps: 30\n");
  EXPECT_EQ(Run({"config", "get", "group", "line-9"}).code, 1);

  Result list = Run({"config", "list"});
  ASSERT_EQ(list.code, 0) << list;
  EXPECT_THAT(list.out, HasSubstr("fleet"));
  EXPECT_THAT(list.out, HasSubstr("site:berlin"));
  EXPECT_LT(list.out.find("fleet"), list.out.find("site:berlin"));

  Result effective = Run({"config", "effective", "cam-0"});
  ASSERT_EQ(effective.code, 0) << effective;
  EXPECT_THAT(effective.out, HasSubstr("layers: fleet -> site:berlin"));
  EXPECT_THAT(effective.out, HasSubstr("camera.fps   = 30    (site:berlin)"));
  EXPECT_THAT(effective.out, HasSubstr("camera.width = 640   (fleet)"));
  EXPECT_THAT(effective.out, HasSubstr("threshold    = 0.5   (fleet)"));
  Result effective_json = Run({"config", "effective", "cam-0", "--json"});
  EXPECT_EQ(effective_json.Json()["sources"]["camera"]["fps"], "site:berlin");

  Result del = Run({"config", "delete", "site", "berlin"});
  ASSERT_EQ(del.code, 0) << del;
  EXPECT_THAT(del.out, HasSubstr("layer site:berlin deleted"));
  EXPECT_THAT(Run({"config", "effective", "cam-0"}).out, HasSubstr("camera.fps   = 15    (fleet)"));
  EXPECT_EQ(Run({"config", "delete", "site", "berlin"}).code, 1);
}

TEST_F(HubCommandsTest, RolloutStartWatchCompletesAndExitsZero) {
  std::vector<std::string> devices = EnrollDevices(3);
  ASSERT_EQ(Run({"release", "push", Bundle("r1", 1, &key_.private_key)}).code, 0);

  auto watch = std::async(std::launch::async, [&] {
    return Run({"rollout", "start", "r1", "--waves", "1,100%", "--soak", "0", "--max-failures", "0",
                "--site", "berlin", "--watch", "--interval", "0.1"});
  });
  // Each device installs what it is offered.
  std::vector<bool> done(devices.size(), false);
  for (int round = 0; round < 200 && watch.wait_for(50ms) != std::future_status::ready; ++round) {
    for (size_t i = 0; i < devices.size(); ++i) {
      if (!done[i] && Desired(devices[i]) == "r1") {
        ASSERT_EQ(Report(devices[i], 1, "committed", "r1", "r1").status, 200);
        done[i] = true;
      }
    }
  }
  Result result = watch.get();
  ASSERT_EQ(result.code, 0) << result;
  EXPECT_THAT(result.out, HasSubstr("state:     completed"));
  EXPECT_THAT(result.out, HasSubstr("[####################] 3/3 committed (100%)"));
  EXPECT_THAT(result.out, HasSubstr("waves 1, 100%; soak 0 s"));
  EXPECT_THAT(result.err, HasSubstr("wave 1/2"));
  EXPECT_THAT(result.err, HasSubstr("3/3 committed"));

  Result list = Run({"rollout", "list"});
  ASSERT_EQ(list.code, 0) << list;
  EXPECT_THAT(list.out, HasSubstr("completed"));
  Result list_json = Run({"rollout", "list", "--json"});
  ASSERT_EQ(list_json.Json()["rollouts"].size(), 1u);
  int64_t id = list_json.Json()["rollouts"][0]["id"];
  Result status = Run({"rollout", "status", StrCat(id)});
  ASSERT_EQ(status.code, 0) << status;
  EXPECT_THAT(status.out, HasSubstr("wave:      2/2"));
  EXPECT_THAT(status.out, HasSubstr("history:"));
  Result status_json = Run({"rollout", "status", StrCat(id), "--json"});
  EXPECT_EQ(status_json.Json()["counts"]["committed"], 3);
  // Watching a finished rollout returns at once.
  Result watch_done = Run({"rollout", "status", StrCat(id), "--watch", "--json"});
  EXPECT_EQ(watch_done.code, 0) << watch_done;
  EXPECT_EQ(watch_done.Json()["state"], "completed");

  Result pause = Run({"rollout", "pause", StrCat(id)});
  EXPECT_EQ(pause.code, 1) << pause;
  EXPECT_THAT(pause.err, HasSubstr("only an active rollout can pause"));
  EXPECT_EQ(Run({"rollout", "status", "999"}).code, 1);
  EXPECT_EQ(Run({"rollout", "start", "r1", "--waves", "1,x"}).code, 2);
  Result unknown = Run({"rollout", "start", "nope"});
  EXPECT_EQ(unknown.code, 1) << unknown;
}

TEST_F(HubCommandsTest, WatchedRolloutThatHaltsExitsOneWithTheReason) {
  std::vector<std::string> devices = EnrollDevices(2);
  ASSERT_EQ(Run({"release", "push", Bundle("r1", 1, &key_.private_key)}).code, 0);
  Result start = Run({"rollout", "start", "r1", "--waves", "1,100%", "--soak", "0",
                      "--p95-regression", "80", "--max-error-rate", "0.1", "--max-drift-psi", "0.3",
                      "--max-offline", "1", "--window", "00:00-23:59:59", "--json"});
  ASSERT_EQ(start.code, 0) << start;
  int64_t id = start.Json()["id"];
  EXPECT_EQ(start.Json()["device_count"], 2);
  EXPECT_EQ(start.Json()["plan"]["gates"]["p95_regression_pct"], 80);
  EXPECT_EQ(start.Json()["plan"]["gates"]["max_error_rate"], 0.1);
  EXPECT_EQ(start.Json()["plan"]["gates"]["max_drift_psi"], 0.3);
  EXPECT_EQ(start.Json()["plan"]["gates"]["max_offline"], 1);
  EXPECT_EQ(start.Json()["plan"]["maintenance_window"]["end"], "23:59:59");
  EXPECT_EQ(Run({"rollout", "start", "r1", "--window", "0200"}).code, 2);

  auto watch = std::async(std::launch::async, [&] {
    return Run({"rollout", "status", StrCat(id), "--watch", "--interval", "0.1"});
  });
  bool reported = false;
  for (int round = 0; round < 200 && watch.wait_for(50ms) != std::future_status::ready; ++round) {
    if (!reported && Desired(devices[0]) == "r1") {
      ASSERT_EQ(Report(devices[0], 1, "rolled_back", "r1", "").status, 200);
      reported = true;
    }
  }
  Result result = watch.get();
  EXPECT_EQ(result.code, 1) << result;
  EXPECT_THAT(result.out, HasSubstr("state:     halted"));
  EXPECT_THAT(result.out, HasSubstr("halted:    install failures"));
  EXPECT_THAT(result.out, HasSubstr("rolled back: cam-0"));
}

TEST_F(HubCommandsTest, RolloutsArePausedResumedRolledBackAndAborted) {
  std::vector<std::string> devices = EnrollDevices(2);
  ASSERT_EQ(Run({"release", "push", Bundle("r1", 1, &key_.private_key)}).code, 0);
  Result start = Run({"rollout", "start", "--devices", "cam-1", "r1", "--deadline", "600"});
  ASSERT_EQ(start.code, 0) << start;
  EXPECT_THAT(start.out, HasSubstr("started: 1 device(s)"));
  Result list = Run({"rollout", "list", "--json"});
  int64_t id = list.Json()["rollouts"][0]["id"];
  std::string rid = StrCat(id);
  for (int i = 0; i < 100 && Desired(devices[1]) != "r1"; ++i) std::this_thread::sleep_for(50ms);
  ASSERT_EQ(Desired(devices[1]), "r1");
  EXPECT_EQ(Desired(devices[0]), "");

  Result pause = Run({"rollout", "pause", rid});
  ASSERT_EQ(pause.code, 0) << pause;
  EXPECT_THAT(pause.out, HasSubstr(StrCat("rollout ", id, " of r1: paused")));
  Result resume = Run({"rollout", "resume", rid, "--json"});
  ASSERT_EQ(resume.code, 0) << resume;
  EXPECT_EQ(resume.Json()["state"], "running");
  Result rollback = Run({"rollout", "rollback", rid});
  ASSERT_EQ(rollback.code, 0) << rollback;
  EXPECT_THAT(rollback.out, HasSubstr("halted (manual rollback: requested by root)"));
  EXPECT_EQ(Desired(devices[1]), "");
  Result abort = Run({"rollout", "abort", rid});
  ASSERT_EQ(abort.code, 0) << abort;
  EXPECT_THAT(abort.out, HasSubstr("aborted"));
  Result watched = Run({"rollout", "status", rid, "--watch"});
  EXPECT_EQ(watched.code, 1) << watched;
  EXPECT_THAT(watched.out, HasSubstr("state:     aborted"));
}

TEST_F(HubCommandsTest, TelemetryAndAlertsAreShownAsTablesAndJson) {
  std::vector<std::string> devices = EnrollDevices(2, "berlin");
  for (int i = 0; i < 2; ++i) {
    json batch = {{"batch_id", "b1"},
                  {"samples",
                   {{{"metric", "temperature_c"}, {"value", i == 0 ? 96.5 : 40}},
                    {{"metric", "model_loaded"},
                     {"value", 1},
                     {"labels", {{"model", "yolo"}, {"version", StrCat(3 + i)}}}}}}};
    ASSERT_EQ(DeviceCall(devices[i], "POST", "/api/v1/device/telemetry", batch.dump()).status, 200);
  }

  Result table = Run({"telemetry", "temperature_c", "--since", "10m"});
  ASSERT_EQ(table.code, 0) << table;
  EXPECT_THAT(table.out, HasSubstr("DEVICE"));
  EXPECT_THAT(table.out, HasSubstr("cam-0"));
  EXPECT_THAT(table.out, HasSubstr("96.5"));
  EXPECT_THAT(table.out, HasSubstr("temperature_c: 2 series"));
  Result by_model = Run({"telemetry", "temperature_c", "--group-by", "model_version", "--step",
                         "1h", "--model-version", "yolo/4", "--json"});
  ASSERT_EQ(by_model.code, 0) << by_model;
  ASSERT_EQ(by_model.Json()["series"].size(), 1u) << by_model.out;
  EXPECT_EQ(by_model.Json()["series"][0]["group"], "yolo/4");
  EXPECT_EQ(by_model.Json()["series"][0]["points"][0]["max"], 40);
  EXPECT_EQ(Run({"telemetry", "temperature_c", "--since", "soon"}).code, 2);
  EXPECT_EQ(Run({"telemetry", "temperature_c", "--group-by", "planet"}).code, 2);
  EXPECT_EQ(Run({"telemetry", "temperature_c", "--step", "never"}).code, 1);  // the hub's 400

  ASSERT_TRUE(hub_->EvaluateAlerts().ok());
  Result alerts = Run({"alerts"});
  ASSERT_EQ(alerts.code, 0) << alerts;
  EXPECT_THAT(alerts.out, HasSubstr("temperature_high"));
  EXPECT_THAT(alerts.out, HasSubstr("cam-0"));
  EXPECT_THAT(alerts.out, HasSubstr("1 firing"));
  Result alerts_json = Run({"alerts", "--state", "all", "--site", "berlin", "--json"});
  ASSERT_EQ(alerts_json.code, 0) << alerts_json;
  ASSERT_EQ(alerts_json.Json()["alerts"].size(), 1u);
  EXPECT_EQ(alerts_json.Json()["alerts"][0]["value"], 96.5);
  Result rules = Run({"alerts", "--rules"});
  ASSERT_EQ(rules.code, 0) << rules;
  EXPECT_THAT(rules.out, HasSubstr("error_budget_burn_fast"));
  EXPECT_THAT(rules.out, HasSubstr("\"temperature_max_c\":85"));
  EXPECT_EQ(Run({"alerts", "--state", "burning"}).code, 2);
}

}  // namespace
}  // namespace outpost::cli
