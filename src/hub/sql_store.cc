#include "hub/sql_store.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

namespace outpost::hub {
namespace {

using sql::Connection;
using sql::Param;
using sql::Result;
using sql::Row;
using sql::TxMode;

// Rows per multi-row INSERT or IN list: far below both databases' limits
// on parameters (SQLite 32766, PostgreSQL 65535), big enough that a batch
// of samples costs a handful of round trips.
constexpr size_t kChunk = 200;
// Bounds an IN list a caller can make us build.
constexpr size_t kMaxQueryDevices = 10000;

// ---------------------------------------------------------------------------
// Validation

absl::Status CheckNotEmpty(std::string_view field, std::string_view value) {
  if (value.empty()) return absl::InvalidArgumentError(StrCat(field, " must not be empty"));
  return absl::OkStatus();
}

absl::Status CheckSha256Hex(std::string_view field, std::string_view value) {
  bool ok = value.size() == 64 && std::all_of(value.begin(), value.end(), [](char c) {
              return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
            });
  if (!ok) {
    return absl::InvalidArgumentError(StrCat(
        field, " must be a SHA-256 in 64 lowercase hex digits, got \"", value.substr(0, 80), "\""));
  }
  return absl::OkStatus();
}

absl::Status CheckLabels(const Labels& labels) {
  for (const auto& [key, value] : labels) RETURN_IF_ERROR(CheckNotEmpty("label key", key));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// SQL helpers

// "$first, $first+1, ..., $first+count-1"
std::string Placeholders(size_t first, size_t count) {
  std::string out;
  for (size_t i = 0; i < count; ++i) StrAppend(&out, i == 0 ? "$" : ", $", first + i);
  return out;
}

// Builds a statement whose parameters are appended as they are used.
struct Statement {
  std::string sql;
  std::vector<Param> params;

  // Binds `param` and returns its placeholder.
  std::string Bind(Param param) {
    params.push_back(param);
    return StrCat("$", params.size());
  }
};

absl::StatusOr<std::string> LabelsToJson(const Labels& labels) {
  try {
    return nlohmann::json(labels).dump();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(StrCat("labels are not valid UTF-8: ", e.what()));
  }
}

Labels LabelsFromJson(const std::string& text) {
  Labels labels;
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return labels;
  for (const auto& [key, value] : json.items()) {
    if (value.is_string()) labels[key] = value.get<std::string>();
  }
  return labels;
}

template <typename Enum>
Enum EnumFrom(const std::string& name, absl::StatusOr<Enum> (*parse)(std::string_view),
              Enum fallback) {
  // The schema's CHECK constraints keep these valid.
  absl::StatusOr<Enum> value = parse(name);
  return value.ok() ? *value : fallback;
}

// ---------------------------------------------------------------------------
// Rows to structs. Each kFooColumns lists the columns FooFrom reads.

constexpr std::string_view kApiTokenColumns = "id, name, role, token_hash, created_at, revoked";

ApiToken ApiTokenFrom(const Row& r) {
  ApiToken t;
  t.id = r.Int(0);
  t.name = r.Text(1);
  t.role = EnumFrom(r.Text(2), &ParseRole, Role::kViewer);
  t.token_hash = r.Text(3);
  t.created_at = r.Int(4);
  t.revoked = r.Bool(5);
  return t;
}

constexpr std::string_view kBootstrapColumns =
    "id, token_hash, uses_left, expires_at, site, labels, created_at";

BootstrapToken BootstrapTokenFrom(const Row& r) {
  BootstrapToken t;
  t.id = r.Int(0);
  t.token_hash = r.Text(1);
  t.uses_left = r.Int(2);
  t.expires_at = r.Int(3);
  t.site = r.Text(4);
  t.labels = LabelsFromJson(r.Text(5));
  t.created_at = r.Int(6);
  return t;
}

constexpr std::string_view kDeviceColumns =
    "id, credential_hash, name, site, facts, status, pinned_release, desired_release, "
    "desired_generation, enrolled_at, last_seen_at, last_clock_offset_ms, current_release, "
    "previous_release, update_state, update_reason, last_event_seq";

Device DeviceFrom(const Row& r) {
  Device d;
  d.id = r.Text(0);
  d.credential_hash = r.Text(1);
  d.name = r.Text(2);
  d.site = r.Text(3);
  d.facts_json = r.Text(4);
  d.status = EnumFrom(r.Text(5), &ParseDeviceStatus, DeviceStatus::kRevoked);
  d.pinned_release = r.OptText(6);
  d.desired_release = r.OptText(7);
  d.desired_generation = r.Int(8);
  d.enrolled_at = r.Int(9);
  d.last_seen_at = r.Int(10);
  d.last_clock_offset_ms = r.Int(11);
  d.update.current_release = r.Text(12);
  d.update.previous_release = r.Text(13);
  d.update.update_state = r.Text(14);
  d.update.update_reason = r.Text(15);
  d.last_event_seq = r.Int(16);
  return d;
}

constexpr std::string_view kReleaseColumns =
    "id, sequence, bundle_sha256, size, manifest, key_id, created_at, yanked";

Release ReleaseFrom(const Row& r) {
  Release rel;
  rel.id = r.Text(0);
  rel.sequence = r.Int(1);
  rel.bundle_sha256 = r.Text(2);
  rel.size = r.Int(3);
  rel.manifest_json = r.Text(4);
  rel.key_id = r.Text(5);
  rel.created_at = r.Int(6);
  rel.yanked = r.Bool(7);
  return rel;
}

constexpr std::string_view kEventColumns =
    "device_id, seq, state, release_id, reason, progress, device_time, hub_time";

DeviceEvent EventFrom(const Row& r) {
  DeviceEvent e;
  e.device_id = r.Text(0);
  e.seq = r.Int(1);
  e.state = r.Text(2);
  e.release = r.Text(3);
  e.reason = r.Text(4);
  e.progress = r.Double(5);
  e.device_time = r.Int(6);
  e.hub_time = r.Int(7);
  return e;
}

constexpr std::string_view kLayerColumns =
    "scope, scope_key, yaml, version, change_seq, updated_at";

ConfigLayer LayerFrom(const Row& r) {
  ConfigLayer l;
  l.scope = EnumFrom(r.Text(0), &ParseConfigScope, ConfigScope::kFleet);
  l.scope_key = r.Text(1);
  l.yaml = r.Text(2);
  l.version = r.Int(3);
  l.change_seq = r.Int(4);
  l.updated_at = r.Int(5);
  return l;
}

constexpr std::string_view kRolloutColumns =
    "id, release_id, selector, waves, state, current_wave, wave_started_at, gates, created_at, "
    "updated_at, version";

Rollout RolloutFrom(const Row& r) {
  Rollout ro;
  ro.id = r.Int(0);
  ro.release_id = r.Text(1);
  ro.selector_json = r.Text(2);
  ro.waves_json = r.Text(3);
  ro.state = EnumFrom(r.Text(4), &ParseRolloutState, RolloutState::kHalted);
  ro.current_wave = r.Int(5);
  ro.wave_started_at = r.Int(6);
  ro.gates_json = r.Text(7);
  ro.created_at = r.Int(8);
  ro.updated_at = r.Int(9);
  ro.version = r.Int(10);
  return ro;
}

constexpr std::string_view kRolloutDeviceColumns = "rollout_id, device_id, wave, state, updated_at";

constexpr std::string_view kAlertColumns =
    "id, name, device_id, severity, state, site, value, threshold, summary, started_at, "
    "resolved_at, updated_at";
Alert AlertFrom(const Row& r) {
  return {.id = r.Int(0),
          .name = r.Text(1),
          .device_id = r.Text(2),
          .severity = r.Text(3),
          .state = EnumFrom(r.Text(4), &ParseAlertState, AlertState::kFiring),
          .site = r.Text(5),
          .value = r.Double(6),
          .threshold = r.Double(7),
          .summary = r.Text(8),
          .started_at = r.Int(9),
          .resolved_at = r.Int(10),
          .updated_at = r.Int(11)};
}

RolloutDevice RolloutDeviceFrom(const Row& r) {
  RolloutDevice d;
  d.rollout_id = r.Int(0);
  d.device_id = r.Text(1);
  d.wave = r.Int(2);
  d.state = EnumFrom(r.Text(3), &ParseRolloutDeviceState, RolloutDeviceState::kFailed);
  d.updated_at = r.Int(4);
  return d;
}

// ---------------------------------------------------------------------------
// Operations on a connection inside a transaction, shared by the Store
// methods and RolloutTransaction.

absl::Status DeviceExists(Connection& c, std::string_view id) {
  ASSIGN_OR_RETURN(Result r, c.Query("SELECT 1 FROM devices WHERE id = $1", {id}));
  if (r.rows.empty()) return absl::NotFoundError(StrCat("no device \"", id, "\""));
  return absl::OkStatus();
}

absl::Status ReleaseExists(Connection& c, std::string_view id) {
  ASSIGN_OR_RETURN(Result r, c.Query("SELECT 1 FROM releases WHERE id = $1", {id}));
  if (r.rows.empty()) return absl::NotFoundError(StrCat("no release \"", id, "\""));
  return absl::OkStatus();
}

absl::Status BumpGeneration(Connection& c, std::string_view device_id) {
  return c
      .Query("UPDATE devices SET desired_generation = desired_generation + 1 WHERE id = $1",
             {device_id})
      .status();
}

// Fills in the labels of `devices`.
absl::Status LoadLabels(Connection& c, std::vector<Device>& devices) {
  std::unordered_map<std::string_view, Device*> by_id;
  for (Device& d : devices) by_id[d.id] = &d;
  for (size_t start = 0; start < devices.size(); start += kChunk) {
    size_t n = std::min(kChunk, devices.size() - start);
    std::vector<Param> params;
    for (size_t i = 0; i < n; ++i) params.emplace_back(devices[start + i].id);
    ASSIGN_OR_RETURN(Result r, c.Query(StrCat("SELECT device_id, label_key, label_value FROM "
                                              "device_labels WHERE device_id IN (",
                                              Placeholders(1, n), ")"),
                                       params));
    for (const Row& row : r.rows) {
      auto it = by_id.find(row.Text(0));
      if (it != by_id.end()) it->second->labels[row.Text(1)] = row.Text(2);
    }
  }
  return absl::OkStatus();
}

absl::Status WriteLabels(Connection& c, std::string_view device_id, const Labels& labels) {
  RETURN_IF_ERROR(c.Query("DELETE FROM device_labels WHERE device_id = $1", {device_id}).status());
  for (const auto& [key, value] : labels) {
    RETURN_IF_ERROR(c.Query("INSERT INTO device_labels (device_id, label_key, label_value) "
                            "VALUES ($1, $2, $3)",
                            {device_id, key, value})
                        .status());
  }
  return absl::OkStatus();
}

absl::StatusOr<Device> GetDeviceIn(Connection& c, std::string_view column, std::string_view value) {
  ASSIGN_OR_RETURN(
      Result r,
      c.Query(StrCat("SELECT ", kDeviceColumns, " FROM devices WHERE ", column, " = $1"), {value}));
  if (r.rows.empty()) {
    return absl::NotFoundError(column == "id" ? StrCat("no device \"", value, "\"")
                                              : std::string("no device with this credential"));
  }
  std::vector<Device> devices{DeviceFrom(r.rows[0])};
  RETURN_IF_ERROR(LoadLabels(c, devices));
  return std::move(devices[0]);
}

absl::Status CheckNewDevice(const Device& device) {
  RETURN_IF_ERROR(CheckNotEmpty("device id", device.id));
  RETURN_IF_ERROR(CheckSha256Hex("device credential hash", device.credential_hash));
  return CheckLabels(device.labels);
}

absl::StatusOr<Device> CreateDeviceIn(Connection& c, const Device& device, TimeMs now) {
  ASSIGN_OR_RETURN(
      Result r,
      c.Query("INSERT INTO devices (id, credential_hash, name, site, facts, status, enrolled_at) "
              "VALUES ($1, $2, $3, $4, $5, 'active', $6) ON CONFLICT DO NOTHING",
              {device.id, device.credential_hash, device.name, device.site,
               device.facts_json.empty() ? std::string_view("{}") : device.facts_json, now}));
  if (r.affected == 0) {
    ASSIGN_OR_RETURN(Result taken, c.Query("SELECT 1 FROM devices WHERE id = $1", {device.id}));
    return absl::AlreadyExistsError(
        taken.rows.empty() ? std::string("a device with this credential already exists")
                           : StrCat("device \"", device.id, "\" already exists"));
  }
  RETURN_IF_ERROR(WriteLabels(c, device.id, device.labels));
  return GetDeviceIn(c, "id", device.id);
}

absl::StatusOr<BootstrapToken> ConsumeBootstrapTokenIn(Connection& c, std::string_view hash,
                                                       TimeMs now) {
  // One statement: the row lock (PostgreSQL) or write lock (SQLite) makes
  // the check and the decrement one step, whatever other hubs do.
  ASSIGN_OR_RETURN(Result r, c.Query(StrCat("UPDATE bootstrap_tokens SET uses_left = uses_left - 1 "
                                            "WHERE token_hash = $1 AND uses_left > 0 AND "
                                            "expires_at > $2 RETURNING ",
                                            kBootstrapColumns),
                                     {hash, now}));
  if (!r.rows.empty()) return BootstrapTokenFrom(r.rows[0]);
  ASSIGN_OR_RETURN(Result why, c.Query("SELECT uses_left, expires_at FROM bootstrap_tokens "
                                       "WHERE token_hash = $1",
                                       {hash}));
  if (why.rows.empty()) return absl::NotFoundError("unknown bootstrap token");
  if (why.rows[0].Int(1) <= now) {
    return absl::FailedPreconditionError(
        StrCat("the bootstrap token expired at ", why.rows[0].Int(1), " (unix ms)"));
  }
  return absl::FailedPreconditionError("the bootstrap token has no uses left");
}

absl::StatusOr<int64_t> SetDesiredReleaseIn(Connection& c, std::string_view device_id,
                                            std::optional<std::string_view> release_id,
                                            TimeMs now) {
  if (release_id) RETURN_IF_ERROR(ReleaseExists(c, *release_id));
  ASSIGN_OR_RETURN(Result r,
                   c.Query("UPDATE devices SET desired_release = $2, "
                           "desired_generation = desired_generation + 1, desired_updated_at = $3 "
                           "WHERE id = $1 AND desired_release IS DISTINCT FROM $2 "
                           "RETURNING desired_generation",
                           {device_id, release_id, now}));
  if (!r.rows.empty()) return r.rows[0].Int(0);
  ASSIGN_OR_RETURN(Result current,
                   c.Query("SELECT desired_generation FROM devices WHERE id = $1", {device_id}));
  if (current.rows.empty()) return absl::NotFoundError(StrCat("no device \"", device_id, "\""));
  return current.rows[0].Int(0);
}

absl::StatusOr<Rollout> GetRolloutIn(Connection& c, int64_t id, bool for_update) {
  // SQLite has no row locks; its callers hold the database write lock.
  bool lock = for_update && c.dialect() == sql::Dialect::kPostgres;
  ASSIGN_OR_RETURN(Result r,
                   c.Query(StrCat("SELECT ", kRolloutColumns, " FROM rollouts WHERE id = $1",
                                  lock ? " FOR UPDATE" : ""),
                           {id}));
  if (r.rows.empty()) return absl::NotFoundError(StrCat("no rollout ", id));
  return RolloutFrom(r.rows[0]);
}

absl::StatusOr<std::vector<RolloutDevice>> ListRolloutDevicesIn(Connection& c, int64_t rollout_id,
                                                                std::optional<int64_t> wave) {
  Statement s;
  s.sql = StrCat("SELECT ", kRolloutDeviceColumns,
                 " FROM rollout_devices WHERE rollout_id = ", s.Bind(rollout_id));
  if (wave) StrAppend(&s.sql, " AND wave = ", s.Bind(*wave));
  s.sql += " ORDER BY wave, device_id";
  ASSIGN_OR_RETURN(Result r, c.Query(s.sql, s.params));
  std::vector<RolloutDevice> out;
  out.reserve(r.rows.size());
  for (const Row& row : r.rows) out.push_back(RolloutDeviceFrom(row));
  return out;
}

absl::Status SetRolloutDeviceStateIn(Connection& c, int64_t rollout_id, std::string_view device_id,
                                     RolloutDeviceState state, TimeMs now) {
  ASSIGN_OR_RETURN(Result r, c.Query("UPDATE rollout_devices SET state = $3, updated_at = $4 "
                                     "WHERE rollout_id = $1 AND device_id = $2",
                                     {rollout_id, device_id, NameOf(state), now}));
  if (r.affected == 0) {
    return absl::NotFoundError(StrCat("device \"", device_id, "\" is not in rollout ", rollout_id));
  }
  return absl::OkStatus();
}

absl::Status CheckRolloutFields(const Rollout& rollout) {
  if (rollout.current_wave < 0) {
    return absl::InvalidArgumentError("rollout current_wave must not be negative");
  }
  return absl::OkStatus();
}

// Writes the mutable fields of a rollout and bumps its version; with
// expected_version, only if the stored version matches.
absl::StatusOr<std::optional<Rollout>> SaveRolloutIn(Connection& c, const Rollout& rollout,
                                                     std::optional<int64_t> expected_version) {
  Statement s;
  s.sql = StrCat("UPDATE rollouts SET state = ", s.Bind(NameOf(rollout.state)),
                 ", current_wave = ", s.Bind(rollout.current_wave),
                 ", wave_started_at = ", s.Bind(rollout.wave_started_at),
                 ", gates = ", s.Bind(rollout.gates_json),
                 ", updated_at = ", s.Bind(rollout.updated_at),
                 ", version = version + 1 WHERE id = ", s.Bind(rollout.id));
  if (expected_version) StrAppend(&s.sql, " AND version = ", s.Bind(*expected_version));
  StrAppend(&s.sql, " RETURNING ", kRolloutColumns);
  ASSIGN_OR_RETURN(Result r, c.Query(s.sql, s.params));
  if (r.rows.empty()) return std::nullopt;
  return RolloutFrom(r.rows[0]);
}

class SqlRolloutTransaction final : public RolloutTransaction {
 public:
  SqlRolloutTransaction(Connection& c, Rollout rollout) : c_(c), rollout_(std::move(rollout)) {}

  const Rollout& rollout() const override { return rollout_; }

  absl::Status SaveRollout(const Rollout& rollout) override {
    if (rollout.id != rollout_.id) {
      return absl::InvalidArgumentError(StrCat("SaveRollout of rollout ", rollout.id,
                                               " inside the lock of rollout ", rollout_.id));
    }
    RETURN_IF_ERROR(CheckRolloutFields(rollout));
    ASSIGN_OR_RETURN(std::optional<Rollout> saved, SaveRolloutIn(c_, rollout, std::nullopt));
    if (!saved) return absl::NotFoundError(StrCat("no rollout ", rollout.id));
    rollout_ = std::move(*saved);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<RolloutDevice>> ListDevices(std::optional<int64_t> wave) override {
    return ListRolloutDevicesIn(c_, rollout_.id, wave);
  }

  absl::Status SetDeviceState(std::string_view device_id, RolloutDeviceState state,
                              TimeMs now) override {
    return SetRolloutDeviceStateIn(c_, rollout_.id, device_id, state, now);
  }

  absl::StatusOr<int64_t> SetDesiredRelease(std::string_view device_id,
                                            std::optional<std::string_view> release_id,
                                            TimeMs now) override {
    return SetDesiredReleaseIn(c_, device_id, release_id, now);
  }

 private:
  Connection& c_;
  Rollout rollout_;
};

absl::Status CheckConfigScope(ConfigScope scope, std::string_view key) {
  if (scope == ConfigScope::kFleet && !key.empty()) {
    return absl::InvalidArgumentError("the fleet configuration layer has no scope key");
  }
  if (scope != ConfigScope::kFleet && key.empty()) {
    return absl::InvalidArgumentError(
        StrCat("a ", NameOf(scope), " configuration layer needs a scope key"));
  }
  return absl::OkStatus();
}

// Takes the configuration change counter's row lock (serialising every
// configuration writer) and returns its next value.
absl::StatusOr<int64_t> NextConfigChangeSeq(Connection& c) {
  ASSIGN_OR_RETURN(Result r, c.Query("UPDATE counters SET value = value + 1 "
                                     "WHERE name = 'config_change_seq' RETURNING value"));
  if (r.rows.empty()) return absl::InternalError("the counters table lacks config_change_seq");
  return r.rows[0].Int(0);
}

absl::Status CheckExpectedVersion(ConfigScope scope, std::string_view key, int64_t current,
                                  std::optional<int64_t> expected) {
  if (expected && *expected != current) {
    return absl::AbortedError(StrCat("the ", NameOf(scope), " configuration layer \"", key,
                                     "\" is at version ", current, ", not ", *expected,
                                     ": it changed meanwhile; reload and retry"));
  }
  return absl::OkStatus();
}

bool LayerLess(const ConfigLayer& a, const ConfigLayer& b) {
  if (a.scope != b.scope) return a.scope < b.scope;
  return a.scope_key < b.scope_key;
}

// ---------------------------------------------------------------------------

class SqlStore final : public Store {
 public:
  explicit SqlStore(std::unique_ptr<sql::Database> db) : db_(std::move(db)) {}

  std::string Describe() const override { return db_->Describe(); }

  absl::Status Ping() override {
    return db_->Transact(TxMode::kRead, [](Connection& c) { return c.Query("SELECT 1").status(); });
  }

  absl::StatusOr<int64_t> SchemaVersion() override {
    return Run<int64_t>(TxMode::kRead, [](Connection& c) -> absl::StatusOr<int64_t> {
      ASSIGN_OR_RETURN(Result r,
                       c.Query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
      return r.rows.at(0).Int(0);
    });
  }

  // --- API tokens ---

  absl::StatusOr<ApiToken> CreateApiToken(std::string_view name, Role role,
                                          std::string_view token_hash, TimeMs now) override {
    RETURN_IF_ERROR(CheckNotEmpty("API token name", name));
    RETURN_IF_ERROR(CheckSha256Hex("API token hash", token_hash));
    return Run<ApiToken>(TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<ApiToken> {
      ASSIGN_OR_RETURN(Result r,
                       c.Query(StrCat("INSERT INTO api_tokens (name, role, token_hash, "
                                      "created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO "
                                      "NOTHING RETURNING ",
                                      kApiTokenColumns),
                               {name, NameOf(role), token_hash, now}));
      if (r.rows.empty()) {
        return absl::AlreadyExistsError("an API token with this hash already exists");
      }
      return ApiTokenFrom(r.rows[0]);
    });
  }

  absl::StatusOr<ApiToken> FindApiTokenByHash(std::string_view token_hash) override {
    return Run<ApiToken>(TxMode::kRead, [&](Connection& c) -> absl::StatusOr<ApiToken> {
      ASSIGN_OR_RETURN(Result r, c.Query(StrCat("SELECT ", kApiTokenColumns,
                                                " FROM api_tokens WHERE token_hash = $1 "
                                                "AND revoked = 0"),
                                         {token_hash}));
      if (r.rows.empty()) return absl::NotFoundError("unknown or revoked API token");
      return ApiTokenFrom(r.rows[0]);
    });
  }

  absl::StatusOr<std::vector<ApiToken>> ListApiTokens() override {
    return Run<std::vector<ApiToken>>(
        TxMode::kRead, [&](Connection& c) -> absl::StatusOr<std::vector<ApiToken>> {
          ASSIGN_OR_RETURN(Result r, c.Query(StrCat("SELECT ", kApiTokenColumns,
                                                    " FROM api_tokens ORDER BY id")));
          std::vector<ApiToken> out;
          for (const Row& row : r.rows) out.push_back(ApiTokenFrom(row));
          return out;
        });
  }

  absl::Status RevokeApiToken(int64_t id) override {
    return db_->Transact(TxMode::kWrite, [&](Connection& c) -> absl::Status {
      ASSIGN_OR_RETURN(Result r, c.Query("UPDATE api_tokens SET revoked = 1 WHERE id = $1", {id}));
      if (r.affected == 0) return absl::NotFoundError(StrCat("no API token ", id));
      return absl::OkStatus();
    });
  }

  // --- Bootstrap tokens ---

  absl::StatusOr<BootstrapToken> CreateBootstrapToken(const BootstrapToken& token,
                                                      TimeMs now) override {
    RETURN_IF_ERROR(CheckSha256Hex("bootstrap token hash", token.token_hash));
    if (token.uses_left < 1) {
      return absl::InvalidArgumentError("a bootstrap token needs at least one use");
    }
    RETURN_IF_ERROR(CheckLabels(token.labels));
    ASSIGN_OR_RETURN(std::string labels, LabelsToJson(token.labels));
    return Run<BootstrapToken>(
        TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<BootstrapToken> {
          ASSIGN_OR_RETURN(
              Result r,
              c.Query(
                  StrCat("INSERT INTO bootstrap_tokens (token_hash, uses_left, expires_at, site, "
                         "labels, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO "
                         "NOTHING RETURNING ",
                         kBootstrapColumns),
                  {token.token_hash, token.uses_left, token.expires_at, token.site, labels, now}));
          if (r.rows.empty()) {
            return absl::AlreadyExistsError("a bootstrap token with this hash already exists");
          }
          return BootstrapTokenFrom(r.rows[0]);
        });
  }

  absl::StatusOr<BootstrapToken> ConsumeBootstrapToken(std::string_view token_hash,
                                                       TimeMs now) override {
    return Run<BootstrapToken>(
        TxMode::kWrite, [&](Connection& c) { return ConsumeBootstrapTokenIn(c, token_hash, now); });
  }

  absl::StatusOr<std::vector<BootstrapToken>> ListBootstrapTokens() override {
    return Run<std::vector<BootstrapToken>>(
        TxMode::kRead, [&](Connection& c) -> absl::StatusOr<std::vector<BootstrapToken>> {
          ASSIGN_OR_RETURN(Result r, c.Query(StrCat("SELECT ", kBootstrapColumns,
                                                    " FROM bootstrap_tokens ORDER BY id")));
          std::vector<BootstrapToken> out;
          for (const Row& row : r.rows) out.push_back(BootstrapTokenFrom(row));
          return out;
        });
  }

  absl::Status RevokeBootstrapToken(int64_t id) override {
    return db_->Transact(TxMode::kWrite, [&](Connection& c) -> absl::Status {
      ASSIGN_OR_RETURN(Result r,
                       c.Query("UPDATE bootstrap_tokens SET uses_left = 0 WHERE id = $1", {id}));
      if (r.affected == 0) return absl::NotFoundError(StrCat("no bootstrap token ", id));
      return absl::OkStatus();
    });
  }

  // --- Devices ---

  absl::StatusOr<Device> EnrollDevice(std::string_view bootstrap_token_hash, const Device& device,
                                      TimeMs now) override {
    RETURN_IF_ERROR(CheckNewDevice(device));
    return Run<Device>(TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<Device> {
      ASSIGN_OR_RETURN(BootstrapToken token, ConsumeBootstrapTokenIn(c, bootstrap_token_hash, now));
      Device enrolled = device;
      if (!token.site.empty()) enrolled.site = token.site;
      for (const auto& [key, value] : token.labels) enrolled.labels[key] = value;
      return CreateDeviceIn(c, enrolled, now);
    });
  }

  absl::StatusOr<Device> CreateDevice(const Device& device, TimeMs now) override {
    RETURN_IF_ERROR(CheckNewDevice(device));
    return Run<Device>(TxMode::kWrite,
                       [&](Connection& c) { return CreateDeviceIn(c, device, now); });
  }

  absl::StatusOr<Device> GetDevice(std::string_view id) override {
    return Run<Device>(TxMode::kRead, [&](Connection& c) { return GetDeviceIn(c, "id", id); });
  }

  absl::StatusOr<Device> GetDeviceByCredential(std::string_view credential_hash) override {
    return Run<Device>(TxMode::kRead, [&](Connection& c) {
      return GetDeviceIn(c, "credential_hash", credential_hash);
    });
  }

  absl::Status RecordDeviceContact(std::string_view id, const DeviceContact& contact) override {
    return db_->Transact(TxMode::kWrite, [&](Connection& c) -> absl::Status {
      Statement s;
      std::string seen = s.Bind(contact.seen_at);
      s.sql = StrCat("UPDATE devices SET last_seen_at = ", seen,
                     ", last_clock_offset_ms = ", s.Bind(contact.clock_offset_ms));
      if (contact.facts_json) StrAppend(&s.sql, ", facts = ", s.Bind(*contact.facts_json));
      StrAppend(&s.sql, " WHERE id = ", s.Bind(id), " AND last_seen_at <= ", seen);
      ASSIGN_OR_RETURN(Result r, c.Query(s.sql, s.params));
      if (r.affected == 0) return DeviceExists(c, id);  // NotFound, or a late contact
      return absl::OkStatus();
    });
  }

  absl::StatusOr<Device> UpdateDeviceAttributes(std::string_view id,
                                                const DeviceAttributes& attributes) override {
    if (attributes.labels) RETURN_IF_ERROR(CheckLabels(*attributes.labels));
    return Run<Device>(TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<Device> {
      ASSIGN_OR_RETURN(Device current, GetDeviceIn(c, "id", id));
      if (attributes.name && *attributes.name != current.name) {
        RETURN_IF_ERROR(
            c.Query("UPDATE devices SET name = $2 WHERE id = $1", {id, *attributes.name}).status());
      }
      bool shapes_desired_state = false;
      if (attributes.site && *attributes.site != current.site) {
        RETURN_IF_ERROR(
            c.Query("UPDATE devices SET site = $2 WHERE id = $1", {id, *attributes.site}).status());
        shapes_desired_state = true;
      }
      if (attributes.labels && *attributes.labels != current.labels) {
        RETURN_IF_ERROR(WriteLabels(c, id, *attributes.labels));
        shapes_desired_state = true;
      }
      if (shapes_desired_state) RETURN_IF_ERROR(BumpGeneration(c, id));
      return GetDeviceIn(c, "id", id);
    });
  }

  absl::Status PinDevice(std::string_view id, std::optional<std::string_view> release_id) override {
    return db_->Transact(TxMode::kWrite, [&](Connection& c) -> absl::Status {
      RETURN_IF_ERROR(DeviceExists(c, id));
      if (release_id) RETURN_IF_ERROR(ReleaseExists(c, *release_id));
      return c
          .Query(
              "UPDATE devices SET pinned_release = $2, "
              "desired_generation = desired_generation + 1 "
              "WHERE id = $1 AND pinned_release IS DISTINCT FROM $2",
              {id, release_id})
          .status();
    });
  }

  absl::Status SetDeviceStatus(std::string_view id, DeviceStatus status) override {
    return db_->Transact(TxMode::kWrite, [&](Connection& c) -> absl::Status {
      ASSIGN_OR_RETURN(Result r, c.Query("SELECT status FROM devices WHERE id = $1", {id}));
      if (r.rows.empty()) return absl::NotFoundError(StrCat("no device \"", id, "\""));
      DeviceStatus current = EnumFrom(r.rows[0].Text(0), &ParseDeviceStatus, status);
      if (current == status) return absl::OkStatus();
      bool allowed = (current == DeviceStatus::kActive && status != DeviceStatus::kActive) ||
                     (current == DeviceStatus::kRevoked && status == DeviceStatus::kDecommissioned);
      if (!allowed) {
        return absl::FailedPreconditionError(StrCat("device \"", id, "\" is ", NameOf(current),
                                                    " and cannot become ", NameOf(status),
                                                    "; enroll it again instead"));
      }
      RETURN_IF_ERROR(c.Query("UPDATE devices SET status = $2, "
                              "desired_generation = desired_generation + 1 WHERE id = $1",
                              {id, NameOf(status)})
                          .status());
      return absl::OkStatus();
    });
  }

  // WHERE clause of a DeviceFilter (without paging), parameters in `s`.
  static std::string DeviceWhere(const DeviceFilter& filter, Statement& s) {
    std::string where = " WHERE 1 = 1";
    if (filter.site) StrAppend(&where, " AND site = ", s.Bind(*filter.site));
    if (filter.status) StrAppend(&where, " AND status = ", s.Bind(NameOf(*filter.status)));
    if (filter.current_release) {
      StrAppend(&where, " AND current_release = ", s.Bind(*filter.current_release));
    }
    for (const auto& [key, value] : filter.labels) {
      StrAppend(&where,
                " AND EXISTS (SELECT 1 FROM device_labels l WHERE l.device_id = devices.id "
                "AND l.label_key = ",
                s.Bind(key), " AND l.label_value = ", s.Bind(value), ")");
    }
    return where;
  }

  absl::StatusOr<std::vector<Device>> ListDevices(const DeviceFilter& filter) override {
    return Run<std::vector<Device>>(
        TxMode::kRead, [&](Connection& c) -> absl::StatusOr<std::vector<Device>> {
          Statement s;
          s.sql = StrCat("SELECT ", kDeviceColumns, " FROM devices", DeviceWhere(filter, s));
          if (!filter.after_id.empty()) StrAppend(&s.sql, " AND id > ", s.Bind(filter.after_id));
          s.sql += " ORDER BY id";
          if (filter.limit > 0) StrAppend(&s.sql, " LIMIT ", s.Bind(filter.limit));
          ASSIGN_OR_RETURN(Result r, c.Query(s.sql, s.params));
          std::vector<Device> out;
          out.reserve(r.rows.size());
          for (const Row& row : r.rows) out.push_back(DeviceFrom(row));
          RETURN_IF_ERROR(LoadLabels(c, out));
          return out;
        });
  }

  absl::StatusOr<int64_t> CountDevices(const DeviceFilter& filter) override {
    return Run<int64_t>(TxMode::kRead, [&](Connection& c) -> absl::StatusOr<int64_t> {
      Statement s;
      s.sql = StrCat("SELECT COUNT(*) FROM devices", DeviceWhere(filter, s));
      ASSIGN_OR_RETURN(Result r, c.Query(s.sql, s.params));
      return r.rows.at(0).Int(0);
    });
  }

  // --- Desired state ---

  absl::StatusOr<int64_t> SetDesiredRelease(std::string_view device_id,
                                            std::optional<std::string_view> release_id,
                                            TimeMs now) override {
    return Run<int64_t>(TxMode::kWrite, [&](Connection& c) {
      return SetDesiredReleaseIn(c, device_id, release_id, now);
    });
  }

  // --- Releases ---

  absl::Status InsertRelease(const Release& release) override {
    RETURN_IF_ERROR(CheckNotEmpty("release name", release.id));
    RETURN_IF_ERROR(CheckSha256Hex("release bundle sha256", release.bundle_sha256));
    if (release.size < 0) return absl::InvalidArgumentError("release size must not be negative");
    return db_->Transact(TxMode::kWrite, [&](Connection& c) -> absl::Status {
      ASSIGN_OR_RETURN(
          Result r,
          c.Query("INSERT INTO releases (id, sequence, bundle_sha256, size, manifest, "
                  "key_id, created_at, yanked) VALUES ($1, $2, $3, $4, $5, $6, $7, "
                  "$8) ON CONFLICT DO NOTHING",
                  {release.id, release.sequence, release.bundle_sha256, release.size,
                   release.manifest_json, release.key_id, release.created_at, release.yanked}));
      if (r.affected > 0) return absl::OkStatus();
      ASSIGN_OR_RETURN(Result taken,
                       c.Query("SELECT id FROM releases WHERE id = $1", {release.id}));
      if (!taken.rows.empty()) {
        return absl::AlreadyExistsError(StrCat("release \"", release.id, "\" already exists"));
      }
      ASSIGN_OR_RETURN(Result same, c.Query("SELECT id FROM releases WHERE bundle_sha256 = $1",
                                            {release.bundle_sha256}));
      return absl::AlreadyExistsError(
          StrCat("the bundle ", release.bundle_sha256, " is already release \"",
                 same.rows.empty() ? std::string("?") : same.rows[0].Text(0), "\""));
    });
  }

  absl::StatusOr<Release> GetRelease(std::string_view id) override {
    return Run<Release>(TxMode::kRead, [&](Connection& c) -> absl::StatusOr<Release> {
      ASSIGN_OR_RETURN(
          Result r,
          c.Query(StrCat("SELECT ", kReleaseColumns, " FROM releases WHERE id = $1"), {id}));
      if (r.rows.empty()) return absl::NotFoundError(StrCat("no release \"", id, "\""));
      return ReleaseFrom(r.rows[0]);
    });
  }

  absl::StatusOr<Release> GetReleaseByBundle(std::string_view bundle_sha256) override {
    return Run<Release>(TxMode::kRead, [&](Connection& c) -> absl::StatusOr<Release> {
      ASSIGN_OR_RETURN(Result r, c.Query(StrCat("SELECT ", kReleaseColumns,
                                                " FROM releases WHERE bundle_sha256 = $1"),
                                         {bundle_sha256}));
      if (r.rows.empty()) {
        return absl::NotFoundError(StrCat("no release has the bundle ", bundle_sha256));
      }
      return ReleaseFrom(r.rows[0]);
    });
  }

  absl::StatusOr<std::vector<Release>> ListReleases(bool include_yanked, int64_t limit) override {
    return Run<std::vector<Release>>(TxMode::kRead,
                                     [&](Connection& c) -> absl::StatusOr<std::vector<Release>> {
                                       Statement s;
                                       s.sql = StrCat("SELECT ", kReleaseColumns, " FROM releases");
                                       if (!include_yanked) s.sql += " WHERE yanked = 0";
                                       s.sql += " ORDER BY sequence DESC, id DESC";
                                       if (limit > 0) StrAppend(&s.sql, " LIMIT ", s.Bind(limit));
                                       ASSIGN_OR_RETURN(Result r, c.Query(s.sql, s.params));
                                       std::vector<Release> out;
                                       for (const Row& row : r.rows)
                                         out.push_back(ReleaseFrom(row));
                                       return out;
                                     });
  }

  absl::Status YankRelease(std::string_view id) override {
    return db_->Transact(TxMode::kWrite, [&](Connection& c) -> absl::Status {
      ASSIGN_OR_RETURN(Result r, c.Query("UPDATE releases SET yanked = 1 WHERE id = $1", {id}));
      if (r.affected == 0) return absl::NotFoundError(StrCat("no release \"", id, "\""));
      return absl::OkStatus();
    });
  }

  // --- Device reports ---

  absl::StatusOr<InsertResult> RecordDeviceReport(const DeviceReport& report) override {
    const DeviceEvent& e = report.event;
    RETURN_IF_ERROR(CheckNotEmpty("device id", e.device_id));
    if (e.seq < 1) return absl::InvalidArgumentError("a device report's seq must be >= 1");
    if (!std::isfinite(e.progress)) {
      return absl::InvalidArgumentError("a device report's progress must be finite");
    }
    return Run<InsertResult>(TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<InsertResult> {
      RETURN_IF_ERROR(DeviceExists(c, e.device_id));
      ASSIGN_OR_RETURN(Result inserted, c.Query(StrCat("INSERT INTO device_events (", kEventColumns,
                                                       ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                                                       "ON CONFLICT (device_id, seq) DO NOTHING"),
                                                {e.device_id, e.seq, e.state, e.release, e.reason,
                                                 e.progress, e.device_time, e.hub_time}));
      if (inserted.affected == 0) return InsertResult::kDuplicate;
      // Apply only the newest report: an old one arriving late (a retry
      // over a flaky link) must not roll the device's state back.
      Statement s;
      std::string seq = s.Bind(e.seq);
      s.sql = StrCat("UPDATE devices SET last_event_seq = ", seq);
      if (report.status) {
        StrAppend(&s.sql, ", current_release = ", s.Bind(report.status->current_release),
                  ", previous_release = ", s.Bind(report.status->previous_release),
                  ", update_state = ", s.Bind(report.status->update_state),
                  ", update_reason = ", s.Bind(report.status->update_reason));
      }
      StrAppend(&s.sql, " WHERE id = ", s.Bind(e.device_id), " AND last_event_seq < ", seq);
      ASSIGN_OR_RETURN(Result newest, c.Query(s.sql, s.params));
      if (newest.affected > 0 && report.rollout) {
        RETURN_IF_ERROR(SetRolloutDeviceStateIn(c, report.rollout->rollout_id, e.device_id,
                                                report.rollout->state, e.hub_time));
      }
      return InsertResult::kInserted;
    });
  }

  absl::StatusOr<std::vector<DeviceEvent>> ListDeviceEvents(std::string_view device_id,
                                                            int64_t before_seq,
                                                            int64_t limit) override {
    return Run<std::vector<DeviceEvent>>(
        TxMode::kRead, [&](Connection& c) -> absl::StatusOr<std::vector<DeviceEvent>> {
          Statement s;
          s.sql = StrCat("SELECT ", kEventColumns,
                         " FROM device_events WHERE device_id = ", s.Bind(device_id));
          if (before_seq > 0) StrAppend(&s.sql, " AND seq < ", s.Bind(before_seq));
          s.sql += " ORDER BY seq DESC";
          if (limit > 0) StrAppend(&s.sql, " LIMIT ", s.Bind(limit));
          ASSIGN_OR_RETURN(Result r, c.Query(s.sql, s.params));
          std::vector<DeviceEvent> out;
          for (const Row& row : r.rows) out.push_back(EventFrom(row));
          return out;
        });
  }

  // --- Configuration layers ---

  absl::StatusOr<ConfigLayer> PutConfigLayer(ConfigScope scope, std::string_view scope_key,
                                             std::string_view yaml,
                                             std::optional<int64_t> expected_version,
                                             TimeMs now) override {
    RETURN_IF_ERROR(CheckConfigScope(scope, scope_key));
    return Run<ConfigLayer>(TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<ConfigLayer> {
      ASSIGN_OR_RETURN(int64_t seq, NextConfigChangeSeq(c));
      ASSIGN_OR_RETURN(Result existing, c.Query("SELECT version FROM config_layers "
                                                "WHERE scope = $1 AND scope_key = $2",
                                                {NameOf(scope), scope_key}));
      int64_t version = existing.rows.empty() ? 0 : existing.rows[0].Int(0);
      RETURN_IF_ERROR(CheckExpectedVersion(scope, scope_key, version, expected_version));
      ASSIGN_OR_RETURN(
          Result r,
          c.Query(existing.rows.empty()
                      ? StrCat("INSERT INTO config_layers (scope, scope_key, yaml, version, "
                               "change_seq, updated_at) VALUES ($1, $2, $3, 1, $4, $5) RETURNING ",
                               kLayerColumns)
                      : StrCat("UPDATE config_layers SET yaml = $3, version = version + 1, "
                               "change_seq = $4, updated_at = $5 WHERE scope = $1 AND "
                               "scope_key = $2 RETURNING ",
                               kLayerColumns),
                  {NameOf(scope), scope_key, yaml, seq, now}));
      return LayerFrom(r.rows.at(0));
    });
  }

  absl::StatusOr<ConfigLayer> GetConfigLayer(ConfigScope scope,
                                             std::string_view scope_key) override {
    return Run<ConfigLayer>(TxMode::kRead, [&](Connection& c) -> absl::StatusOr<ConfigLayer> {
      ASSIGN_OR_RETURN(Result r, c.Query(StrCat("SELECT ", kLayerColumns,
                                                " FROM config_layers WHERE scope = $1 AND "
                                                "scope_key = $2"),
                                         {NameOf(scope), scope_key}));
      if (r.rows.empty()) {
        return absl::NotFoundError(
            StrCat("no ", NameOf(scope), " configuration layer \"", scope_key, "\""));
      }
      return LayerFrom(r.rows[0]);
    });
  }

  absl::Status DeleteConfigLayer(ConfigScope scope, std::string_view scope_key,
                                 std::optional<int64_t> expected_version) override {
    RETURN_IF_ERROR(CheckConfigScope(scope, scope_key));
    return db_->Transact(TxMode::kWrite, [&](Connection& c) -> absl::Status {
      RETURN_IF_ERROR(NextConfigChangeSeq(c).status());
      ASSIGN_OR_RETURN(Result existing, c.Query("SELECT version FROM config_layers "
                                                "WHERE scope = $1 AND scope_key = $2",
                                                {NameOf(scope), scope_key}));
      if (existing.rows.empty()) {
        return absl::NotFoundError(
            StrCat("no ", NameOf(scope), " configuration layer \"", scope_key, "\""));
      }
      RETURN_IF_ERROR(
          CheckExpectedVersion(scope, scope_key, existing.rows[0].Int(0), expected_version));
      return c
          .Query("DELETE FROM config_layers WHERE scope = $1 AND scope_key = $2",
                 {NameOf(scope), scope_key})
          .status();
    });
  }

  absl::StatusOr<std::vector<ConfigLayer>> ListConfigLayers() override {
    return Run<std::vector<ConfigLayer>>(
        TxMode::kRead, [&](Connection& c) -> absl::StatusOr<std::vector<ConfigLayer>> {
          ASSIGN_OR_RETURN(Result r,
                           c.Query(StrCat("SELECT ", kLayerColumns, " FROM config_layers")));
          std::vector<ConfigLayer> out;
          for (const Row& row : r.rows) out.push_back(LayerFrom(row));
          std::sort(out.begin(), out.end(), LayerLess);
          return out;
        });
  }

  absl::StatusOr<std::vector<ConfigLayer>> ListConfigLayersFor(
      const ConfigTarget& target) override {
    return Run<std::vector<ConfigLayer>>(
        TxMode::kRead, [&](Connection& c) -> absl::StatusOr<std::vector<ConfigLayer>> {
          Statement s;
          s.sql = StrCat("SELECT ", kLayerColumns,
                         " FROM config_layers WHERE (scope = 'fleet' AND scope_key = '')");
          if (!target.site.empty()) {
            StrAppend(&s.sql, " OR (scope = 'site' AND scope_key = ", s.Bind(target.site), ")");
          }
          if (!target.device_id.empty()) {
            StrAppend(&s.sql, " OR (scope = 'device' AND scope_key = ", s.Bind(target.device_id),
                      ")");
          }
          if (!target.groups.empty()) {
            if (target.groups.size() > kMaxQueryDevices) {
              return absl::InvalidArgumentError("too many configuration groups");
            }
            StrAppend(&s.sql, " OR (scope = 'group' AND scope_key IN (",
                      Placeholders(s.params.size() + 1, target.groups.size()), "))");
            for (const std::string& group : target.groups) s.params.emplace_back(group);
          }
          ASSIGN_OR_RETURN(Result r, c.Query(s.sql, s.params));
          std::vector<ConfigLayer> found;
          for (const Row& row : r.rows) found.push_back(LayerFrom(row));
          // Merge order: fleet, site, groups as the caller listed them, device.
          auto rank = [&](const ConfigLayer& l) -> size_t {
            switch (l.scope) {
              case ConfigScope::kFleet:
                return 0;
              case ConfigScope::kSite:
                return 1;
              case ConfigScope::kGroup:
                return 2 + static_cast<size_t>(
                               std::find(target.groups.begin(), target.groups.end(), l.scope_key) -
                               target.groups.begin());
              case ConfigScope::kDevice:
                break;
            }
            return 3 + target.groups.size();
          };
          std::stable_sort(
              found.begin(), found.end(),
              [&](const ConfigLayer& a, const ConfigLayer& b) { return rank(a) < rank(b); });
          return found;
        });
  }

  absl::StatusOr<int64_t> ConfigChangeSeq() override {
    return Run<int64_t>(TxMode::kRead, [&](Connection& c) -> absl::StatusOr<int64_t> {
      ASSIGN_OR_RETURN(Result r,
                       c.Query("SELECT value FROM counters WHERE name = 'config_change_seq'"));
      if (r.rows.empty()) return absl::InternalError("the counters table lacks config_change_seq");
      return r.rows[0].Int(0);
    });
  }

  // --- Rollouts ---

  absl::StatusOr<Rollout> CreateRollout(const Rollout& rollout,
                                        const std::vector<RolloutDevice>& devices,
                                        TimeMs now) override {
    RETURN_IF_ERROR(CheckNotEmpty("rollout release", rollout.release_id));
    RETURN_IF_ERROR(CheckRolloutFields(rollout));
    std::set<std::string_view> seen;
    for (const RolloutDevice& d : devices) {
      RETURN_IF_ERROR(CheckNotEmpty("rollout device id", d.device_id));
      if (d.wave < 0) return absl::InvalidArgumentError("a rollout wave must not be negative");
      if (!seen.insert(d.device_id).second) {
        return absl::AlreadyExistsError(
            StrCat("device \"", d.device_id, "\" is listed twice in the rollout"));
      }
    }
    return Run<Rollout>(TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<Rollout> {
      ASSIGN_OR_RETURN(Result release,
                       c.Query("SELECT yanked FROM releases WHERE id = $1", {rollout.release_id}));
      if (release.rows.empty()) {
        return absl::NotFoundError(StrCat("no release \"", rollout.release_id, "\""));
      }
      if (release.rows[0].Bool(0)) {
        return absl::FailedPreconditionError(
            StrCat("release \"", rollout.release_id, "\" is yanked"));
      }
      ASSIGN_OR_RETURN(
          Result r,
          c.Query(
              StrCat("INSERT INTO rollouts (release_id, selector, waves, state, current_wave, "
                     "wave_started_at, gates, created_at, updated_at, version) VALUES ($1, "
                     "$2, $3, $4, $5, $6, $7, $8, $8, 1) RETURNING ",
                     kRolloutColumns),
              {rollout.release_id, rollout.selector_json, rollout.waves_json, NameOf(rollout.state),
               rollout.current_wave, rollout.wave_started_at, rollout.gates_json, now}));
      Rollout created = RolloutFrom(r.rows.at(0));
      for (size_t start = 0; start < devices.size(); start += kChunk) {
        size_t n = std::min(kChunk, devices.size() - start);
        // Name a missing device instead of a bare foreign key error.
        std::vector<Param> ids;
        for (size_t i = 0; i < n; ++i) ids.emplace_back(devices[start + i].device_id);
        ASSIGN_OR_RETURN(
            Result found,
            c.Query(StrCat("SELECT id FROM devices WHERE id IN (", Placeholders(1, n), ")"), ids));
        if (found.rows.size() != n) {
          std::set<std::string> present;
          for (const Row& row : found.rows) present.insert(row.Text(0));
          for (size_t i = 0; i < n; ++i) {
            if (!present.count(devices[start + i].device_id)) {
              return absl::FailedPreconditionError(
                  StrCat("rollout device \"", devices[start + i].device_id, "\" does not exist"));
            }
          }
        }
        Statement s;
        s.sql =
            "INSERT INTO rollout_devices (rollout_id, device_id, wave, state, updated_at) VALUES ";
        for (size_t i = 0; i < n; ++i) {
          const RolloutDevice& d = devices[start + i];
          StrAppend(&s.sql, i == 0 ? "(" : ", (", s.Bind(created.id), ", ", s.Bind(d.device_id),
                    ", ", s.Bind(d.wave), ", ", s.Bind(NameOf(d.state)), ", ", s.Bind(now), ")");
        }
        RETURN_IF_ERROR(c.Query(s.sql, s.params).status());
      }
      return created;
    });
  }

  absl::StatusOr<Rollout> GetRollout(int64_t id) override {
    return Run<Rollout>(TxMode::kRead,
                        [&](Connection& c) { return GetRolloutIn(c, id, /*for_update=*/false); });
  }

  absl::StatusOr<std::vector<Rollout>> ListRollouts(
      const std::vector<RolloutState>& states) override {
    return Run<std::vector<Rollout>>(
        TxMode::kRead, [&](Connection& c) -> absl::StatusOr<std::vector<Rollout>> {
          Statement s;
          s.sql = StrCat("SELECT ", kRolloutColumns, " FROM rollouts");
          for (size_t i = 0; i < states.size(); ++i) {
            StrAppend(&s.sql, i == 0 ? " WHERE state IN (" : ", ", s.Bind(NameOf(states[i])));
          }
          if (!states.empty()) s.sql += ")";
          s.sql += " ORDER BY id DESC";
          ASSIGN_OR_RETURN(Result r, c.Query(s.sql, s.params));
          std::vector<Rollout> out;
          for (const Row& row : r.rows) out.push_back(RolloutFrom(row));
          return out;
        });
  }

  absl::StatusOr<Rollout> UpdateRollout(const Rollout& rollout, int64_t expected_version) override {
    RETURN_IF_ERROR(CheckRolloutFields(rollout));
    return Run<Rollout>(TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<Rollout> {
      // Conditional on the version in the same statement: the row lock
      // makes a concurrent second writer re-check it and miss.
      ASSIGN_OR_RETURN(std::optional<Rollout> saved, SaveRolloutIn(c, rollout, expected_version));
      if (saved) return std::move(*saved);
      ASSIGN_OR_RETURN(Rollout current, GetRolloutIn(c, rollout.id, /*for_update=*/false));
      return absl::AbortedError(StrCat("rollout ", rollout.id, " is at version ", current.version,
                                       ", not ", expected_version,
                                       ": it changed meanwhile; reload and retry"));
    });
  }

  absl::Status WithRolloutLock(int64_t id,
                               absl::FunctionRef<absl::Status(RolloutTransaction&)> fn) override {
    return db_->Transact(TxMode::kWrite, [&](Connection& c) -> absl::Status {
      ASSIGN_OR_RETURN(Rollout rollout, GetRolloutIn(c, id, /*for_update=*/true));
      SqlRolloutTransaction tx(c, std::move(rollout));
      return fn(tx);
    });
  }

  absl::StatusOr<std::vector<RolloutDevice>> ListRolloutDevices(
      int64_t rollout_id, std::optional<int64_t> wave) override {
    return Run<std::vector<RolloutDevice>>(
        TxMode::kRead, [&](Connection& c) { return ListRolloutDevicesIn(c, rollout_id, wave); });
  }

  absl::StatusOr<std::vector<RolloutDevice>> ListDeviceRollouts(
      std::string_view device_id) override {
    return Run<std::vector<RolloutDevice>>(
        TxMode::kRead, [&](Connection& c) -> absl::StatusOr<std::vector<RolloutDevice>> {
          ASSIGN_OR_RETURN(Result r, c.Query(StrCat("SELECT ", kRolloutDeviceColumns,
                                                    " FROM rollout_devices WHERE device_id = $1 "
                                                    "ORDER BY rollout_id DESC"),
                                             {device_id}));
          std::vector<RolloutDevice> out;
          for (const Row& row : r.rows) out.push_back(RolloutDeviceFrom(row));
          return out;
        });
  }

  // --- Telemetry ---

  absl::StatusOr<InsertResult> InsertTelemetryBatch(const TelemetryBatch& batch) override {
    RETURN_IF_ERROR(CheckNotEmpty("device id", batch.device_id));
    RETURN_IF_ERROR(CheckNotEmpty("telemetry batch id", batch.batch_id));
    for (const TelemetrySample& sample : batch.samples) {
      RETURN_IF_ERROR(CheckNotEmpty("telemetry metric name", sample.metric));
      if (!std::isfinite(sample.value)) {
        return absl::InvalidArgumentError(
            StrCat("telemetry sample ", sample.metric, " has a non-finite value"));
      }
    }
    return Run<InsertResult>(TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<InsertResult> {
      RETURN_IF_ERROR(DeviceExists(c, batch.device_id));
      ASSIGN_OR_RETURN(
          Result r,
          c.Query("INSERT INTO telemetry_batches (device_id, batch_id, received_at, "
                  "sample_count) VALUES ($1, $2, $3, $4) "
                  "ON CONFLICT (device_id, batch_id) DO NOTHING",
                  {batch.device_id, batch.batch_id, batch.received_at, batch.samples.size()}));
      if (r.affected == 0) return InsertResult::kDuplicate;
      const auto& samples = batch.samples;
      for (size_t start = 0; start < samples.size(); start += kChunk) {
        size_t n = std::min(kChunk, samples.size() - start);
        Statement s;
        s.sql =
            "INSERT INTO telemetry_samples (device_id, metric, device_time, hub_time, value, "
            "labels, release_id, model_version, received_at, seq) VALUES ";
        std::string device = s.Bind(batch.device_id);
        std::string received_at = s.Bind(batch.received_at);
        std::string release = s.Bind(batch.release_id);
        std::string model_version = s.Bind(batch.model_version);
        for (size_t i = 0; i < n; ++i) {
          const TelemetrySample& sample = samples[start + i];
          std::string hub_time = sample.hub_time > 0 ? s.Bind(sample.hub_time) : received_at;
          std::string_view labels =
              sample.labels_json.empty() ? std::string_view("{}") : sample.labels_json;
          StrAppend(&s.sql, i == 0 ? "(" : ", (", device, ", ", s.Bind(sample.metric), ", ",
                    s.Bind(sample.device_time), ", ", hub_time, ", ", s.Bind(sample.value), ", ",
                    s.Bind(labels), ", ", release, ", ", model_version, ", ", received_at, ", ",
                    s.Bind(Param(sample.seq)), ")");
        }
        RETURN_IF_ERROR(c.Query(s.sql, s.params).status());
      }
      return InsertResult::kInserted;
    });
  }

  absl::StatusOr<std::vector<StoredSample>> QueryTelemetry(const TelemetryQuery& query) override {
    RETURN_IF_ERROR(CheckNotEmpty("telemetry metric name", query.metric));
    if (query.device_ids.size() > kMaxQueryDevices) {
      return absl::InvalidArgumentError(
          StrCat("a telemetry query names at most ", kMaxQueryDevices, " devices"));
    }
    return Run<std::vector<StoredSample>>(
        TxMode::kRead, [&](Connection& c) -> absl::StatusOr<std::vector<StoredSample>> {
          std::string_view axis = query.by_hub_time ? "hub_time" : "device_time";
          Statement s;
          s.sql = StrCat(
              "SELECT device_id, metric, device_time, hub_time, value, labels, seq "
              "FROM telemetry_samples WHERE metric = ",
              s.Bind(query.metric), " AND ", axis, " >= ", s.Bind(query.from), " AND ", axis, " < ",
              s.Bind(query.to));
          if (!query.device_ids.empty()) {
            StrAppend(&s.sql, " AND device_id IN (",
                      Placeholders(s.params.size() + 1, query.device_ids.size()), ")");
            for (const std::string& id : query.device_ids) s.params.emplace_back(id);
          }
          StrAppend(&s.sql, " ORDER BY ", axis, ", device_id");
          if (query.limit > 0) StrAppend(&s.sql, " LIMIT ", s.Bind(query.limit));
          ASSIGN_OR_RETURN(Result r, c.Query(s.sql, s.params));
          std::vector<StoredSample> out;
          out.reserve(r.rows.size());
          for (const Row& row : r.rows) {
            out.push_back({row.Text(0), row.Text(1), row.Int(2), row.Int(3), row.Double(4),
                           row.Text(5),
                           row.IsNull(6) ? std::nullopt : std::optional<int64_t>(row.Int(6))});
          }
          return out;
        });
  }

  absl::StatusOr<int64_t> DeleteTelemetryBefore(TimeMs cutoff) override {
    return Run<int64_t>(TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<int64_t> {
      ASSIGN_OR_RETURN(Result samples,
                       c.Query("DELETE FROM telemetry_samples WHERE received_at < $1", {cutoff}));
      RETURN_IF_ERROR(
          c.Query("DELETE FROM telemetry_batches WHERE received_at < $1", {cutoff}).status());
      return samples.affected;
    });
  }

  absl::StatusOr<int64_t> RollUpTelemetry(const std::vector<int64_t>& resolutions_ms,
                                          TimeMs up_to) override {
    for (int64_t resolution : resolutions_ms) {
      if (resolution < 1000) {
        return absl::InvalidArgumentError(
            StrCat("a rollup resolution must be at least 1000 ms, got ", resolution));
      }
    }
    return Run<int64_t>(TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<int64_t> {
      // The row lock on the watermark serialises hub processes (SQLite's
      // write lock does the same there).
      ASSIGN_OR_RETURN(
          Result w,
          c.Query(StrCat("SELECT value FROM counters WHERE name = 'telemetry_rollup_watermark'",
                         c.dialect() == sql::Dialect::kPostgres ? " FOR UPDATE" : "")));
      const TimeMs from = w.rows.at(0).Int(0);
      if (up_to <= from) return int64_t{0};
      ASSIGN_OR_RETURN(Result n, c.Query("SELECT COUNT(*) FROM telemetry_samples WHERE received_at "
                                         ">= $1 AND received_at < $2",
                                         {from, up_to}));
      const int64_t folded = n.rows.at(0).Int(0);
      if (folded > 0) {
        // A pipeline result's labels hold the result itself (unique per
        // sample): its rollup keeps only the pipeline's name, so rollups
        // stay one row per pipeline and bucket.
        const std::string pipeline_label = c.dialect() == sql::Dialect::kPostgres
                                               ? "to_json(labels::json->>'pipeline')::text"
                                               : "json_quote(json_extract(labels, '$.pipeline'))";
        const std::string fold = StrCat(
            "INSERT INTO telemetry_rollups (resolution_ms, device_id, metric, labels, "
            "release_id, model_version, bucket_start, sample_count, value_sum, value_min, "
            "value_max) SELECT $1, device_id, metric, "
            "CASE WHEN metric = 'pipeline_result' THEN '{\"pipeline\":' || COALESCE(",
            pipeline_label,
            ", 'null') || '}' ELSE labels END, release_id, model_version, "
            "(device_time / $1) * $1, COUNT(*), SUM(value), MIN(value), MAX(value) "
            "FROM telemetry_samples WHERE received_at >= $2 AND received_at < $3 "
            "GROUP BY 2, 3, 4, 5, 6, 7 "
            "ON CONFLICT (resolution_ms, metric, device_id, labels, release_id, "
            "model_version, bucket_start) DO UPDATE SET "
            "sample_count = telemetry_rollups.sample_count + excluded.sample_count, "
            "value_sum = telemetry_rollups.value_sum + excluded.value_sum, "
            "value_min = CASE WHEN excluded.value_min < telemetry_rollups.value_min "
            "THEN excluded.value_min ELSE telemetry_rollups.value_min END, "
            "value_max = CASE WHEN excluded.value_max > telemetry_rollups.value_max "
            "THEN excluded.value_max ELSE telemetry_rollups.value_max END");
        for (int64_t resolution : resolutions_ms) {
          RETURN_IF_ERROR(c.Query(fold, {resolution, from, up_to}).status());
        }
      }
      RETURN_IF_ERROR(c.Query("UPDATE counters SET value = $1 WHERE name = "
                              "'telemetry_rollup_watermark'",
                              {up_to})
                          .status());
      return folded;
    });
  }

  absl::StatusOr<TimeMs> RollupWatermark() override {
    return Run<TimeMs>(TxMode::kRead, [&](Connection& c) -> absl::StatusOr<TimeMs> {
      ASSIGN_OR_RETURN(
          Result w,
          c.Query("SELECT value FROM counters WHERE name = 'telemetry_rollup_watermark'"));
      return w.rows.at(0).Int(0);
    });
  }

  absl::StatusOr<int64_t> DeleteRollupsBefore(int64_t resolution_ms, TimeMs cutoff) override {
    return Run<int64_t>(TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<int64_t> {
      ASSIGN_OR_RETURN(Result r, c.Query("DELETE FROM telemetry_rollups WHERE resolution_ms = $1 "
                                         "AND bucket_start < $2",
                                         {resolution_ms, cutoff}));
      return r.affected;
    });
  }

  absl::StatusOr<std::vector<SeriesPoint>> QueryTelemetrySeries(const SeriesQuery& query) override {
    RETURN_IF_ERROR(CheckNotEmpty("telemetry metric name", query.metric));
    if (query.step_ms < 1) {
      return absl::InvalidArgumentError(StrCat("step must be >= 1 ms, got ", query.step_ms));
    }
    if (query.resolution_ms < 0 ||
        (query.resolution_ms > 0 && query.step_ms % query.resolution_ms != 0)) {
      return absl::InvalidArgumentError(StrCat("step ", query.step_ms,
                                               " ms is not a multiple of the rollup resolution ",
                                               query.resolution_ms, " ms"));
    }
    if (query.device_ids.size() > kMaxQueryDevices) {
      return absl::InvalidArgumentError(
          StrCat("a telemetry query names at most ", kMaxQueryDevices, " devices"));
    }
    return Run<std::vector<SeriesPoint>>(
        TxMode::kRead, [&](Connection& c) -> absl::StatusOr<std::vector<SeriesPoint>> {
          const bool raw = query.resolution_ms == 0;
          std::string_view time = raw ? "s.device_time" : "s.bucket_start";
          std::string_view group;
          switch (query.group) {
            case SeriesGroup::kDevice:
              group = "s.device_id";
              break;
            case SeriesGroup::kRelease:
              group = "s.release_id";
              break;
            case SeriesGroup::kModelVersion:
              group = "s.model_version";
              break;
            case SeriesGroup::kNone:
              break;
          }
          Statement st;
          std::string step = st.Bind(query.step_ms);
          std::string bucket = StrCat("(", time, " / ", step, ") * ", step);
          st.sql = StrCat("SELECT ", group.empty() ? "''" : group, ", s.labels, ", bucket, ", ",
                          raw ? "COUNT(*), SUM(s.value), MIN(s.value), MAX(s.value) "
                                "FROM telemetry_samples s"
                              : "SUM(s.sample_count), SUM(s.value_sum), MIN(s.value_min), "
                                "MAX(s.value_max) FROM telemetry_rollups s");
          StrAppend(&st.sql, " WHERE s.metric = ", st.Bind(query.metric), " AND ", time,
                    " >= ", st.Bind(query.from), " AND ", time, " < ", st.Bind(query.to));
          if (!raw) StrAppend(&st.sql, " AND s.resolution_ms = ", st.Bind(query.resolution_ms));
          if (!query.device_ids.empty()) {
            StrAppend(&st.sql, " AND s.device_id IN (",
                      Placeholders(st.params.size() + 1, query.device_ids.size()), ")");
            for (const std::string& id : query.device_ids) st.params.emplace_back(id);
          }
          if (!query.site.empty()) {
            StrAppend(&st.sql, " AND s.device_id IN (SELECT id FROM devices WHERE site = ",
                      st.Bind(query.site), ")");
          }
          if (!query.release_id.empty()) {
            StrAppend(&st.sql, " AND s.release_id = ", st.Bind(query.release_id));
          }
          if (!query.model_version.empty()) {
            // One item of the comma-separated stamp, matched whole.
            StrAppend(&st.sql,
                      c.dialect() == sql::Dialect::kPostgres ? " AND strpos(" : " AND instr(",
                      "',' || s.model_version || ',', ',' || ", st.Bind(query.model_version),
                      " || ',') > 0");
          }
          // By position: the bucket expression holds parameters.
          std::string_view columns = group.empty() ? "2, 3" : "1, 2, 3";
          StrAppend(&st.sql, " GROUP BY ", columns, " ORDER BY ", columns);
          if (query.limit > 0) StrAppend(&st.sql, " LIMIT ", st.Bind(query.limit));
          ASSIGN_OR_RETURN(Result r, c.Query(st.sql, st.params));
          std::vector<SeriesPoint> out;
          out.reserve(r.rows.size());
          for (const Row& row : r.rows) {
            out.push_back({row.Text(0), row.Text(1), row.Int(2), row.Int(3), row.Double(4),
                           row.Double(5), row.Double(6)});
          }
          return out;
        });
  }

  absl::StatusOr<std::map<std::string, TimeMs>> LastTelemetryByDevice() override {
    return Run<std::map<std::string, TimeMs>>(
        TxMode::kRead, [&](Connection& c) -> absl::StatusOr<std::map<std::string, TimeMs>> {
          ASSIGN_OR_RETURN(Result r, c.Query("SELECT device_id, MAX(received_at) FROM "
                                             "telemetry_batches GROUP BY device_id"));
          std::map<std::string, TimeMs> out;
          for (const Row& row : r.rows) out.emplace(row.Text(0), row.Int(1));
          return out;
        });
  }

  // --- Alerts ---

  absl::StatusOr<std::vector<Alert>> RecordAlertEvaluation(
      const std::vector<std::string>& evaluated, const std::vector<AlertObservation>& observations,
      TimeMs now) override {
    std::set<std::string_view> rules(evaluated.begin(), evaluated.end());
    for (const AlertObservation& o : observations) {
      RETURN_IF_ERROR(CheckNotEmpty("alert name", o.name));
      RETURN_IF_ERROR(CheckNotEmpty("alert severity", o.severity));
      if (!rules.contains(o.name)) {
        return absl::InvalidArgumentError(
            StrCat("alert '", o.name, "' was observed but its rule is not among those evaluated"));
      }
      if (!std::isfinite(o.value) || !std::isfinite(o.threshold)) {
        return absl::InvalidArgumentError(StrCat("alert '", o.name, "' has a non-finite value"));
      }
    }
    if (evaluated.empty()) return std::vector<Alert>{};
    if (evaluated.size() > kMaxQueryDevices) {
      return absl::InvalidArgumentError("too many alert rules in one evaluation");
    }
    return Run<std::vector<Alert>>(
        TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<std::vector<Alert>> {
          if (c.dialect() == sql::Dialect::kPostgres) {
            // One evaluation at a time across hub processes ("alerts" in ASCII).
            RETURN_IF_ERROR(
                c.Query("SELECT pg_advisory_xact_lock($1)", {int64_t{0x616c65727473}}).status());
          }
          Statement st;
          st.sql =
              StrCat("SELECT ", kAlertColumns, " FROM alerts WHERE state = 'firing' AND name IN (",
                     Placeholders(1, evaluated.size()), ")");
          for (const std::string& name : evaluated) st.params.emplace_back(name);
          ASSIGN_OR_RETURN(Result firing_rows, c.Query(st.sql, st.params));
          std::map<std::pair<std::string, std::string>, Alert> firing;
          for (const Row& row : firing_rows.rows) {
            Alert a = AlertFrom(row);
            firing.emplace(std::make_pair(a.name, a.device_id), std::move(a));
          }
          std::vector<Alert> changed;
          std::set<std::pair<std::string, std::string>> seen;
          for (const AlertObservation& o : observations) {
            auto key = std::make_pair(o.name, o.device_id);
            if (!seen.insert(key).second) continue;  // the first observation wins
            auto it = firing.find(key);
            if (it == firing.end()) {
              ASSIGN_OR_RETURN(
                  Result r,
                  c.Query(StrCat("INSERT INTO alerts (name, device_id, severity, state, site, "
                                 "value, threshold, summary, started_at, updated_at) VALUES "
                                 "($1, $2, $3, 'firing', $4, $5, $6, $7, $8, $8) RETURNING ",
                                 kAlertColumns),
                          {o.name, o.device_id, o.severity, o.site, o.value, o.threshold, o.summary,
                           now}));
              changed.push_back(AlertFrom(r.rows.at(0)));
              continue;
            }
            const Alert& a = it->second;
            if (a.value == o.value && a.threshold == o.threshold && a.severity == o.severity &&
                a.summary == o.summary && a.site == o.site) {
              continue;
            }
            RETURN_IF_ERROR(
                c.Query("UPDATE alerts SET severity = $1, site = $2, value = $3, "
                        "threshold = $4, summary = $5, updated_at = $6 WHERE id = $7",
                        {o.severity, o.site, o.value, o.threshold, o.summary, now, a.id})
                    .status());
          }
          for (auto& [key, a] : firing) {
            if (seen.contains(key)) continue;
            RETURN_IF_ERROR(c.Query("UPDATE alerts SET state = 'resolved', resolved_at = $1, "
                                    "updated_at = $1 WHERE id = $2",
                                    {now, a.id})
                                .status());
            a.state = AlertState::kResolved;
            a.resolved_at = now;
            a.updated_at = now;
            changed.push_back(std::move(a));
          }
          return changed;
        });
  }

  absl::StatusOr<std::vector<Alert>> ListAlerts(const AlertFilter& filter) override {
    return Run<std::vector<Alert>>(
        TxMode::kRead, [&](Connection& c) -> absl::StatusOr<std::vector<Alert>> {
          Statement st;
          st.sql = StrCat("SELECT ", kAlertColumns, " FROM alerts WHERE 1 = 1");
          if (filter.state) StrAppend(&st.sql, " AND state = ", st.Bind(NameOf(*filter.state)));
          if (!filter.name.empty()) StrAppend(&st.sql, " AND name = ", st.Bind(filter.name));
          if (!filter.device_id.empty()) {
            StrAppend(&st.sql, " AND device_id = ", st.Bind(filter.device_id));
          }
          if (!filter.site.empty()) StrAppend(&st.sql, " AND site = ", st.Bind(filter.site));
          StrAppend(&st.sql, " ORDER BY started_at DESC, id DESC");
          if (filter.limit > 0) StrAppend(&st.sql, " LIMIT ", st.Bind(filter.limit));
          ASSIGN_OR_RETURN(Result r, c.Query(st.sql, st.params));
          std::vector<Alert> out;
          out.reserve(r.rows.size());
          for (const Row& row : r.rows) out.push_back(AlertFrom(row));
          return out;
        });
  }

  absl::StatusOr<int64_t> DeleteAlertsResolvedBefore(TimeMs cutoff) override {
    return Run<int64_t>(TxMode::kWrite, [&](Connection& c) -> absl::StatusOr<int64_t> {
      ASSIGN_OR_RETURN(Result r, c.Query("DELETE FROM alerts WHERE state = 'resolved' AND "
                                         "resolved_at < $1",
                                         {cutoff}));
      return r.affected;
    });
  }

 private:
  // Runs `fn(Connection&) -> StatusOr<T>` in a transaction.
  template <typename T, typename Fn>
  absl::StatusOr<T> Run(TxMode mode, Fn&& fn) {
    std::optional<T> out;
    RETURN_IF_ERROR(db_->Transact(mode, [&](Connection& c) -> absl::Status {
      absl::StatusOr<T> value = fn(c);
      if (!value.ok()) return value.status();
      out = *std::move(value);
      return absl::OkStatus();
    }));
    return std::move(*out);
  }

  const std::unique_ptr<sql::Database> db_;
};

}  // namespace

std::unique_ptr<Store> NewSqlStore(std::unique_ptr<sql::Database> db) {
  return std::make_unique<SqlStore>(std::move(db));
}

}  // namespace outpost::hub
