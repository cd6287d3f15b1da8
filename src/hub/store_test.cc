// Every case runs against both backends: SQLite in a temporary directory,
// and a real PostgreSQL server (hub/testing/postgres_server.h) started once
// for the binary, with a fresh database per case. "Two hub processes" are
// two Store objects opened on the same database.
#include "hub/store.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "common/sha256.h"
#include "hub/migrations.h"
#include "hub/sql.h"
#if OUTPOST_WITH_POSTGRES
#include "hub/testing/postgres_server.h"
#endif

namespace outpost::hub {
namespace {

namespace fs = std::filesystem;

absl::Status StatusOf(const absl::Status& s) { return s; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

#define ASSERT_OK(expr)                          \
  do {                                           \
    const absl::Status status_ = StatusOf(expr); \
    ASSERT_TRUE(status_.ok()) << status_;        \
  } while (0)
#define EXPECT_OK(expr)                          \
  do {                                           \
    const absl::Status status_ = StatusOf(expr); \
    EXPECT_TRUE(status_.ok()) << status_;        \
  } while (0)
#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL_(OUTPOST_CONCAT_(statusor_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  ASSERT_TRUE(tmp.ok()) << tmp.status();           \
  lhs = std::move(tmp).value()

template <typename T>
absl::StatusCode CodeOf(const T& s) {
  return StatusOf(s).code();
}

std::string Hash(std::string_view secret) { return Sha256::HexOf(secret); }

enum class Backend { kSqlite, kPostgres };

#if OUTPOST_WITH_POSTGRES
// Stops the shared server after the last test.
class PostgresEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { testing::PostgresServer::StopShared(); }
};
::testing::Environment* const postgres_environment =
    ::testing::AddGlobalTestEnvironment(new PostgresEnvironment);
#endif

class StoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(url_ = NewDatabase());
    ASSERT_OK_AND_ASSIGN(store_, Store::Open(url_));
  }

  void TearDown() override {
    store_.reset();
    for (const std::string& url : databases_) DropDatabase(url);
  }

  // A new empty database of the backend under test; returns its URL.
  std::string NewDatabase() {
    std::string url;
    if (GetParam() == Backend::kSqlite) {
      std::string pattern = (fs::temp_directory_path() / "outpost-hub-store-XXXXXX").string();
      if (mkdtemp(pattern.data()) == nullptr) {
        ADD_FAILURE() << "mkdtemp failed";
        return "";
      }
      url = StrCat("sqlite://", pattern, "/hub.db");
    } else {
#if OUTPOST_WITH_POSTGRES
      absl::StatusOr<testing::PostgresServer*> server = testing::PostgresServer::Shared();
      if (!server.ok()) {
        ADD_FAILURE() << "cannot start PostgreSQL: " << server.status();
        return "";
      }
      static std::once_flag announce;
      std::call_once(announce, [&] {
        std::cout << "[ postgres ] started on 127.0.0.1:" << (*server)->port() << " in "
                  << (*server)->startup_time().count() << " ms\n";
      });
      absl::StatusOr<std::string> created = (*server)->CreateDatabase();
      if (!created.ok()) {
        ADD_FAILURE() << created.status();
        return "";
      }
      url = *created;
#endif
    }
    databases_.push_back(url);
    return url;
  }

  void DropDatabase(const std::string& url) {
    if (GetParam() == Backend::kSqlite) {
      std::error_code ec;
      fs::remove_all(fs::path(url.substr(9)).parent_path(), ec);
      return;
    }
#if OUTPOST_WITH_POSTGRES
    absl::StatusOr<testing::PostgresServer*> server = testing::PostgresServer::Shared();
    if (server.ok()) EXPECT_OK((*server)->DropDatabase(url));
#endif
  }

  // The driver below the Store, for migration tests.
  absl::StatusOr<std::unique_ptr<sql::Database>> OpenRaw(const std::string& url) {
    if (GetParam() == Backend::kSqlite) return sql::OpenSqlite(url.substr(9), {});
    return sql::OpenPostgres(url, {});
  }

