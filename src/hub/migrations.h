// Internal to src/hub: versioned schema migrations.
//
// A migration is applied once, in its own transaction together with its
// row in schema_migrations(version, name, applied_at), so a crash or error
// leaves the schema at the previous version, never half-way. Concurrent
// Migrate() calls from several hub processes are serialised (PostgreSQL:
// pg_advisory_xact_lock inside each migration's transaction; SQLite: the
// write lock of BEGIN IMMEDIATE) and each re-reads the applied versions
// under that lock, so every migration runs exactly once.
//
// Rules for adding one: append with the next version number; never edit or
// reorder a released migration; write SQL both databases accept (see
// sql.h), with {{id}} for an auto-increment BIGINT primary key.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "hub/sql.h"

namespace outpost::hub {

struct Migration {
  int64_t version;  // 1, 2, 3, ... without gaps
  std::string_view name;
  std::string_view sql;  // several statements
};

// The hub's schema history.
std::span<const Migration> HubMigrations();

// Applies the migrations of `migrations` not yet recorded, in order.
// Errors: FailedPrecondition (the database records a version newer than
// the last of `migrations`: it belongs to a newer hub), InvalidArgument
// (versions not 1..N in order), a failing migration's error (with its
// version and name; nothing of it is applied).
absl::Status Migrate(sql::Database& db, std::span<const Migration> migrations);

// The highest applied version (0 for an empty database).
absl::StatusOr<int64_t> SchemaVersion(sql::Database& db);

}  // namespace outpost::hub
