#include "hub/migrations.h"

#include <chrono>
#include <string>

namespace outpost::hub {
namespace {

// Any constant both hub versions agree on; names the migration lock among
// the database's advisory locks ("outpost" in ASCII).
constexpr int64_t kMigrationLockKey = 0x6f7574706f7374;

constexpr std::string_view kInitialSchema = R"sql(
CREATE TABLE api_tokens (
  id {{id}},
  name TEXT NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
  token_hash TEXT NOT NULL UNIQUE,
  created_at BIGINT NOT NULL,
  revoked BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE bootstrap_tokens (
  id {{id}},
  token_hash TEXT NOT NULL UNIQUE,
  uses_left BIGINT NOT NULL CHECK (uses_left >= 0),
  expires_at BIGINT NOT NULL,
  site TEXT NOT NULL DEFAULT '',
  labels TEXT NOT NULL DEFAULT '{}',
  created_at BIGINT NOT NULL
);

CREATE TABLE releases (
  id TEXT PRIMARY KEY,
  sequence BIGINT NOT NULL,
  bundle_sha256 TEXT NOT NULL UNIQUE,
  size BIGINT NOT NULL,
  manifest TEXT NOT NULL,
  key_id TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  yanked BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX releases_by_sequence ON releases (sequence);

CREATE TABLE devices (
  id TEXT PRIMARY KEY,
  credential_hash TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL DEFAULT '',
  site TEXT NOT NULL DEFAULT '',
  facts TEXT NOT NULL DEFAULT '{}',
  status TEXT NOT NULL CHECK (status IN ('active', 'revoked', 'decommissioned')),
  pinned_release TEXT REFERENCES releases (id),
  desired_release TEXT REFERENCES releases (id),
  desired_generation BIGINT NOT NULL DEFAULT 1,
  desired_updated_at BIGINT NOT NULL DEFAULT 0,
  enrolled_at BIGINT NOT NULL,
  last_seen_at BIGINT NOT NULL DEFAULT 0,
  last_clock_offset_ms BIGINT NOT NULL DEFAULT 0,
  current_release TEXT NOT NULL DEFAULT '',
  previous_release TEXT NOT NULL DEFAULT '',
  update_state TEXT NOT NULL DEFAULT '',
  update_reason TEXT NOT NULL DEFAULT '',
  last_event_seq BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX devices_by_site ON devices (site);
CREATE INDEX devices_by_current_release ON devices (current_release);

-- Labels as rows, so label selectors are indexed lookups on both databases.
CREATE TABLE device_labels (
  device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
  label_key TEXT NOT NULL,
  label_value TEXT NOT NULL,
  PRIMARY KEY (device_id, label_key)
);
CREATE INDEX device_labels_by_key_value ON device_labels (label_key, label_value);

CREATE TABLE device_events (
  device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
  seq BIGINT NOT NULL,
  state TEXT NOT NULL,
  release_id TEXT NOT NULL DEFAULT '',
  reason TEXT NOT NULL DEFAULT '',
  progress DOUBLE PRECISION NOT NULL DEFAULT 0,
  device_time BIGINT NOT NULL,
  hub_time BIGINT NOT NULL,
  PRIMARY KEY (device_id, seq)
);

CREATE TABLE config_layers (
  scope TEXT NOT NULL CHECK (scope IN ('fleet', 'site', 'group', 'device')),
  scope_key TEXT NOT NULL,
  yaml TEXT NOT NULL,
  version BIGINT NOT NULL,
  change_seq BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (scope, scope_key)
);

-- Store-wide counters, bumped with UPDATE ... RETURNING (a row lock).
CREATE TABLE counters (
  name TEXT PRIMARY KEY,
  value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('config_change_seq', 0);

CREATE TABLE rollouts (
  id {{id}},
  release_id TEXT NOT NULL REFERENCES releases (id),
  selector TEXT NOT NULL,
  waves TEXT NOT NULL,
  state TEXT NOT NULL
    CHECK (state IN ('pending', 'running', 'paused', 'halted', 'completed', 'aborted')),
  current_wave BIGINT NOT NULL DEFAULT 0,
  wave_started_at BIGINT NOT NULL DEFAULT 0,
  gates TEXT NOT NULL DEFAULT '{}',
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  version BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX rollouts_by_state ON rollouts (state);

CREATE TABLE rollout_devices (
  rollout_id BIGINT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
  device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
  wave BIGINT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'offered', 'installing', 'committed',
                                       'failed', 'rolled_back')),
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_by_device ON rollout_devices (device_id);

CREATE TABLE telemetry_batches (
  device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
  batch_id TEXT NOT NULL,
  received_at BIGINT NOT NULL,
  sample_count BIGINT NOT NULL,
  PRIMARY KEY (device_id, batch_id)
);
CREATE INDEX telemetry_batches_by_received_at ON telemetry_batches (received_at);

-- No foreign key: the hottest insert path; its batch row has one.
CREATE TABLE telemetry_samples (
  device_id TEXT NOT NULL,
  metric TEXT NOT NULL,
  device_time BIGINT NOT NULL,
  hub_time BIGINT NOT NULL,
  value DOUBLE PRECISION NOT NULL,
  labels TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX telemetry_samples_by_series ON telemetry_samples (device_id, metric, device_time);
CREATE INDEX telemetry_samples_by_metric_hub_time ON telemetry_samples (metric, hub_time);
CREATE INDEX telemetry_samples_by_hub_time ON telemetry_samples (hub_time);
)sql";

// Issue 6: what a device ran when it sent each sample, rollups for the
// long view, and alerts with their state.
constexpr std::string_view kRollupsAndAlerts = R"sql(
ALTER TABLE telemetry_samples ADD COLUMN release_id TEXT NOT NULL DEFAULT '';
ALTER TABLE telemetry_samples ADD COLUMN model_version TEXT NOT NULL DEFAULT '';

CREATE TABLE telemetry_rollups (
  resolution_ms BIGINT NOT NULL,
  device_id TEXT NOT NULL,
  metric TEXT NOT NULL,
  labels TEXT NOT NULL,
  release_id TEXT NOT NULL,
  model_version TEXT NOT NULL,
  bucket_start BIGINT NOT NULL,
  sample_count BIGINT NOT NULL,
  value_sum DOUBLE PRECISION NOT NULL,
  value_min DOUBLE PRECISION NOT NULL,
  value_max DOUBLE PRECISION NOT NULL,
  PRIMARY KEY (resolution_ms, metric, device_id, labels, release_id, model_version, bucket_start)
);
CREATE INDEX telemetry_rollups_by_bucket ON telemetry_rollups (resolution_ms, metric, bucket_start);

-- Samples with hub_time below this are folded into telemetry_rollups.
INSERT INTO counters (name, value) VALUES ('telemetry_rollup_watermark', 0);

CREATE TABLE alerts (
  id {{id}},
  name TEXT NOT NULL,
  device_id TEXT NOT NULL DEFAULT '',
  severity TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('firing', 'resolved')),
  site TEXT NOT NULL DEFAULT '',
  value DOUBLE PRECISION NOT NULL DEFAULT 0,
  threshold DOUBLE PRECISION NOT NULL DEFAULT 0,
  summary TEXT NOT NULL DEFAULT '',
  started_at BIGINT NOT NULL,
  resolved_at BIGINT NOT NULL DEFAULT 0,
  updated_at BIGINT NOT NULL
);
-- At most one firing episode per rule and device.
CREATE UNIQUE INDEX alerts_one_firing ON alerts (name, device_id) WHERE state = 'firing';
CREATE INDEX alerts_by_state ON alerts (state, started_at);
CREATE INDEX alerts_by_resolved_at ON alerts (resolved_at);
)sql";

// hub_time becomes the moment a sample was taken on the hub's clock (its
// device time corrected by the offset measured on the upload), which for a
// backlog shipped after an outage is long before it arrived. Folding into
// rollups and retention follow arrival, received_at, so no late sample is
// skipped. Rows so far were stamped with their arrival.
constexpr std::string_view kSampleArrival = R"sql(
ALTER TABLE telemetry_samples ADD COLUMN received_at BIGINT NOT NULL DEFAULT 0;
UPDATE telemetry_samples SET received_at = hub_time;
CREATE INDEX telemetry_samples_by_received_at ON telemetry_samples (received_at);
DROP INDEX telemetry_samples_by_hub_time;
)sql";

// The device's per-sample sequence (its telemetry queue numbers every
// sample), so arrival exactly once and in order can be checked; NULL for
// samples of agents that do not send it.
constexpr std::string_view kTelemetrySampleSeq = R"sql(
ALTER TABLE telemetry_samples ADD COLUMN seq BIGINT;
)sql";

constexpr Migration kMigrations[] = {
    {1, "initial schema", kInitialSchema},
    {2, "telemetry rollups and alerts", kRollupsAndAlerts},
    {3, "telemetry samples: arrival apart from the moment taken", kSampleArrival},
    {4, "telemetry sample sequence", kTelemetrySampleSeq},
};

std::string ForDialect(std::string_view sql, sql::Dialect dialect) {
  constexpr std::string_view kId = "{{id}}";
  std::string_view id = dialect == sql::Dialect::kSqlite
                            // AUTOINCREMENT: ids of deleted rows are never reused.
                            ? "INTEGER PRIMARY KEY AUTOINCREMENT"
                            : "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY";
  std::string out;
  size_t pos = 0;
  for (size_t hit = sql.find(kId); hit != std::string_view::npos; hit = sql.find(kId, pos)) {
    out.append(sql.substr(pos, hit - pos));
    out.append(id);
    pos = hit + kId.size();
  }
  out.append(sql.substr(pos));
  return out;
}

constexpr std::string_view kCreateMigrationsTable =
    "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, "
    "name TEXT NOT NULL, applied_at BIGINT NOT NULL)";

}  // namespace

std::span<const Migration> HubMigrations() { return kMigrations; }

absl::Status Migrate(sql::Database& db, std::span<const Migration> migrations) {
  for (size_t i = 0; i < migrations.size(); ++i) {
    if (migrations[i].version != static_cast<int64_t>(i + 1)) {
      return absl::InvalidArgumentError(StrCat("migration versions must be 1..N in order; #", i,
                                               " has version ", migrations[i].version));
    }
  }
  const int64_t latest = static_cast<int64_t>(migrations.size());
  // One transaction per migration, each deciding under the lock what is
  // still to do: a hub process that lost the race finds the work done.
  while (true) {
    bool done = false;
    absl::Status status = db.Transact(sql::TxMode::kWrite, [&](sql::Connection& conn) {
      if (conn.dialect() == sql::Dialect::kPostgres) {
        RETURN_IF_ERROR(
            conn.Query("SELECT pg_advisory_xact_lock($1)", {kMigrationLockKey}).status());
      }
      RETURN_IF_ERROR(conn.ExecScript(kCreateMigrationsTable));
      ASSIGN_OR_RETURN(sql::Result applied,
                       conn.Query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
      int64_t current = applied.rows.at(0).Int(0);
      if (current > latest) {
        return absl::FailedPreconditionError(
            StrCat("the database schema is at version ", current, " but this outpost-hub knows ",
                   latest, " at most: it was migrated by a newer hub; upgrade outpost-hub"));
      }
      if (current == latest) {
        done = true;
        return absl::OkStatus();
      }
      const Migration& next = migrations[current];
      absl::Status applied_ok = conn.ExecScript(ForDialect(next.sql, conn.dialect()));
      if (!applied_ok.ok()) {
        return absl::Status(applied_ok.code(),
                            StrCat("schema migration ", next.version, " (", next.name,
                                   ") failed: ", MessageOf(applied_ok)));
      }
      int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
      return conn
          .Query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                 {next.version, next.name, now})
          .status();
    });
    RETURN_IF_ERROR(status);
    if (done) return absl::OkStatus();
  }
}

absl::StatusOr<int64_t> SchemaVersion(sql::Database& db) {
  int64_t version = 0;
  RETURN_IF_ERROR(db.Transact(sql::TxMode::kRead, [&](sql::Connection& conn) {
    ASSIGN_OR_RETURN(sql::Result result,
                     conn.Query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
    version = result.rows.at(0).Int(0);
    return absl::OkStatus();
  }));
  return version;
}

}  // namespace outpost::hub