  // Another hub process on the same database.
  std::unique_ptr<Store> OpenSecond() {
    absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(url_);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  Device NewDevice(std::string_view id, std::string_view site = "", Labels labels = {}) {
    Device d;
    d.id = std::string(id);
    d.credential_hash = Hash(StrCat("credential-", id));
    d.name = StrCat("camera ", id);
    d.site = std::string(site);
    d.labels = std::move(labels);
    d.facts_json = R"({"arch":"x86_64"})";
    return d;
  }

  void AddDevice(std::string_view id, std::string_view site = "", Labels labels = {}) {
    ASSERT_OK(store_->CreateDevice(NewDevice(id, site, std::move(labels)), 1000));
  }

  Release NewRelease(std::string_view id, int64_t sequence) {
    Release r;
    r.id = std::string(id);
    r.sequence = sequence;
    r.bundle_sha256 = Hash(StrCat("bundle-", id));
    r.size = 1000 + sequence;
    r.manifest_json = StrCat(R"({"name":")", id, R"("})");
    r.key_id = "key-1";
    r.created_at = 5000 + sequence;
    return r;
  }

  void AddRelease(std::string_view id, int64_t sequence) {
    ASSERT_OK(store_->InsertRelease(NewRelease(id, sequence)));
  }

  std::string url_;
  std::vector<std::string> databases_;
  std::unique_ptr<Store> store_;
};

// --- Opening and migrations -------------------------------------------------

TEST_P(StoreTest, OpenMigratesToTheLatestVersionAndReopenChangesNothing) {
  ASSERT_OK_AND_ASSIGN(int64_t version, store_->SchemaVersion());
  EXPECT_EQ(version, static_cast<int64_t>(HubMigrations().size()));
  ASSERT_OK(store_->Ping());
  ASSERT_OK(store_->CreateApiToken("ci", Role::kAdmin, Hash("s"), 1));
  std::unique_ptr<Store> again = OpenSecond();
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(*again->SchemaVersion(), version);
  EXPECT_OK(again->FindApiTokenByHash(Hash("s")));
}

TEST_P(StoreTest, HubProcessesOpeningAFreshDatabaseTogetherMigrateItOnce) {
  std::string url = NewDatabase();
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(url);
      EXPECT_TRUE(store.ok()) << store.status();
      if (store.ok() &&
          (*store)->SchemaVersion().value_or(-1) == static_cast<int64_t>(HubMigrations().size())) {
        ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 4);
}

TEST_P(StoreTest, RefusesADatabaseMigratedByANewerHub) {
  std::string url = NewDatabase();
  std::vector<Migration> future(HubMigrations().begin(), HubMigrations().end());
  future.push_back({static_cast<int64_t>(future.size() + 1), "from the future",
                    "CREATE TABLE future_things (id BIGINT)"});
  {
    ASSERT_OK_AND_ASSIGN(auto db, OpenRaw(url));
    ASSERT_OK(Migrate(*db, future));
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(url);
  EXPECT_EQ(CodeOf(store), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(MessageOf(store.status())).find("newer hub"), std::string::npos)
      << store.status();
}

TEST_P(StoreTest, AFailingMigrationLeavesTheSchemaAtThePreviousVersion) {
  ASSERT_OK_AND_ASSIGN(auto db, OpenRaw(url_));
  std::vector<Migration> migrations(HubMigrations().begin(), HubMigrations().end());
  const int64_t next = static_cast<int64_t>(migrations.size() + 1);
  migrations.push_back({next, "half-way broken",
                        "CREATE TABLE widgets (id BIGINT); INSERT INTO no_such_table VALUES (1)"});
  absl::Status failed = Migrate(*db, migrations);
  EXPECT_FALSE(failed.ok());
  EXPECT_NE(std::string(MessageOf(failed)).find("half-way broken"), std::string::npos) << failed;
  EXPECT_EQ(*SchemaVersion(*db), next - 1);
  // Nothing of it stayed: the table it created is gone with it.
  absl::Status probe = db->Transact(sql::TxMode::kRead, [](sql::Connection& c) {
    return c.Query("SELECT COUNT(*) FROM widgets").status();
  });
  EXPECT_FALSE(probe.ok());

  migrations.back().sql = "CREATE TABLE widgets (id BIGINT); INSERT INTO widgets VALUES (1)";
  ASSERT_OK(Migrate(*db, migrations));
  EXPECT_EQ(*SchemaVersion(*db), next);
  ASSERT_OK(Migrate(*db, migrations));  // idempotent
  EXPECT_EQ(*SchemaVersion(*db), next);
}

TEST_P(StoreTest, RejectsUnknownUrlsAndMissingDirectories) {
  EXPECT_EQ(CodeOf(Store::Open("mysql://root@localhost/hub")), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(Store::Open("sqlite:///no/such/dir/hub.db")), absl::StatusCode::kNotFound);
  if (GetParam() == Backend::kPostgres) {
    // Port 1 on loopback: refused at once.
    absl::StatusOr<std::unique_ptr<Store>> store =
        Store::Open("postgresql://outpost:secret@127.0.0.1:1/hub?connect_timeout=2");
    EXPECT_EQ(CodeOf(store), absl::StatusCode::kUnavailable);
    EXPECT_EQ(std::string(MessageOf(store.status())).find("secret"), std::string::npos);
  }
}

// --- API and bootstrap tokens --------------------------------------------

TEST_P(StoreTest, ApiTokensAreFoundByHashUntilRevoked) {
  ASSERT_OK_AND_ASSIGN(ApiToken admin, store_->CreateApiToken("ci", Role::kAdmin, Hash("a"), 10));
  ASSERT_OK_AND_ASSIGN(ApiToken viewer,
                       store_->CreateApiToken("grafana", Role::kViewer, Hash("v"), 11));
  EXPECT_NE(admin.id, viewer.id);
  EXPECT_EQ(admin.created_at, 10);
  EXPECT_EQ(CodeOf(store_->CreateApiToken("dup", Role::kOperator, Hash("a"), 12)),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(CodeOf(store_->CreateApiToken("bad", Role::kOperator, "not-a-hash", 12)),
            absl::StatusCode::kInvalidArgument);

  ASSERT_OK_AND_ASSIGN(ApiToken found, store_->FindApiTokenByHash(Hash("v")));
  EXPECT_EQ(found.id, viewer.id);
  EXPECT_EQ(found.name, "grafana");
  EXPECT_EQ(found.role, Role::kViewer);

  ASSERT_OK(store_->RevokeApiToken(viewer.id));
  ASSERT_OK(store_->RevokeApiToken(viewer.id));  // idempotent
  EXPECT_EQ(CodeOf(store_->FindApiTokenByHash(Hash("v"))), absl::StatusCode::kNotFound);
  EXPECT_EQ(CodeOf(store_->RevokeApiToken(999)), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(auto all, store_->ListApiTokens());
  ASSERT_EQ(all.size(), 2u);
  EXPECT_FALSE(all[0].revoked);
  EXPECT_TRUE(all[1].revoked);
}

TEST_P(StoreTest, BootstrapTokenAdmitsExactlyItsUsesUntilItExpires) {
  BootstrapToken token;
  token.token_hash = Hash("boot");
  token.uses_left = 2;
  token.expires_at = 10'000;
  token.site = "store-17";
  token.labels = {{"tier", "edge"}};
  ASSERT_OK_AND_ASSIGN(BootstrapToken created, store_->CreateBootstrapToken(token, 100));
  EXPECT_EQ(created.created_at, 100);
  EXPECT_EQ(created.labels, token.labels);

  ASSERT_OK_AND_ASSIGN(BootstrapToken first, store_->ConsumeBootstrapToken(Hash("boot"), 200));
  EXPECT_EQ(first.uses_left, 1);
  EXPECT_EQ(first.site, "store-17");
  ASSERT_OK_AND_ASSIGN(BootstrapToken second, store_->ConsumeBootstrapToken(Hash("boot"), 300));
  EXPECT_EQ(second.uses_left, 0);
  absl::StatusOr<BootstrapToken> third = store_->ConsumeBootstrapToken(Hash("boot"), 400);
  EXPECT_EQ(CodeOf(third), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(MessageOf(third.status())).find("no uses left"), std::string::npos);
  EXPECT_EQ(CodeOf(store_->ConsumeBootstrapToken(Hash("nope"), 400)), absl::StatusCode::kNotFound);

  token.token_hash = Hash("expiring");
  token.uses_left = 5;
  ASSERT_OK_AND_ASSIGN(BootstrapToken expiring, store_->CreateBootstrapToken(token, 100));
  EXPECT_OK(store_->ConsumeBootstrapToken(Hash("expiring"), 9'999));
  absl::StatusOr<BootstrapToken> late = store_->ConsumeBootstrapToken(Hash("expiring"), 10'000);
  EXPECT_EQ(CodeOf(late), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(MessageOf(late.status())).find("expired"), std::string::npos);

  ASSERT_OK(store_->RevokeBootstrapToken(expiring.id));
  ASSERT_OK_AND_ASSIGN(auto all, store_->ListBootstrapTokens());
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[1].uses_left, 0);
  token.uses_left = 0;
  token.token_hash = Hash("zero");
  EXPECT_EQ(CodeOf(store_->CreateBootstrapToken(token, 1)), absl::StatusCode::kInvalidArgument);
}

// --- Devices --------------------------------------------------------------

TEST_P(StoreTest, EnrollmentAppliesTheTokensSiteAndLabelsAndConsumesAUseOnlyOnSuccess) {
  BootstrapToken token;
  token.token_hash = Hash("boot");
  token.uses_left = 3;
  token.expires_at = 1'000'000;
  token.site = "store-17";
  token.labels = {{"tier", "edge"}, {"camera", "overridden"}};
  ASSERT_OK(store_->CreateBootstrapToken(token, 1));

  Device device = NewDevice("dev-1", "ignored-site", {{"camera", "own"}, {"lens", "wide"}});
  ASSERT_OK_AND_ASSIGN(Device enrolled, store_->EnrollDevice(Hash("boot"), device, 50));
  EXPECT_EQ(enrolled.site, "store-17");
  EXPECT_EQ(enrolled.labels,
            (Labels{{"camera", "overridden"}, {"lens", "wide"}, {"tier", "edge"}}));
  EXPECT_EQ(enrolled.status, DeviceStatus::kActive);
  EXPECT_EQ(enrolled.enrolled_at, 50);
  EXPECT_EQ(enrolled.desired_generation, 1);
  EXPECT_EQ(enrolled.facts_json, R"({"arch":"x86_64"})");

  // The same device id again: refused, and the token keeps its use.
  absl::StatusOr<Device> again = store_->EnrollDevice(Hash("boot"), device, 60);
  EXPECT_EQ(CodeOf(again), absl::StatusCode::kAlreadyExists);
  ASSERT_OK_AND_ASSIGN(auto tokens, store_->ListBootstrapTokens());
  EXPECT_EQ(tokens.at(0).uses_left, 2);

  // Same credential under another id: refused too.
  Device clash = NewDevice("dev-2");
  clash.credential_hash = device.credential_hash;
  EXPECT_EQ(CodeOf(store_->EnrollDevice(Hash("boot"), clash, 60)),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(CodeOf(store_->EnrollDevice(Hash("wrong"), NewDevice("dev-3"), 60)),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(CodeOf(store_->GetDevice("dev-3")), absl::StatusCode::kNotFound);
}

TEST_P(StoreTest, DeviceContactAttributesPinsAndStatus) {
  AddDevice("dev-1", "site-a", {{"tier", "edge"}});
  ASSERT_OK_AND_ASSIGN(Device d, store_->GetDeviceByCredential(Hash("credential-dev-1")));
  EXPECT_EQ(d.id, "dev-1");
  EXPECT_EQ(d.last_seen_at, 0);
  EXPECT_EQ(CodeOf(store_->GetDeviceByCredential(Hash("x"))), absl::StatusCode::kNotFound);

  ASSERT_OK(store_->RecordDeviceContact("dev-1", {2000, -150, R"({"arch":"arm64"})"}));
  ASSERT_OK(store_->RecordDeviceContact("dev-1", {1500, 20, std::nullopt}));  // late, older
  ASSERT_OK_AND_ASSIGN(d, store_->GetDevice("dev-1"));
  EXPECT_EQ(d.last_seen_at, 2000);
  EXPECT_EQ(d.last_clock_offset_ms, -150);
  EXPECT_EQ(d.facts_json, R"({"arch":"arm64"})");
  EXPECT_EQ(CodeOf(store_->RecordDeviceContact("nope", {1, 0, std::nullopt})),
            absl::StatusCode::kNotFound);

  // A name change does not touch desired state; site and labels do.
  int64_t generation = d.desired_generation;
  ASSERT_OK_AND_ASSIGN(d, store_->UpdateDeviceAttributes("dev-1", {"lobby camera", {}, {}}));
  EXPECT_EQ(d.name, "lobby camera");
  EXPECT_EQ(d.desired_generation, generation);
  ASSERT_OK_AND_ASSIGN(d, store_->UpdateDeviceAttributes("dev-1", {{}, "site-b", {}}));
  EXPECT_EQ(d.site, "site-b");
  EXPECT_EQ(d.desired_generation, ++generation);
  ASSERT_OK_AND_ASSIGN(d, store_->UpdateDeviceAttributes(
                              "dev-1", {{}, {}, Labels{{"tier", "core"}, {"gpu", "t4"}}}));
  EXPECT_EQ(d.labels, (Labels{{"gpu", "t4"}, {"tier", "core"}}));
  EXPECT_EQ(d.desired_generation, ++generation);
  ASSERT_OK_AND_ASSIGN(d, store_->UpdateDeviceAttributes("dev-1", {{}, "site-b", d.labels}));
  EXPECT_EQ(d.desired_generation, generation);  // no change, no bump
  EXPECT_EQ(CodeOf(store_->UpdateDeviceAttributes("nope", {})), absl::StatusCode::kNotFound);

  AddRelease("r1", 1);
  EXPECT_EQ(CodeOf(store_->PinDevice("dev-1", "no-such-release")), absl::StatusCode::kNotFound);
  ASSERT_OK(store_->PinDevice("dev-1", "r1"));
  ASSERT_OK(store_->PinDevice("dev-1", "r1"));  // unchanged: no bump
  ASSERT_OK_AND_ASSIGN(d, store_->GetDevice("dev-1"));
  EXPECT_EQ(d.pinned_release, "r1");
  EXPECT_EQ(d.desired_generation, ++generation);
  ASSERT_OK(store_->PinDevice("dev-1", std::nullopt));
  ASSERT_OK_AND_ASSIGN(d, store_->GetDevice("dev-1"));
  EXPECT_FALSE(d.pinned_release.has_value());
  EXPECT_EQ(d.desired_generation, ++generation);

  ASSERT_OK(store_->SetDeviceStatus("dev-1", DeviceStatus::kRevoked));
  ASSERT_OK(store_->SetDeviceStatus("dev-1", DeviceStatus::kRevoked));
  EXPECT_EQ(CodeOf(store_->SetDeviceStatus("dev-1", DeviceStatus::kActive)),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_OK(store_->SetDeviceStatus("dev-1", DeviceStatus::kDecommissioned));
  ASSERT_OK_AND_ASSIGN(d, store_->GetDevice("dev-1"));
  EXPECT_EQ(d.status, DeviceStatus::kDecommissioned);
  EXPECT_EQ(d.desired_generation, generation + 2);
  EXPECT_EQ(CodeOf(store_->SetDeviceStatus("nope", DeviceStatus::kRevoked)),
            absl::StatusCode::kNotFound);
}

TEST_P(StoreTest, ListsDevicesBySiteLabelsStatusAndReleaseInPages) {
  for (int i = 0; i < 30; ++i) {
    Labels labels{{"tier", i % 2 == 0 ? "edge" : "core"}};
    if (i % 3 == 0) labels["gpu"] = "t4";
    ASSERT_NO_FATAL_FAILURE(
        AddDevice(StrCat("dev-", i < 10 ? "0" : "", i), i < 20 ? "site-a" : "site-b", labels));
  }
  ASSERT_OK(store_->SetDeviceStatus("dev-00", DeviceStatus::kRevoked));
  ASSERT_OK(store_->RecordDeviceReport({{"dev-03", 1, "committed", "r1", "", 1, 1, 1},
                                        DeviceUpdateStatus{"r1", "", "idle", ""},
                                        std::nullopt}));

  DeviceFilter filter;
  EXPECT_EQ(*store_->CountDevices(filter), 30);
  filter.site = "site-a";
  EXPECT_EQ(*store_->CountDevices(filter), 20);
  filter.labels = {{"tier", "edge"}, {"gpu", "t4"}};  // i in {0, 6, 12, 18}
  ASSERT_OK_AND_ASSIGN(auto devices, store_->ListDevices(filter));
  ASSERT_EQ(devices.size(), 4u);
  EXPECT_EQ(devices[0].id, "dev-00");
  EXPECT_EQ(devices[3].id, "dev-18");
  EXPECT_EQ(devices[1].labels, (Labels{{"gpu", "t4"}, {"tier", "edge"}}));
  filter.status = DeviceStatus::kActive;
  EXPECT_EQ(*store_->CountDevices(filter), 3);
  filter = {};
  filter.current_release = "r1";
  ASSERT_OK_AND_ASSIGN(devices, store_->ListDevices(filter));
  ASSERT_EQ(devices.size(), 1u);
  EXPECT_EQ(devices[0].id, "dev-03");
  EXPECT_EQ(devices[0].update.current_release, "r1");

  // Pages of 7 by id cover every device exactly once.
  filter = {};
  filter.limit = 7;
  std::vector<std::string> seen;
  while (true) {
    ASSERT_OK_AND_ASSIGN(auto page, store_->ListDevices(filter));
    if (page.empty()) break;
    for (const Device& d : page) {
      seen.push_back(d.id);
      EXPECT_FALSE(d.labels.empty()) << d.id;
    }
    filter.after_id = page.back().id;
  }
  ASSERT_EQ(seen.size(), 30u);
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
}

TEST_P(StoreTest, DesiredReleaseBumpsTheGenerationOnlyOnChange) {
  AddDevice("dev-1");
  AddRelease("r1", 1);
  AddRelease("r2", 2);
  ASSERT_OK_AND_ASSIGN(int64_t g1, store_->SetDesiredRelease("dev-1", "r1", 100));
  EXPECT_EQ(g1, 2);
  EXPECT_EQ(*store_->SetDesiredRelease("dev-1", "r1", 101), g1);
  EXPECT_EQ(*store_->SetDesiredRelease("dev-1", "r2", 102), g1 + 1);
  EXPECT_EQ(*store_->SetDesiredRelease("dev-1", std::nullopt, 103), g1 + 2);
  EXPECT_EQ(*store_->SetDesiredRelease("dev-1", std::nullopt, 104), g1 + 2);
  EXPECT_EQ(CodeOf(store_->SetDesiredRelease("dev-1", "r9", 105)), absl::StatusCode::kNotFound);
  EXPECT_EQ(CodeOf(store_->SetDesiredRelease("nope", "r1", 105)), absl::StatusCode::kNotFound);
  ASSERT_OK(store_->SetDesiredRelease("dev-1", "r2", 106));
  ASSERT_OK_AND_ASSIGN(Device d, store_->GetDevice("dev-1"));
  EXPECT_EQ(d.desired_release, "r2");
  EXPECT_EQ(d.desired_generation, g1 + 3);
}

// --- Releases ---------------------------------------------------------------

TEST_P(StoreTest, ReleasesAreUniqueByNameAndBundleAndListNewestFirst) {
  AddRelease("r1", 1);
  AddRelease("r3", 3);
  AddRelease("r2", 2);
  EXPECT_EQ(CodeOf(store_->InsertRelease(NewRelease("r1", 9))), absl::StatusCode::kAlreadyExists);
  Release same_bundle = NewRelease("r4", 4);
  same_bundle.bundle_sha256 = NewRelease("r2", 2).bundle_sha256;
  absl::Status dup = store_->InsertRelease(same_bundle);
  EXPECT_EQ(dup.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(std::string(MessageOf(dup)).find("\"r2\""), std::string::npos) << dup;
  Release bad = NewRelease("r5", 5);
  bad.bundle_sha256 = "abc";
  EXPECT_EQ(CodeOf(store_->InsertRelease(bad)), absl::StatusCode::kInvalidArgument);

  ASSERT_OK_AND_ASSIGN(Release r2, store_->GetRelease("r2"));
  Release expected = NewRelease("r2", 2);
  EXPECT_EQ(r2.bundle_sha256, expected.bundle_sha256);
  EXPECT_EQ(r2.size, expected.size);
  EXPECT_EQ(r2.manifest_json, expected.manifest_json);
  EXPECT_EQ(r2.key_id, "key-1");
  EXPECT_EQ(r2.created_at, expected.created_at);
  EXPECT_FALSE(r2.yanked);
  EXPECT_EQ(CodeOf(store_->GetRelease("r9")), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(Release by_bundle, store_->GetReleaseByBundle(expected.bundle_sha256));
  EXPECT_EQ(by_bundle.id, "r2");
  EXPECT_EQ(CodeOf(store_->GetReleaseByBundle(Hash("other"))), absl::StatusCode::kNotFound);

  ASSERT_OK(store_->YankRelease("r3"));
  ASSERT_OK(store_->YankRelease("r3"));
  EXPECT_EQ(CodeOf(store_->YankRelease("r9")), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(auto listed, store_->ListReleases(/*include_yanked=*/false));
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].id, "r2");
  EXPECT_EQ(listed[1].id, "r1");
  ASSERT_OK_AND_ASSIGN(listed, store_->ListReleases(/*include_yanked=*/true, /*limit=*/2));
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].id, "r3");
  EXPECT_TRUE(listed[0].yanked);
}

// --- Device reports ---------------------------------------------------------

TEST_P(StoreTest, DeviceReportsAreStoredOnceAndOnlyTheNewestSetsTheDeviceState) {
  AddDevice("dev-1");
  AddRelease("r1", 1);
  AddRelease("r2", 2);
  ASSERT_OK_AND_ASSIGN(Rollout rollout,
                       store_->CreateRollout({.release_id = "r2"}, {{0, "dev-1", 0}}, 10));
  auto report = [&](int64_t seq, std::string state, std::string current,
                    RolloutDeviceState rollout_state) {
    DeviceReport r;
    r.event = {"dev-1", seq, state, "r2", "", 0.5, 1000 + seq, 2000 + seq};
    r.status = DeviceUpdateStatus{current, "r1", state, ""};
    r.rollout = DeviceReport::RolloutProgress{rollout.id, rollout_state};
    return r;
  };
  EXPECT_EQ(
      *store_->RecordDeviceReport(report(1, "downloading", "r1", RolloutDeviceState::kInstalling)),
      InsertResult::kInserted);
  EXPECT_EQ(
      *store_->RecordDeviceReport(report(3, "committed", "r2", RolloutDeviceState::kCommitted)),
      InsertResult::kInserted);
  // Seq 2 arrives late: stored in the history, but does not roll the
  // device's state back.
  EXPECT_EQ(
      *store_->RecordDeviceReport(report(2, "verifying", "r1", RolloutDeviceState::kInstalling)),
      InsertResult::kInserted);
  // Seq 3 again (a retry): acknowledged, not stored twice.
  EXPECT_EQ(
      *store_->RecordDeviceReport(report(3, "rolled_back", "r1", RolloutDeviceState::kRolledBack)),
      InsertResult::kDuplicate);

  ASSERT_OK_AND_ASSIGN(Device d, store_->GetDevice("dev-1"));
  EXPECT_EQ(d.update.current_release, "r2");
  EXPECT_EQ(d.update.previous_release, "r1");
  EXPECT_EQ(d.update.update_state, "committed");
  EXPECT_EQ(d.last_event_seq, 3);
  ASSERT_OK_AND_ASSIGN(auto members, store_->ListRolloutDevices(rollout.id));
  ASSERT_EQ(members.size(), 1u);
  EXPECT_EQ(members[0].state, RolloutDeviceState::kCommitted);
  EXPECT_EQ(members[0].updated_at, 2003);

  ASSERT_OK_AND_ASSIGN(auto events, store_->ListDeviceEvents("dev-1"));
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].seq, 3);
  EXPECT_EQ(events[0].state, "committed");
  EXPECT_EQ(events[0].progress, 0.5);
  EXPECT_EQ(events[0].device_time, 1003);
  EXPECT_EQ(events[2].seq, 1);
  ASSERT_OK_AND_ASSIGN(events, store_->ListDeviceEvents("dev-1", /*before_seq=*/3, /*limit=*/1));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].seq, 2);

  EXPECT_EQ(CodeOf(store_->RecordDeviceReport({{"nope", 1, "x"}, {}, {}})),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(CodeOf(store_->RecordDeviceReport({{"dev-1", 0, "x"}, {}, {}})),
            absl::StatusCode::kInvalidArgument);
  // Progress for a rollout the device is not in: the whole report is refused.
  DeviceReport stray = report(9, "x", "r2", RolloutDeviceState::kFailed);
  stray.rollout->rollout_id = rollout.id + 100;
  EXPECT_EQ(CodeOf(store_->RecordDeviceReport(stray)), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ListDeviceEvents("dev-1")->size(), 3u);
}

// --- Configuration layers ---------------------------------------------------

TEST_P(StoreTest, ConfigLayersVersionChangeCounterAndMergeOrder) {
  ASSERT_OK_AND_ASSIGN(int64_t seq0, store_->ConfigChangeSeq());
  EXPECT_EQ(seq0, 0);
  ASSERT_OK_AND_ASSIGN(ConfigLayer fleet,
                       store_->PutConfigLayer(ConfigScope::kFleet, "", "threads: 2", 0, 100));
  EXPECT_EQ(fleet.version, 1);
  EXPECT_EQ(fleet.change_seq, 1);
  ASSERT_OK(store_->PutConfigLayer(ConfigScope::kDevice, "dev-1", "threads: 8", std::nullopt, 101));
  ASSERT_OK(
      store_->PutConfigLayer(ConfigScope::kGroup, "gpu", "provider: cuda", std::nullopt, 102));
  ASSERT_OK(store_->PutConfigLayer(ConfigScope::kGroup, "lobby", "fps: 5", std::nullopt, 103));
  ASSERT_OK(store_->PutConfigLayer(ConfigScope::kSite, "site-a", "fps: 10", std::nullopt, 104));
  ASSERT_OK(store_->PutConfigLayer(ConfigScope::kSite, "site-b", "fps: 15", std::nullopt, 105));

  ASSERT_OK_AND_ASSIGN(ConfigLayer updated,
                       store_->PutConfigLayer(ConfigScope::kFleet, "", "threads: 4", 1, 106));
  EXPECT_EQ(updated.version, 2);
  EXPECT_EQ(updated.change_seq, 7);
  EXPECT_EQ(updated.yaml, "threads: 4");
  EXPECT_EQ(updated.updated_at, 106);
  // Stale compare-and-swap, and "must not exist yet" on an existing layer.
  EXPECT_EQ(CodeOf(store_->PutConfigLayer(ConfigScope::kFleet, "", "threads: 1", 1, 107)),
            absl::StatusCode::kAborted);
  EXPECT_EQ(CodeOf(store_->PutConfigLayer(ConfigScope::kSite, "site-a", "x", 0, 107)),
            absl::StatusCode::kAborted);
  EXPECT_EQ(*store_->ConfigChangeSeq(), 7);  // failed writes change nothing
  EXPECT_EQ(CodeOf(store_->PutConfigLayer(ConfigScope::kFleet, "key", "x", {}, 1)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(store_->PutConfigLayer(ConfigScope::kSite, "", "x", {}, 1)),
            absl::StatusCode::kInvalidArgument);

  ASSERT_OK_AND_ASSIGN(
      auto layers, store_->ListConfigLayersFor({"site-a", {"lobby", "absent", "gpu"}, "dev-1"}));
  ASSERT_EQ(layers.size(), 5u);
  EXPECT_EQ(layers[0].scope, ConfigScope::kFleet);
  EXPECT_EQ(layers[1].scope_key, "site-a");
  EXPECT_EQ(layers[2].scope_key, "lobby");
  EXPECT_EQ(layers[3].scope_key, "gpu");
  EXPECT_EQ(layers[4].scope, ConfigScope::kDevice);
  ASSERT_OK_AND_ASSIGN(layers, store_->ListConfigLayersFor({"", {}, "dev-2"}));
  ASSERT_EQ(layers.size(), 1u);

  ASSERT_OK_AND_ASSIGN(auto all, store_->ListConfigLayers());
  ASSERT_EQ(all.size(), 6u);
  EXPECT_EQ(all[0].scope, ConfigScope::kFleet);
  EXPECT_EQ(all[1].scope_key, "site-a");
  EXPECT_EQ(all[5].scope, ConfigScope::kDevice);

  EXPECT_EQ(CodeOf(store_->DeleteConfigLayer(ConfigScope::kGroup, "gpu", 7)),
            absl::StatusCode::kAborted);
  ASSERT_OK(store_->DeleteConfigLayer(ConfigScope::kGroup, "gpu", 1));
  EXPECT_EQ(CodeOf(store_->GetConfigLayer(ConfigScope::kGroup, "gpu")),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(CodeOf(store_->DeleteConfigLayer(ConfigScope::kGroup, "gpu", std::nullopt)),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(*store_->ConfigChangeSeq(), 8);
  // Re-created: version starts over, but change_seq is new, so an ETag
  // built from (scope, key, change_seq) cannot repeat an old one.
  ASSERT_OK_AND_ASSIGN(ConfigLayer again, store_->PutConfigLayer(ConfigScope::kGroup, "gpu",
                                                                 "provider: cuda", 0, 200));
  EXPECT_EQ(again.version, 1);
  EXPECT_EQ(again.change_seq, 9);
}

// --- Rollouts ---------------------------------------------------------------

TEST_P(StoreTest, CreateRolloutChecksReleaseAndDevices) {
  AddDevice("dev-1");
  AddDevice("dev-2");
  AddRelease("r1", 1);
  AddRelease("old", 0);
  ASSERT_OK(store_->YankRelease("old"));
  Rollout rollout;
  rollout.release_id = "r1";
  rollout.selector_json = R"({"site":"a"})";
  rollout.waves_json = R"([{"percent":1},{"percent":100}])";
  rollout.state = RolloutState::kRunning;
  ASSERT_OK_AND_ASSIGN(Rollout created,
                       store_->CreateRollout(rollout, {{0, "dev-1", 0}, {0, "dev-2", 1}}, 77));
  EXPECT_GT(created.id, 0);
  EXPECT_EQ(created.version, 1);
  EXPECT_EQ(created.created_at, 77);
  EXPECT_EQ(created.updated_at, 77);
  EXPECT_EQ(created.waves_json, rollout.waves_json);
  EXPECT_EQ(created.state, RolloutState::kRunning);

  rollout.release_id = "old";
  EXPECT_EQ(CodeOf(store_->CreateRollout(rollout, {}, 1)), absl::StatusCode::kFailedPrecondition);
  rollout.release_id = "nope";
  EXPECT_EQ(CodeOf(store_->CreateRollout(rollout, {}, 1)), absl::StatusCode::kNotFound);
  rollout.release_id = "r1";
  absl::StatusOr<Rollout> missing = store_->CreateRollout(rollout, {{0, "dev-9", 0}}, 1);
  EXPECT_EQ(CodeOf(missing), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(MessageOf(missing.status())).find("dev-9"), std::string::npos);
  EXPECT_EQ(CodeOf(store_->CreateRollout(rollout, {{0, "dev-1", 0}, {0, "dev-1", 1}}, 1)),
            absl::StatusCode::kAlreadyExists);
  ASSERT_OK_AND_ASSIGN(auto all, store_->ListRollouts({}));
  EXPECT_EQ(all.size(), 1u);  // the refused ones left nothing behind

  ASSERT_OK_AND_ASSIGN(auto wave1, store_->ListRolloutDevices(created.id, 1));
  ASSERT_EQ(wave1.size(), 1u);
  EXPECT_EQ(wave1[0].device_id, "dev-2");
  EXPECT_EQ(wave1[0].state, RolloutDeviceState::kPending);
  ASSERT_OK_AND_ASSIGN(auto of_device, store_->ListDeviceRollouts("dev-1"));
  ASSERT_EQ(of_device.size(), 1u);
  EXPECT_EQ(of_device[0].rollout_id, created.id);
}

TEST_P(StoreTest, UpdateRolloutIsACompareAndSwap) {
  AddRelease("r1", 1);
  ASSERT_OK_AND_ASSIGN(Rollout r, store_->CreateRollout({.release_id = "r1"}, {}, 1));
  r.state = RolloutState::kRunning;
  r.current_wave = 1;
  r.wave_started_at = 500;
  r.gates_json = R"({"p95_ms":12.5})";
  r.updated_at = 501;
  ASSERT_OK_AND_ASSIGN(Rollout saved, store_->UpdateRollout(r, 1));
  EXPECT_EQ(saved.version, 2);
  EXPECT_EQ(saved.gates_json, r.gates_json);
  EXPECT_EQ(saved.wave_started_at, 500);
  r.state = RolloutState::kHalted;
  EXPECT_EQ(CodeOf(store_->UpdateRollout(r, 1)), absl::StatusCode::kAborted);
  EXPECT_EQ(store_->GetRollout(r.id)->state, RolloutState::kRunning);
  r.id = 999;
  EXPECT_EQ(CodeOf(store_->UpdateRollout(r, 1)), absl::StatusCode::kNotFound);

  ASSERT_OK_AND_ASSIGN(auto active,
                       store_->ListRollouts({RolloutState::kPending, RolloutState::kRunning}));
  EXPECT_EQ(active.size(), 1u);
  ASSERT_OK_AND_ASSIGN(auto done, store_->ListRollouts({RolloutState::kCompleted}));
  EXPECT_TRUE(done.empty());
  EXPECT_TRUE(IsActive(RolloutState::kPaused));
  EXPECT_FALSE(IsActive(RolloutState::kHalted));
}

TEST_P(StoreTest, ARolloutStepUnderTheLockCommitsTogetherOrNotAtAll) {
  AddDevice("dev-1");
  AddDevice("dev-2");
  AddRelease("r1", 1);
  ASSERT_OK_AND_ASSIGN(Rollout r, store_->CreateRollout({.release_id = "r1"},
                                                        {{0, "dev-1", 0}, {0, "dev-2", 0}}, 1));
  // A step that fails half-way leaves nothing behind.
  absl::Status failed = store_->WithRolloutLock(r.id, [&](RolloutTransaction& tx) -> absl::Status {
    RETURN_IF_ERROR(tx.SetDesiredRelease("dev-1", "r1", 10).status());
    RETURN_IF_ERROR(tx.SetDeviceState("dev-1", RolloutDeviceState::kOffered, 10));
    Rollout next = tx.rollout();
    next.state = RolloutState::kRunning;
    RETURN_IF_ERROR(tx.SaveRollout(next));
    return absl::InternalError("gate query failed");
  });
  EXPECT_EQ(failed.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(store_->GetRollout(r.id)->version, 1);
  EXPECT_FALSE(store_->GetDevice("dev-1")->desired_release.has_value());
  EXPECT_EQ(store_->ListRolloutDevices(r.id)->at(0).state, RolloutDeviceState::kPending);

  ASSERT_OK(store_->WithRolloutLock(r.id, [&](RolloutTransaction& tx) -> absl::Status {
    EXPECT_EQ(tx.rollout().version, 1);
    ASSIGN_OR_RETURN(auto wave, tx.ListDevices(0));
    for (const RolloutDevice& d : wave) {
      RETURN_IF_ERROR(tx.SetDesiredRelease(d.device_id, "r1", 20).status());
      RETURN_IF_ERROR(tx.SetDeviceState(d.device_id, RolloutDeviceState::kOffered, 20));
    }
    Rollout next = tx.rollout();
    next.state = RolloutState::kRunning;
    next.wave_started_at = 20;
    RETURN_IF_ERROR(tx.SaveRollout(next));
    EXPECT_EQ(tx.rollout().version, 2);
    EXPECT_EQ(CodeOf(tx.SetDeviceState("dev-9", RolloutDeviceState::kOffered, 20)),
              absl::StatusCode::kNotFound);
    Rollout other = next;
    other.id += 1;
    EXPECT_EQ(CodeOf(tx.SaveRollout(other)), absl::StatusCode::kInvalidArgument);
    return absl::OkStatus();
  }));
  ASSERT_OK_AND_ASSIGN(Rollout after, store_->GetRollout(r.id));
  EXPECT_EQ(after.state, RolloutState::kRunning);
  EXPECT_EQ(after.version, 2);
  EXPECT_EQ(store_->GetDevice("dev-2")->desired_release, "r1");
  ASSERT_OK_AND_ASSIGN(auto members, store_->ListRolloutDevices(r.id));
  for (const RolloutDevice& d : members) {
    EXPECT_EQ(d.state, RolloutDeviceState::kOffered);
    EXPECT_EQ(d.updated_at, 20);
  }
  EXPECT_EQ(
      store_->WithRolloutLock(999, [](RolloutTransaction&) { return absl::OkStatus(); }).code(),
      absl::StatusCode::kNotFound);
}

// --- Telemetry --------------------------------------------------------------

TEST_P(StoreTest, TelemetryBatchesAreIdempotentQueryableAndExpire) {
  AddDevice("dev-1");
  AddDevice("dev-2");
  TelemetryBatch batch{"dev-1", "b-1", 10'000, {}};
  for (int i = 0; i < 450; ++i) {  // several multi-row INSERTs
    batch.samples.push_back(
        {i % 2 == 0 ? "latency_ms" : "fps", 1000 + i, i * 0.25, R"({"model":"yolo"})"});
  }
  EXPECT_EQ(*store_->InsertTelemetryBatch(batch), InsertResult::kInserted);
  EXPECT_EQ(*store_->InsertTelemetryBatch(batch), InsertResult::kDuplicate);
  EXPECT_EQ(*store_->InsertTelemetryBatch({"dev-2", "b-1", 20'000, {{"latency_ms", 1100, 99}}}),
            InsertResult::kInserted);
  // A sample with its own hub time (taken before its batch arrived).
  TelemetrySample taken_earlier{"latency_ms", 1200, 7};
  taken_earlier.hub_time = 30'000;
  EXPECT_EQ(*store_->InsertTelemetryBatch({"dev-2", "b-2", 40'000, {taken_earlier}}),
            InsertResult::kInserted);

  TelemetryQuery q;
  q.metric = "latency_ms";
  ASSERT_OK_AND_ASSIGN(auto samples, store_->QueryTelemetry(q));
  EXPECT_EQ(samples.size(), 227u);  // 225 from dev-1 (not twice) + 2
  q.device_ids = {"dev-1"};
  q.from = 1100;
  q.to = 1110;
  ASSERT_OK_AND_ASSIGN(samples, store_->QueryTelemetry(q));
  ASSERT_EQ(samples.size(), 5u);
  EXPECT_EQ(samples[0].device_time, 1100);
  EXPECT_EQ(samples[0].value, 25.0);
  EXPECT_EQ(samples[0].hub_time, 10'000);
  EXPECT_EQ(samples[0].labels_json, R"({"model":"yolo"})");
  EXPECT_EQ(samples[4].device_time, 1108);
  q.device_ids = {};
  q.by_hub_time = true;
  q.from = 15'000;
  q.to = 25'000;
  ASSERT_OK_AND_ASSIGN(samples, store_->QueryTelemetry(q));
  ASSERT_EQ(samples.size(), 1u);
  EXPECT_EQ(samples[0].device_id, "dev-2");
  q.from = 25'000;
  q.to = 35'000;
  ASSERT_OK_AND_ASSIGN(samples, store_->QueryTelemetry(q));
  ASSERT_EQ(samples.size(), 1u);
  EXPECT_EQ(samples[0].hub_time, 30'000);
  EXPECT_EQ(samples[0].device_time, 1200);
  q = {};
  q.metric = "fps";
  q.limit = 10;
  EXPECT_EQ(store_->QueryTelemetry(q)->size(), 10u);

  EXPECT_EQ(CodeOf(store_->InsertTelemetryBatch({"dev-9", "b", 1, {}})),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(CodeOf(store_->InsertTelemetryBatch(
                {"dev-1", "b-2", 1, {{"x", 1, std::numeric_limits<double>::quiet_NaN()}}})),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(store_->InsertTelemetryBatch({"dev-1", "", 1, {}})),
            absl::StatusCode::kInvalidArgument);

  ASSERT_OK_AND_ASSIGN(int64_t deleted, store_->DeleteTelemetryBefore(15'000));
  EXPECT_EQ(deleted, 450);
  q = {};
  q.metric = "latency_ms";
  EXPECT_EQ(store_->QueryTelemetry(q)->size(), 2u);  // dev-2's, taken at 20 s and 30 s
  // The batch record expired with its samples: a re-send is stored again.
  EXPECT_EQ(*store_->InsertTelemetryBatch(batch), InsertResult::kInserted);
}

TEST_P(StoreTest, RollupsFoldEachSampleOnceAndLateSamplesLandInTheirOldBucket) {
  AddDevice("dev-1", "site-a");
  AddDevice("dev-2", "site-b");
  constexpr int64_t kMin = 60'000;
  // dev-1 on r1 (yolo/3): 10 samples a minute apart, values 0..9.
  TelemetryBatch one{"dev-1", "b-1", 20 * kMin, {}, "r1", "yolo/3"};
  for (int i = 0; i < 10; ++i) one.samples.push_back({"temperature_c", i * kMin, double(i)});
  one.samples.push_back({"fps", 0, 30, R"({"model":"yolo"})"});
  ASSERT_OK(store_->InsertTelemetryBatch(one));
  // dev-2 on r2 (det/1,yolo/4): two samples in the first 5 minutes.
  ASSERT_OK(
      store_->InsertTelemetryBatch({"dev-2",
                                    "b-1",
                                    20 * kMin,
                                    {{"temperature_c", kMin, 50}, {"temperature_c", 2 * kMin, 70}},
                                    "r2",
                                    "det/1,yolo/4"}));

  const std::vector<int64_t> resolutions = {5 * kMin, 60 * kMin};
  EXPECT_EQ(*store_->RollupWatermark(), 0);
  ASSERT_OK_AND_ASSIGN(int64_t folded, store_->RollUpTelemetry(resolutions, 21 * kMin));
  EXPECT_EQ(folded, 13);
  EXPECT_EQ(*store_->RollupWatermark(), 21 * kMin);
  // Nothing new: folding again changes nothing; a watermark never goes back.
  EXPECT_EQ(*store_->RollUpTelemetry(resolutions, 21 * kMin), 0);
  EXPECT_EQ(*store_->RollUpTelemetry(resolutions, 10 * kMin), 0);
  // A second hub process sees the same watermark and folds nothing twice.
  std::unique_ptr<Store> second = OpenSecond();
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(*second->RollUpTelemetry(resolutions, 21 * kMin), 0);

  SeriesQuery q;
  q.metric = "temperature_c";
  q.resolution_ms = 5 * kMin;
  q.step_ms = 5 * kMin;
  ASSERT_OK_AND_ASSIGN(std::vector<SeriesPoint> points, store_->QueryTelemetrySeries(q));
  ASSERT_EQ(points.size(), 3u);
  EXPECT_EQ(points[0].group, "dev-1");
  EXPECT_EQ(points[0].bucket_start, 0);
  EXPECT_EQ(points[0].count, 5);
  EXPECT_EQ(points[0].sum, 0 + 1 + 2 + 3 + 4);
  EXPECT_EQ(points[0].min, 0);
  EXPECT_EQ(points[0].max, 4);
  EXPECT_EQ(points[1].bucket_start, 5 * kMin);
  EXPECT_EQ(points[1].sum, 5 + 6 + 7 + 8 + 9);
  EXPECT_EQ(points[2].group, "dev-2");
  EXPECT_EQ(points[2].count, 2);
  EXPECT_EQ(points[2].max, 70);

  // The same answer from raw samples.
  SeriesQuery raw = q;
  raw.resolution_ms = 0;
  ASSERT_OK_AND_ASSIGN(std::vector<SeriesPoint> raw_points, store_->QueryTelemetrySeries(raw));
  ASSERT_EQ(raw_points.size(), points.size());
  for (size_t i = 0; i < points.size(); ++i) {
    EXPECT_EQ(raw_points[i].group, points[i].group);
    EXPECT_EQ(raw_points[i].bucket_start, points[i].bucket_start);
    EXPECT_EQ(raw_points[i].count, points[i].count);
    EXPECT_EQ(raw_points[i].sum, points[i].sum);
  }

  // The hour rollup, all devices together, and by release / model version.
  q.resolution_ms = 60 * kMin;
  q.step_ms = 60 * kMin;
  q.group = SeriesGroup::kNone;
  ASSERT_OK_AND_ASSIGN(points, store_->QueryTelemetrySeries(q));
  ASSERT_EQ(points.size(), 1u);
  EXPECT_EQ(points[0].group, "");
  EXPECT_EQ(points[0].count, 12);
  EXPECT_EQ(points[0].min, 0);
  EXPECT_EQ(points[0].max, 70);
  q.group = SeriesGroup::kRelease;
  ASSERT_OK_AND_ASSIGN(points, store_->QueryTelemetrySeries(q));
  ASSERT_EQ(points.size(), 2u);
  EXPECT_EQ(points[0].group, "r1");
  EXPECT_EQ(points[1].group, "r2");
  EXPECT_EQ(points[1].sum, 120);

  // Filters: site, release, one model version item matched whole.
  q.group = SeriesGroup::kDevice;
  q.site = "site-b";
  ASSERT_OK_AND_ASSIGN(points, store_->QueryTelemetrySeries(q));
  ASSERT_EQ(points.size(), 1u);
  EXPECT_EQ(points[0].group, "dev-2");
  q.site = "";
  q.release_id = "r1";
  ASSERT_OK_AND_ASSIGN(points, store_->QueryTelemetrySeries(q));
  ASSERT_EQ(points.size(), 1u);
  EXPECT_EQ(points[0].group, "dev-1");
  q.release_id = "";
  q.model_version = "yolo/4";
  ASSERT_OK_AND_ASSIGN(points, store_->QueryTelemetrySeries(q));
  ASSERT_EQ(points.size(), 1u);
  EXPECT_EQ(points[0].group, "dev-2");
  q.model_version = "yolo/";
  EXPECT_TRUE(store_->QueryTelemetrySeries(q)->empty());
  q.model_version = "";
  q.device_ids = {"dev-1"};
  q.from = 0;
  q.to = kMin;
  q.resolution_ms = 0;
  q.step_ms = kMin;
  ASSERT_OK_AND_ASSIGN(points, store_->QueryTelemetrySeries(q));
  ASSERT_EQ(points.size(), 1u);
  EXPECT_EQ(points[0].count, 1);

  // A late sample from the device's offline backlog: received at 30 min,
  // measured at minute 1 (also on the hub's clock: hub_time, before the
  // watermark), it is folded by its arrival and joins the first bucket.
  TelemetrySample late{"temperature_c", kMin, 100};
  late.hub_time = kMin;
  ASSERT_OK(store_->InsertTelemetryBatch({"dev-1", "b-late", 30 * kMin, {late}, "r1", "yolo/3"}));
  EXPECT_EQ(*store_->RollUpTelemetry(resolutions, 31 * kMin), 1);
  q = {};
  q.metric = "temperature_c";
  q.resolution_ms = 5 * kMin;
  q.step_ms = 5 * kMin;
  q.device_ids = {"dev-1"};
  ASSERT_OK_AND_ASSIGN(points, store_->QueryTelemetrySeries(q));
  ASSERT_EQ(points.size(), 2u);
  EXPECT_EQ(points[0].count, 6);
  EXPECT_EQ(points[0].max, 100);
  EXPECT_EQ(points[0].min, 0);

  // Bad queries.
  q.step_ms = 7 * kMin;
  EXPECT_EQ(CodeOf(store_->QueryTelemetrySeries(q)), absl::StatusCode::kInvalidArgument);
  q.step_ms = 0;
  EXPECT_EQ(CodeOf(store_->QueryTelemetrySeries(q)), absl::StatusCode::kInvalidArgument);
  q.step_ms = 5 * kMin;
  q.metric = "";
  EXPECT_EQ(CodeOf(store_->QueryTelemetrySeries(q)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(store_->RollUpTelemetry({10}, 40 * kMin)), absl::StatusCode::kInvalidArgument);

  // Retention of a resolution; the newest batch per device.
  ASSERT_OK_AND_ASSIGN(int64_t deleted, store_->DeleteRollupsBefore(5 * kMin, 5 * kMin));
  EXPECT_EQ(deleted, 3);  // dev-1 temperature and fps, dev-2 temperature, first bucket
  ASSERT_OK_AND_ASSIGN(auto last, store_->LastTelemetryByDevice());
  EXPECT_EQ(last["dev-1"], 30 * kMin);
  EXPECT_EQ(last["dev-2"], 20 * kMin);
}

TEST_P(StoreTest, PipelineResultsRollUpByPipelineNotByResult) {
  AddDevice("dev-1", "site-a");
  constexpr int64_t kMin = 60'000;
  TelemetryBatch batch{"dev-1", "b-1", 10 * kMin, {}, "r1", "cls/1"};
  for (int i = 0; i < 6; ++i) {
    batch.samples.push_back(
        {"pipeline_result", i * 1000, 1,
         StrCat(R"({"pipeline":")", i % 2 ? "door" : "shelf", R"(","result":{"frame":)", i, "}}")});
  }
  batch.samples.push_back({"pipeline_result", 7000, 1, R"({"result":{"frame":7}})"});
  batch.samples.push_back({"temperature_c", 0, 40, R"({"zone":"a"})"});
  batch.samples.push_back({"temperature_c", 0, 41, R"({"zone":"b"})"});
  ASSERT_OK(store_->InsertTelemetryBatch(batch));
  ASSERT_OK_AND_ASSIGN(int64_t folded, store_->RollUpTelemetry({5 * kMin}, 11 * kMin));
  EXPECT_EQ(folded, 9);
  SeriesQuery q;
  q.metric = "pipeline_result";
  q.resolution_ms = 5 * kMin;
  q.step_ms = 5 * kMin;
  ASSERT_OK_AND_ASSIGN(std::vector<SeriesPoint> points, store_->QueryTelemetrySeries(q));
  // One series per pipeline (door 3, shelf 3, none 1) where the raw
  // samples make one per result.
  ASSERT_EQ(points.size(), 3u);
  int64_t count = 0;
  for (const SeriesPoint& p : points) count += p.count;
  EXPECT_EQ(count, 7);
  q.resolution_ms = 0;
  EXPECT_EQ(store_->QueryTelemetrySeries(q)->size(), 7u);
  // Rows: door, shelf and the result without a pipeline; the other
  // metrics keep their labels (two temperature zones).
  ASSERT_OK_AND_ASSIGN(int64_t rows, store_->DeleteRollupsBefore(5 * kMin, 60 * kMin));
  EXPECT_EQ(rows, 3 + 2);
}

TEST_P(StoreTest, AlertEvaluationsOpenUpdateAndResolveEpisodes) {
  const std::vector<std::string> rules = {"device_offline", "temperature_high"};
  AlertObservation hot{"temperature_high", "dev-1", "warning", "site-a", 90, 85, "hot"};
  AlertObservation gone{"device_offline", "dev-2", "critical", "site-b", 12, 10, "offline"};
  ASSERT_OK_AND_ASSIGN(std::vector<Alert> changed,
                       store_->RecordAlertEvaluation(rules, {hot, gone}, 1000));
  ASSERT_EQ(changed.size(), 2u);
  EXPECT_EQ(changed[0].state, AlertState::kFiring);
  EXPECT_EQ(changed[0].started_at, 1000);

  // Still firing: nothing to notify, the value follows the measurement.
  hot.value = 95;
  ASSERT_OK_AND_ASSIGN(changed, store_->RecordAlertEvaluation(rules, {hot, gone}, 2000));
  EXPECT_TRUE(changed.empty());
  AlertFilter firing;
  firing.state = AlertState::kFiring;
  ASSERT_OK_AND_ASSIGN(std::vector<Alert> alerts, store_->ListAlerts(firing));
  ASSERT_EQ(alerts.size(), 2u);
  for (const Alert& a : alerts) {
    EXPECT_EQ(a.started_at, 1000);
    if (a.name == "temperature_high") {
      EXPECT_EQ(a.value, 95);
      EXPECT_EQ(a.updated_at, 2000);
      EXPECT_EQ(a.site, "site-a");
    }
  }

  // An evaluation of one rule leaves the other's alerts alone; a condition
  // that is gone resolves.
  ASSERT_OK_AND_ASSIGN(changed, store_->RecordAlertEvaluation({"temperature_high"}, {}, 3000));
  ASSERT_EQ(changed.size(), 1u);
  EXPECT_EQ(changed[0].name, "temperature_high");
  EXPECT_EQ(changed[0].state, AlertState::kResolved);
  EXPECT_EQ(changed[0].resolved_at, 3000);
  EXPECT_EQ(store_->ListAlerts(firing)->size(), 1u);

  // It comes back: a new episode, from a second hub process.
  std::unique_ptr<Store> second = OpenSecond();
  ASSERT_NE(second, nullptr);
  ASSERT_OK_AND_ASSIGN(changed, second->RecordAlertEvaluation(rules, {hot, gone}, 4000));
  ASSERT_EQ(changed.size(), 1u);
  EXPECT_EQ(changed[0].started_at, 4000);
  AlertFilter by_name;
  by_name.name = "temperature_high";
  ASSERT_OK_AND_ASSIGN(alerts, store_->ListAlerts(by_name));
  ASSERT_EQ(alerts.size(), 2u);
  EXPECT_EQ(alerts[0].state, AlertState::kFiring);  // newest first
  EXPECT_EQ(alerts[1].state, AlertState::kResolved);
  AlertFilter by_site;
  by_site.site = "site-b";
  EXPECT_EQ(store_->ListAlerts(by_site)->size(), 1u);

  // Concurrent evaluations from two hub processes never open two episodes.
  std::vector<std::thread> threads;
  AlertObservation skew{"clock_skew", "dev-3", "warning", "", 120, 60, "skew"};
  for (Store* s : {store_.get(), second.get()}) {
    threads.emplace_back([s, skew] {
      for (int i = 0; i < 5; ++i) EXPECT_OK(s->RecordAlertEvaluation({"clock_skew"}, {skew}, 5000));
    });
  }
  for (std::thread& t : threads) t.join();
  AlertFilter skews;
  skews.name = "clock_skew";
  EXPECT_EQ(store_->ListAlerts(skews)->size(), 1u);

  // Retention drops resolved episodes only.
  ASSERT_OK_AND_ASSIGN(int64_t deleted, store_->DeleteAlertsResolvedBefore(3500));
  EXPECT_EQ(deleted, 1);
  EXPECT_EQ(store_->ListAlerts({})->size(), 3u);

  // Bad input.
  EXPECT_EQ(CodeOf(store_->RecordAlertEvaluation({"device_offline"}, {hot}, 6000)),
            absl::StatusCode::kInvalidArgument);
  hot.value = std::numeric_limits<double>::infinity();
  EXPECT_EQ(CodeOf(store_->RecordAlertEvaluation(rules, {hot}, 6000)),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(StoreTest, TelemetrySamplesKeepTheDeviceSequence) {
  AddDevice("dev-1");
  TelemetryBatch batch{"dev-1", "q-1", 10'000, {}};
  batch.samples.push_back({"temperature_c", 1000, 71.5, "{}", 41});
  batch.samples.push_back({"temperature_c", 1001, 72.5, "{}", std::nullopt});  // an old agent
  EXPECT_EQ(*store_->InsertTelemetryBatch(batch), InsertResult::kInserted);
  TelemetryQuery q;
  q.metric = "temperature_c";
  ASSERT_OK_AND_ASSIGN(auto samples, store_->QueryTelemetry(q));
  ASSERT_EQ(samples.size(), 2u);
  EXPECT_EQ(samples[0].seq, 41);
  EXPECT_EQ(samples[1].seq, std::nullopt);
}

TEST_P(StoreTest, TextRoundTripsExactlyAndNulIsRefused) {
  std::string unicode =
      "K\xc3\xbc"
      "che \xe2\x80\x94 \xf0\x9f\x93\xb7 'quoted' \"double\" \\ $1 ?";
  Device d = NewDevice("dev-1", unicode, {{"note", unicode}});
  d.facts_json = std::string(100'000, 'x');
  ASSERT_OK(store_->CreateDevice(d, 1));
  ASSERT_OK_AND_ASSIGN(Device read, store_->GetDevice("dev-1"));
  EXPECT_EQ(read.site, unicode);
  EXPECT_EQ(read.labels.at("note"), unicode);
  EXPECT_EQ(read.facts_json.size(), 100'000u);
  Device nul = NewDevice("dev-2", std::string("a\0b", 3));
  EXPECT_EQ(CodeOf(store_->CreateDevice(nul, 1)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(store_->GetDevice("dev-2")), absl::StatusCode::kNotFound);
}

// --- Several hub processes on one database ---------------------------------

TEST_P(StoreTest, TwoHubsConsumeALimitedBootstrapTokenExactlyItsUses) {
  constexpr int kUses = 40;
  BootstrapToken token;
  token.token_hash = Hash("fleet");
  token.uses_left = kUses;
  token.expires_at = 1'000'000;
  ASSERT_OK(store_->CreateBootstrapToken(token, 1));
  std::unique_ptr<Store> second = OpenSecond();
  ASSERT_NE(second, nullptr);

  std::atomic<int> admitted{0}, refused{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    Store* store = t % 2 == 0 ? store_.get() : second.get();
    threads.emplace_back([&, store] {
      for (int i = 0; i < 10; ++i) {
        absl::StatusOr<BootstrapToken> r = store->ConsumeBootstrapToken(Hash("fleet"), 100);
        if (r.ok()) {
          ++admitted;
        } else if (r.status().code() == absl::StatusCode::kFailedPrecondition) {
          ++refused;
        } else {
          ++other;
          ADD_FAILURE() << r.status();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(admitted.load(), kUses);
  EXPECT_EQ(refused.load(), 80 - kUses);
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(store_->ListBootstrapTokens()->at(0).uses_left, 0);
}

TEST_P(StoreTest, TwoHubsEnrollingWithOneTokenCreateExactlyItsUsesDevices) {
  BootstrapToken token;
  token.token_hash = Hash("batch");
  token.uses_left = 6;
  token.expires_at = 1'000'000;
  ASSERT_OK(store_->CreateBootstrapToken(token, 1));
  std::unique_ptr<Store> second = OpenSecond();
  ASSERT_NE(second, nullptr);
  std::atomic<int> enrolled{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    Store* store = t % 2 == 0 ? store_.get() : second.get();
    threads.emplace_back([&, store, t] {
      for (int i = 0; i < 4; ++i) {
        if (store->EnrollDevice(Hash("batch"), NewDevice(StrCat("dev-", t, "-", i)), 5).ok()) {
          ++enrolled;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(enrolled.load(), 6);
  EXPECT_EQ(*store_->CountDevices({}), 6);
}

TEST_P(StoreTest, TwoHubsNeverApplyARolloutStepTwice) {
  AddRelease("r1", 1);
  ASSERT_OK_AND_ASSIGN(Rollout r, store_->CreateRollout({.release_id = "r1"}, {}, 1));
  std::unique_ptr<Store> second = OpenSecond();
  ASSERT_NE(second, nullptr);
  // Each step reads the wave counter and writes it + 1: a lost update
  // (two hubs applying the same step) would leave the count short.
  constexpr int kThreads = 6, kSteps = 15;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    Store* store = t % 2 == 0 ? store_.get() : second.get();
    threads.emplace_back([&, store] {
      for (int i = 0; i < kSteps; ++i) {
        absl::Status s = store->WithRolloutLock(r.id, [](RolloutTransaction& tx) {
          Rollout next = tx.rollout();
          next.current_wave += 1;
          return tx.SaveRollout(next);
        });
        EXPECT_TRUE(s.ok()) << s;
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_OK_AND_ASSIGN(Rollout after, store_->GetRollout(r.id));
  EXPECT_EQ(after.current_wave, kThreads * kSteps);
  EXPECT_EQ(after.version, 1 + kThreads * kSteps);
}

TEST_P(StoreTest, ConcurrentCompareAndSwapsOfARolloutSucceedOneAtATime) {
  AddRelease("r1", 1);
  ASSERT_OK_AND_ASSIGN(Rollout r, store_->CreateRollout({.release_id = "r1"}, {}, 1));
  std::unique_ptr<Store> second = OpenSecond();
  ASSERT_NE(second, nullptr);
  std::atomic<int> won{0}, lost{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    Store* store = t % 2 == 0 ? store_.get() : second.get();
    threads.emplace_back([&, store] {
      for (int i = 0; i < 10; ++i) {
        absl::StatusOr<Rollout> current = store->GetRollout(r.id);
        ASSERT_TRUE(current.ok());
        Rollout next = *current;
        next.current_wave += 1;
        absl::StatusOr<Rollout> saved = store->UpdateRollout(next, current->version);
        if (saved.ok()) {
          ++won;
        } else {
          EXPECT_EQ(saved.status().code(), absl::StatusCode::kAborted) << saved.status();
          ++lost;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_OK_AND_ASSIGN(Rollout after, store_->GetRollout(r.id));
  EXPECT_EQ(won + lost, 60);
  EXPECT_GE(won.load(), 1);
  // Every success built on the one before it: none was overwritten.
  EXPECT_EQ(after.current_wave, won.load());
  EXPECT_EQ(after.version, 1 + won.load());
}

TEST_P(StoreTest, TwoHubsStoreARetriedReportOnceAndConfigWritesSerialise) {
  AddDevice("dev-1");
  std::unique_ptr<Store> second = OpenSecond();
  ASSERT_NE(second, nullptr);
  std::atomic<int> inserted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    Store* store = t % 2 == 0 ? store_.get() : second.get();
    threads.emplace_back([&, store, t] {
      for (int seq = 1; seq <= 5; ++seq) {
        absl::StatusOr<InsertResult> r =
            store->RecordDeviceReport({{"dev-1", seq, "downloading", "r1", "", 0, 1, 1},
                                       DeviceUpdateStatus{"", "", "downloading", ""},
                                       std::nullopt});
        ASSERT_TRUE(r.ok()) << r.status();
        if (*r == InsertResult::kInserted) ++inserted;
        ASSERT_TRUE(store->PutConfigLayer(ConfigScope::kFleet, "", StrCat("t", t), {}, 1).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(inserted.load(), 5);
  EXPECT_EQ(store_->GetDevice("dev-1")->last_event_seq, 5);
  EXPECT_EQ(store_->GetConfigLayer(ConfigScope::kFleet, "")->version, 30);
  EXPECT_EQ(*store_->ConfigChangeSeq(), 30);
}

std::string BackendName(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kSqlite ? "Sqlite" : "Postgres";
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest,
                         ::testing::Values(Backend::kSqlite
#if OUTPOST_WITH_POSTGRES
                                           ,
                                           Backend::kPostgres
#endif
                                           ),
                         BackendName);

// --- Helpers ----------------------------------------------------------------

TEST(SqlTest, RedactUrlHidesPasswords) {
  EXPECT_EQ(sql::RedactUrl("postgres://hub:s3cret@db:5432/outpost"),
            "postgres://hub:***@db:5432/outpost");
  EXPECT_EQ(sql::RedactUrl("postgresql://db/outpost?user=hub&password=s3cret&sslmode=require"),
            "postgresql://db/outpost?user=hub&password=***&sslmode=require");
  EXPECT_EQ(sql::RedactUrl("postgres://hub@db/outpost"), "postgres://hub@db/outpost");
  EXPECT_EQ(sql::RedactUrl("sqlite:///var/lib/hub.db"), "sqlite:///var/lib/hub.db");
}

TEST(StoreNamesTest, NamesRoundTripAndUnknownNamesAreRefused) {
  for (RolloutDeviceState s : {RolloutDeviceState::kPending, RolloutDeviceState::kOffered,
                               RolloutDeviceState::kInstalling, RolloutDeviceState::kCommitted,
                               RolloutDeviceState::kFailed, RolloutDeviceState::kRolledBack}) {
    EXPECT_EQ(*ParseRolloutDeviceState(NameOf(s)), s);
  }
  EXPECT_EQ(NameOf(RolloutDeviceState::kRolledBack), "rolled_back");
  EXPECT_EQ(*ParseRole("operator"), Role::kOperator);
  absl::StatusOr<Role> bad = ParseRole("root");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(MessageOf(bad.status())).find("admin, operator, viewer"),
            std::string::npos);
  EXPECT_EQ(*ParseConfigScope("group"), ConfigScope::kGroup);
  EXPECT_EQ(*ParseDeviceStatus("decommissioned"), DeviceStatus::kDecommissioned);
  EXPECT_EQ(*ParseRolloutState("halted"), RolloutState::kHalted);
}

}  // namespace
}  // namespace outpost::hub
