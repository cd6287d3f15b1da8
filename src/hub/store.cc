#include "hub/store.h"

#include <filesystem>
#include <system_error>

#include "hub/migrations.h"
#include "hub/sql.h"
#include "hub/sql_store.h"

namespace outpost::hub {
namespace {

template <typename Enum, size_t N>
absl::StatusOr<Enum> ParseName(std::string_view what, std::string_view name,
                               const std::string_view (&names)[N]) {
  for (size_t i = 0; i < N; ++i) {
    if (names[i] == name) return static_cast<Enum>(i);
  }
  std::string accepted;
  for (size_t i = 0; i < N; ++i) StrAppend(&accepted, i == 0 ? "" : ", ", names[i]);
  return absl::InvalidArgumentError(
      StrCat("unknown ", what, " \"", name.substr(0, 64), "\"; expected one of: ", accepted));
}

// Indexed by the enums' values.
constexpr std::string_view kRoles[] = {"admin", "operator", "viewer"};
constexpr std::string_view kDeviceStatuses[] = {"active", "revoked", "decommissioned"};
constexpr std::string_view kRolloutStates[] = {"pending", "running",   "paused",
                                               "halted",  "completed", "aborted"};
constexpr std::string_view kRolloutDeviceStates[] = {"pending",   "offered", "installing",
                                                     "committed", "failed",  "rolled_back"};
constexpr std::string_view kConfigScopes[] = {"fleet", "site", "group", "device"};
constexpr std::string_view kSeriesGroups[] = {"device", "release", "model_version", "none"};
constexpr std::string_view kAlertStates[] = {"firing", "resolved"};

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

}  // namespace

std::string_view NameOf(Role role) { return kRoles[static_cast<size_t>(role)]; }
std::string_view NameOf(DeviceStatus status) {
  return kDeviceStatuses[static_cast<size_t>(status)];
}
std::string_view NameOf(RolloutState state) { return kRolloutStates[static_cast<size_t>(state)]; }
std::string_view NameOf(RolloutDeviceState state) {
  return kRolloutDeviceStates[static_cast<size_t>(state)];
}
std::string_view NameOf(ConfigScope scope) { return kConfigScopes[static_cast<size_t>(scope)]; }
std::string_view NameOf(SeriesGroup group) { return kSeriesGroups[static_cast<size_t>(group)]; }
std::string_view NameOf(AlertState state) { return kAlertStates[static_cast<size_t>(state)]; }

absl::StatusOr<Role> ParseRole(std::string_view name) {
  return ParseName<Role>("role", name, kRoles);
}
absl::StatusOr<DeviceStatus> ParseDeviceStatus(std::string_view name) {
  return ParseName<DeviceStatus>("device status", name, kDeviceStatuses);
}
absl::StatusOr<RolloutState> ParseRolloutState(std::string_view name) {
  return ParseName<RolloutState>("rollout state", name, kRolloutStates);
}
absl::StatusOr<RolloutDeviceState> ParseRolloutDeviceState(std::string_view name) {
  return ParseName<RolloutDeviceState>("rollout device state", name, kRolloutDeviceStates);
}
absl::StatusOr<ConfigScope> ParseConfigScope(std::string_view name) {
  return ParseName<ConfigScope>("configuration scope", name, kConfigScopes);
}

absl::StatusOr<SeriesGroup> ParseSeriesGroup(std::string_view name) {
  return ParseName<SeriesGroup>("series grouping", name, kSeriesGroups);
}
absl::StatusOr<AlertState> ParseAlertState(std::string_view name) {
  return ParseName<AlertState>("alert state", name, kAlertStates);
}

bool IsActive(RolloutState state) {
  return state == RolloutState::kPending || state == RolloutState::kRunning ||
         state == RolloutState::kPaused;
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(std::string_view url,
                                                   const StoreOptions& options) {
  sql::DatabaseOptions db_options{options.max_connections, options.lock_timeout};
  std::unique_ptr<sql::Database> db;
  if (StartsWith(url, "postgres://") || StartsWith(url, "postgresql://")) {
    ASSIGN_OR_RETURN(db, sql::OpenPostgres(std::string(url), db_options));
  } else {
    std::string_view path = url;
    if (StartsWith(path, "sqlite://")) {
      path.remove_prefix(9);  // sqlite:///abs/hub.db -> /abs/hub.db
    } else if (StartsWith(path, "sqlite:")) {
      path.remove_prefix(7);
    } else if (path.find("://") != std::string_view::npos) {
      return absl::InvalidArgumentError(
          StrCat("unsupported database URL \"", sql::RedactUrl(url),
                 "\": use sqlite:///path/hub.db, a file path, or postgres://..."));
    }
    if (path.empty()) return absl::InvalidArgumentError("the SQLite database path is empty");
    std::filesystem::path file(path);
    std::filesystem::path dir = file.parent_path().empty() ? "." : file.parent_path();
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) {
      return absl::NotFoundError(StrCat("cannot open the hub database ", file.string(),
                                        ": directory ", dir.string(), " does not exist"));
    }
    ASSIGN_OR_RETURN(db, sql::OpenSqlite(file.string(), db_options));
  }
  RETURN_IF_ERROR(Migrate(*db, HubMigrations()));
  return NewSqlStore(std::move(db));
}

}  // namespace outpost::hub
