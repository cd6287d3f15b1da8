// The hub's storage: every piece of hub state (tokens, devices, releases,
// desired state, configuration layers, rollouts, telemetry) behind one
// narrow interface with two backends (DESIGN.md "State and durability"):
//
//   sqlite:///var/lib/outpost-hub/hub.db   embedded default, zero setup
//   /var/lib/outpost-hub/hub.db            the same (a plain path)
//   postgres://user:pw@host:5432/outpost    PostgreSQL 15+ (postgresql://
//                                           too; any libpq URI parameter)
//
// Artifacts (release bundles) are not in the database but in the
// content-addressed BlobStore (blob_store.h); releases refer to them by
// SHA-256.
//
// Guarantees, for both backends:
// - Every method is one transaction: it happens entirely or not at all.
//   Once it returns OK the change is durable (SQLite: WAL with
//   synchronous=FULL; PostgreSQL: its commit).
// - Several Store objects, in one process or in several hub processes, may
//   share one database. The store keeps no state of its own between calls
//   (no caches), so any hub process may serve any request. Operations that
//   must not race (consuming a bootstrap token, compare-and-swap of a
//   rollout, a rollout step under WithRolloutLock, the desired-state
//   generation, the configuration change counter) are made safe by the
//   database itself (conditional UPDATE ... RETURNING, row locks), never by
//   in-process locks.
// - Open() brings the schema up to date with versioned migrations, each in
//   its own transaction, serialised across processes (PostgreSQL advisory
//   lock; SQLite's write lock); a database migrated by a newer hub is
//   refused.
// - The store never sees secrets: tokens and credentials arrive as SHA-256
//   hex of the secret. JSON and YAML fields are stored as given; validating
//   them is the caller's job.
// - Times are int64 unix milliseconds passed in by the caller (injectable
//   clocks); the store never reads the clock for data.
//
// Errors common to every method (besides those listed per method):
//   InvalidArgument  a malformed argument (empty id, bad hash, NUL in text,
//                    non-finite number), with the field named
//   Unavailable      the database is unreachable, or a lock was held longer
//                    than StoreOptions::lock_timeout; safe to retry
//   ResourceExhausted the disk or the database is full
//   Internal         anything else the database reported (message has it)
//
// Thread safety: a Store is thread-safe; calls from the hub's HTTP threads
// run concurrently on up to StoreOptions::max_connections connections.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "common/status.h"

namespace outpost::hub {

// Unix time in milliseconds.
using TimeMs = int64_t;

enum class Role { kAdmin, kOperator, kViewer };
enum class DeviceStatus { kActive, kRevoked, kDecommissioned };
enum class RolloutState { kPending, kRunning, kPaused, kHalted, kCompleted, kAborted };
enum class RolloutDeviceState { kPending, kOffered, kInstalling, kCommitted, kFailed, kRolledBack };
// Configuration layers merge in this order, later ones winning.
enum class ConfigScope { kFleet, kSite, kGroup, kDevice };

// Lowercase names as stored and as the APIs spell them ("admin",
// "decommissioned", "rolled_back", ...). Parse* return InvalidArgument
// naming the accepted values.
std::string_view NameOf(Role role);
std::string_view NameOf(DeviceStatus status);
std::string_view NameOf(RolloutState state);
std::string_view NameOf(RolloutDeviceState state);
std::string_view NameOf(ConfigScope scope);
absl::StatusOr<Role> ParseRole(std::string_view name);
absl::StatusOr<DeviceStatus> ParseDeviceStatus(std::string_view name);
absl::StatusOr<RolloutState> ParseRolloutState(std::string_view name);
absl::StatusOr<RolloutDeviceState> ParseRolloutDeviceState(std::string_view name);
absl::StatusOr<ConfigScope> ParseConfigScope(std::string_view name);

// Whether a rollout in this state can still change devices (pending,
// running, paused): the rollout engine's work list.
bool IsActive(RolloutState state);

using Labels = std::map<std::string, std::string>;

// An admin API token. The secret is shown once at creation by the caller;
// the store keeps only its hash.
struct ApiToken {
  int64_t id = 0;  // assigned by the store
  std::string name;
  Role role = Role::kViewer;
  std::string token_hash;  // SHA-256 hex of the secret
  TimeMs created_at = 0;
  bool revoked = false;
};

// A token a device presents once to enroll; may be shared by a batch of
// devices (uses_left) and stamps them with a site and labels.
struct BootstrapToken {
  int64_t id = 0;  // assigned by the store
  std::string token_hash;
  int64_t uses_left = 1;
  TimeMs expires_at = 0;  // unusable from this instant on
  std::string site;       // applied to enrolled devices when not empty
  Labels labels;          // merged into enrolled devices' labels
  TimeMs created_at = 0;
};

// What a device last reported about its update (see DeviceReport).
struct DeviceUpdateStatus {
  std::string current_release;   // running now ("" before the first install)
  std::string previous_release;  // the rollback target
  std::string update_state;      // the agent's state machine state
  std::string update_reason;     // why it is there (failure reason, ...)
};

struct Device {
  std::string id;               // chosen by the hub at enrollment
  std::string credential_hash;  // SHA-256 hex of the device's secret
  std::string name;
  std::string site;
  Labels labels;
  // Inventory facts as a JSON object (make, model, serial, arch,
  // accelerators, agent/runtime/model versions): replaced whole.
  std::string facts_json = "{}";
  DeviceStatus status = DeviceStatus::kActive;
  // Set by an operator: the device stays on this release whatever rollouts
  // say. The hub serves pinned_release, else desired_release.
  std::optional<std::string> pinned_release;
  // The release rollouts (or an operator) assigned.
  std::optional<std::string> desired_release;
  // Increases whenever anything in the store that shapes this device's
  // desired state changes (desired release, pin, site, labels, status);
  // with the configuration layers' change_seq it makes the ETag. Starts at 1.
  int64_t desired_generation = 0;
  TimeMs enrolled_at = 0;
  TimeMs last_seen_at = 0;  // 0 = never
  // Device clock minus hub clock at the last contact.
  int64_t last_clock_offset_ms = 0;
  DeviceUpdateStatus update;
  // The highest DeviceEvent::seq recorded; `update` is from that report.
  int64_t last_event_seq = 0;
};

// Which devices ListDevices/CountDevices return; fields left empty match all.
struct DeviceFilter {
  std::optional<std::string> site;
  Labels labels;  // every key must be present with exactly this value
  std::optional<DeviceStatus> status;
  std::optional<std::string> current_release;
  // Paging (ListDevices only): devices are ordered by id; return ids
  // greater than after_id, at most `limit` (0 = no limit).
  std::string after_id;
  int64_t limit = 0;
};

// Changes to a device's inventory attributes; nullopt leaves a field alone.
struct DeviceAttributes {
  std::optional<std::string> name;
  std::optional<std::string> site;
  std::optional<Labels> labels;  // replaces all labels
};

// A device checking in (every desired-state poll).
struct DeviceContact {
  TimeMs seen_at = 0;  // hub time
  int64_t clock_offset_ms = 0;
  std::optional<std::string> facts_json;  // replaces facts when set
};

struct Release {
  std::string id;  // the release name from the manifest
  int64_t sequence = 0;
  std::string bundle_sha256;  // the bundle's key in the BlobStore
  int64_t size = 0;
  std::string manifest_json;
  std::string key_id;  // the key that signed it
  TimeMs created_at = 0;
  bool yanked = false;
};

// One status report from a device's update history.
struct DeviceEvent {
  std::string device_id;
  // The agent's own counter, increasing per device; a report sent twice
  // (a retry over a flaky link) carries the same seq and is stored once.
  int64_t seq = 0;
  std::string state;
  std::string release;
  std::string reason;
  double progress = 0;  // 0..1 when meaningful
  TimeMs device_time = 0;
  TimeMs hub_time = 0;
};

// A device's rollout membership.
struct RolloutDevice {
  int64_t rollout_id = 0;
  std::string device_id;
  int64_t wave = 0;  // 0-based index into the rollout's waves
  RolloutDeviceState state = RolloutDeviceState::kPending;
  TimeMs updated_at = 0;
};

// A status report as RecordDeviceReport applies it.
struct DeviceReport {
  DeviceEvent event;
  // Applied to Device::update when set and event.seq is the newest the
  // store has seen for the device (reports may arrive out of order).
  std::optional<DeviceUpdateStatus> status;
  // Applied to the device's row in this rollout, under the same rule.
  struct RolloutProgress {
    int64_t rollout_id = 0;
    RolloutDeviceState state = RolloutDeviceState::kPending;
  };
  std::optional<RolloutProgress> rollout;
};

enum class InsertResult { kInserted, kDuplicate };

struct ConfigLayer {
  ConfigScope scope = ConfigScope::kFleet;
  std::string scope_key;  // "" for the fleet; site name, group name, device id
  std::string yaml;
  int64_t version = 0;  // 1 on creation, +1 on every change of this layer
  // The store-wide configuration change counter at this layer's last
  // change: unique across layers and never reused, so (scope, key,
  // change_seq) of the layers a device sees identifies its configuration.
  int64_t change_seq = 0;
  TimeMs updated_at = 0;
};

// Whose layers ListConfigLayersFor returns.
struct ConfigTarget {
  std::string site;
  std::vector<std::string> groups;  // in merge order
  std::string device_id;
};

struct Rollout {
  int64_t id = 0;  // assigned by the store
  std::string release_id;
  std::string selector_json = "{}";
  std::string waves_json = "[]";
  RolloutState state = RolloutState::kPending;
  int64_t current_wave = 0;
  TimeMs wave_started_at = 0;
  std::string gates_json = "{}";  // gate values measured so far
  TimeMs created_at = 0;
  TimeMs updated_at = 0;
  // Optimistic lock: +1 on every change (UpdateRollout, SaveRollout).
  int64_t version = 0;
};

struct TelemetrySample {
  std::string metric;
  TimeMs device_time = 0;
  double value = 0;  // finite
  std::string labels_json = "{}";
  std::optional<int64_t> seq;  // the device's per-sample sequence, when sent
  // When it was taken on the hub's clock (device_time corrected by the
  // offset measured on the upload); 0 = the batch's received_at.
  TimeMs hub_time = 0;
};

// One upload from a device's store-and-forward queue.
struct TelemetryBatch {
  std::string device_id;
  std::string batch_id;  // unique per device; a re-sent batch is stored once
  TimeMs received_at = 0;
  std::vector<TelemetrySample> samples;
  // What the device ran when it sent the batch, stamped on every sample so
  // queries and rollups can compare releases and model versions over time:
  // its current release, and its loaded models as sorted "model/version"
  // items joined by commas ("" when unknown).
  std::string release_id;
  std::string model_version;
};

struct StoredSample {
  std::string device_id;
  std::string metric;
  TimeMs device_time = 0;
  // When it was taken, on the hub's clock (corrected device time; the
  // batch's arrival when the device sent no clock).
  TimeMs hub_time = 0;
  double value = 0;
  std::string labels_json;
  std::optional<int64_t> seq;
};

// Which samples a series query covers and how it groups them.
enum class SeriesGroup { kDevice, kRelease, kModelVersion, kNone };
std::string_view NameOf(SeriesGroup group);
// "device", "release", "model_version", "none".
absl::StatusOr<SeriesGroup> ParseSeriesGroup(std::string_view name);

struct SeriesQuery {
  std::string metric;  // required
  // Filters; empty = any. site is the device's current site; release and
  // model_version are what the device ran when the sample was sent
  // (model_version matches one "model/version" item of the stamp).
  std::vector<std::string> device_ids;
  std::string site;
  std::string release_id;
  std::string model_version;
  // Half-open range on device_time, bucketed by `step_ms` (> 0; a multiple
  // of resolution_ms when reading a rollup).
  TimeMs from = 0;
  TimeMs to = INT64_MAX;
  int64_t step_ms = 60'000;
  // 0: raw samples; otherwise a rollup resolution RollUpTelemetry keeps.
  int64_t resolution_ms = 0;
  SeriesGroup group = SeriesGroup::kDevice;
  int64_t limit = 10000;  // points, ordered by group, labels, bucket
};

// One bucket of one series: count/sum/min/max of the samples in it.
struct SeriesPoint {
  std::string group;  // the device id, release or model version; "" for kNone
  std::string labels_json;
  TimeMs bucket_start = 0;
  int64_t count = 0;
  double sum = 0;
  double min = 0;
  double max = 0;
};

enum class AlertState { kFiring, kResolved };
std::string_view NameOf(AlertState state);
absl::StatusOr<AlertState> ParseAlertState(std::string_view name);

// A condition the alert evaluator found true at one evaluation.
struct AlertObservation {
  std::string name;       // the rule ("device_offline", ...)
  std::string device_id;  // "" for a fleet-wide alert
  std::string severity;   // "critical", "warning", "info"
  std::string site;
  double value = 0;      // what was measured
  double threshold = 0;  // what it was compared with
  std::string summary;   // one line for people
};

// An alert as stored: one row per episode; a condition that comes back
// after resolving opens a new row.
struct Alert {
  int64_t id = 0;
  std::string name;
  std::string device_id;
  std::string severity;
  AlertState state = AlertState::kFiring;
  std::string site;
  double value = 0;
  double threshold = 0;
  std::string summary;
  TimeMs started_at = 0;
  TimeMs resolved_at = 0;  // 0 while firing
  TimeMs updated_at = 0;
};

struct AlertFilter {
  std::optional<AlertState> state;
  std::string name;
  std::string device_id;
  std::string site;
  int64_t limit = 1000;  // newest first
};

struct TelemetryQuery {
  std::vector<std::string> device_ids;  // empty = every device
  std::string metric;
  // Half-open range [from, to) on device_time, or on hub_time (by_hub_time:
  // the moment taken on the hub's clock, what rollout gates use, immune to
  // device clocks).
  TimeMs from = 0;
  TimeMs to = INT64_MAX;
  bool by_hub_time = false;
  int64_t limit = 10000;  // samples, oldest first
};

// The operations a rollout step may perform while WithRolloutLock holds the
// rollout's lock, inside the same transaction. Valid only during the
// callback; not thread-safe.
class RolloutTransaction {
 public:
  virtual ~RolloutTransaction() = default;
  // The rollout as it was when the lock was taken (and after SaveRollout).
  virtual const Rollout& rollout() const = 0;
  // Writes state, current_wave, wave_started_at, gates_json, updated_at of
  // `rollout` (its id must be the locked rollout's; version is ignored) and
  // bumps the version.
  virtual absl::Status SaveRollout(const Rollout& rollout) = 0;
  // The rollout's devices ordered by wave then device id; nullopt = all
  // waves.
  virtual absl::StatusOr<std::vector<RolloutDevice>> ListDevices(std::optional<int64_t> wave) = 0;
  // Errors: NotFound (the device is not in this rollout).
  virtual absl::Status SetDeviceState(std::string_view device_id, RolloutDeviceState state,
                                      TimeMs now) = 0;
  // As Store::SetDesiredRelease, inside this transaction.
  virtual absl::StatusOr<int64_t> SetDesiredRelease(std::string_view device_id,
                                                    std::optional<std::string_view> release_id,
                                                    TimeMs now) = 0;
};

struct StoreOptions {
  // Connections per Store. For PostgreSQL count them against the server's
  // max_connections times the number of hub processes.
  int max_connections = 8;
  // How long an operation waits for a lock another connection or hub
  // process holds before failing with Unavailable.
  std::chrono::milliseconds lock_timeout{10000};
};

class Store {
 public:
  // Opens (creating if needed) the database `url` names (see the top of
  // this file) and migrates it to the current schema.
  // Errors: InvalidArgument (unknown URL scheme), NotFound (the SQLite
  // file's directory does not exist), PermissionDenied, Unavailable (cannot
  // connect), FailedPrecondition (the schema is newer than this hub knows:
  // upgrade outpost-hub), Unimplemented (postgres:// in a build without
  // OUTPOST_WITH_POSTGRES), errors of a failed migration (nothing of it is
  // applied).
  static absl::StatusOr<std::unique_ptr<Store>> Open(std::string_view url,
                                                     const StoreOptions& options = {});

  virtual ~Store() = default;

  // The URL without its password, for logs.
  virtual std::string Describe() const = 0;
  // A round trip to the database (readiness probes).
  virtual absl::Status Ping() = 0;
  // The highest applied migration.
  virtual absl::StatusOr<int64_t> SchemaVersion() = 0;

  // --- API tokens -------------------------------------------------------
  // Errors: AlreadyExists (token_hash taken).
  virtual absl::StatusOr<ApiToken> CreateApiToken(std::string_view name, Role role,
                                                  std::string_view token_hash, TimeMs now) = 0;
  // The unrevoked token with this hash. Errors: NotFound (unknown or
  // revoked: authentication fails the same way for both).
  virtual absl::StatusOr<ApiToken> FindApiTokenByHash(std::string_view token_hash) = 0;
  // Every token, revoked ones included, by id.
  virtual absl::StatusOr<std::vector<ApiToken>> ListApiTokens() = 0;
  // Idempotent. Errors: NotFound.
  virtual absl::Status RevokeApiToken(int64_t id) = 0;

  // --- Bootstrap tokens -------------------------------------------------
  // Stores `token` (id and created_at assigned: created_at = now).
  // Errors: AlreadyExists (token_hash taken), InvalidArgument (uses_left < 1).
  virtual absl::StatusOr<BootstrapToken> CreateBootstrapToken(const BootstrapToken& token,
                                                              TimeMs now) = 0;
  // Takes one use, atomically (one conditional UPDATE: race-free across hub
  // processes, a token with N uses admits exactly N). Returns the token
  // with uses_left after the decrement.
  // Errors: NotFound (unknown hash), FailedPrecondition (expired, or no
  // uses left; the message says which).
  virtual absl::StatusOr<BootstrapToken> ConsumeBootstrapToken(std::string_view token_hash,
                                                               TimeMs now) = 0;
  virtual absl::StatusOr<std::vector<BootstrapToken>> ListBootstrapTokens() = 0;
  // Sets uses_left to 0. Idempotent. Errors: NotFound.
  virtual absl::Status RevokeBootstrapToken(int64_t id) = 0;

  // --- Devices ----------------------------------------------------------
  // Enrollment, one transaction: consumes a use of the bootstrap token (as
  // ConsumeBootstrapToken) and creates `device` with the token's site (when
  // not empty) and labels (over the device's own). enrolled_at = now,
  // desired_generation = 1; status, desired and update fields start empty.
  // On any error the token use is not consumed.
  // Errors: those of ConsumeBootstrapToken and CreateDevice.
  virtual absl::StatusOr<Device> EnrollDevice(std::string_view bootstrap_token_hash,
                                              const Device& device, TimeMs now) = 0;
  // Creates a device without a token (an operator pre-registering one).
  // Errors: AlreadyExists (id or credential_hash taken).
  virtual absl::StatusOr<Device> CreateDevice(const Device& device, TimeMs now) = 0;
  // Errors: NotFound.
  virtual absl::StatusOr<Device> GetDevice(std::string_view id) = 0;
  // Any status; the caller refuses revoked/decommissioned devices.
  // Errors: NotFound.
  virtual absl::StatusOr<Device> GetDeviceByCredential(std::string_view credential_hash) = 0;
  // Records last_seen_at, the clock offset and (when set) the facts. A
  // contact older than the last one recorded (a delayed request) changes
  // nothing. Errors: NotFound.
  virtual absl::Status RecordDeviceContact(std::string_view id, const DeviceContact& contact) = 0;
  // Bumps desired_generation when site or labels change. Errors: NotFound.
  virtual absl::StatusOr<Device> UpdateDeviceAttributes(std::string_view id,
                                                        const DeviceAttributes& attributes) = 0;
  // Pins (release) or unpins (nullopt); bumps desired_generation on change.
  // Errors: NotFound (device or release).
  virtual absl::Status PinDevice(std::string_view id,
                                 std::optional<std::string_view> release_id) = 0;
  // Allowed: active -> revoked | decommissioned, revoked -> decommissioned;
  // setting the current status again is a no-op. Bumps desired_generation.
  // Errors: NotFound, FailedPrecondition (any other transition: a revoked
  // device re-enrolls instead).
  virtual absl::Status SetDeviceStatus(std::string_view id, DeviceStatus status) = 0;
  virtual absl::StatusOr<std::vector<Device>> ListDevices(const DeviceFilter& filter) = 0;
  virtual absl::StatusOr<int64_t> CountDevices(const DeviceFilter& filter) = 0;

  // --- Desired state ----------------------------------------------------
  // Assigns the release a device should run (nullopt clears it) and bumps
  // desired_generation, unless the device already has exactly this
  // assignment. Returns the generation after the call.
  // Errors: NotFound (device or release).
  virtual absl::StatusOr<int64_t> SetDesiredRelease(std::string_view device_id,
                                                    std::optional<std::string_view> release_id,
                                                    TimeMs now) = 0;

  // --- Releases ---------------------------------------------------------
  // Errors: AlreadyExists (the name, or the bundle_sha256, is taken).
  virtual absl::Status InsertRelease(const Release& release) = 0;
  // Errors: NotFound.
  virtual absl::StatusOr<Release> GetRelease(std::string_view id) = 0;
  // The release whose bundle this is (the artifact download path serves
  // only bundles of known releases). Errors: NotFound.
  virtual absl::StatusOr<Release> GetReleaseByBundle(std::string_view bundle_sha256) = 0;
  // Newest (highest sequence) first, at most `limit` (0 = all).
  virtual absl::StatusOr<std::vector<Release>> ListReleases(bool include_yanked,
                                                            int64_t limit = 0) = 0;
  // A yanked release is not offered any more: new rollouts of it are
  // refused. Idempotent. Errors: NotFound.
  virtual absl::Status YankRelease(std::string_view id) = 0;

  // --- Device reports (update history) ----------------------------------
  // Stores the event and, when it is new, applies its status and rollout
  // progress (see DeviceReport), all in one transaction. A duplicate
  // (device_id, seq) changes nothing and returns kDuplicate: acknowledge it.
  // Errors: NotFound (device; or the device is not in report.rollout),
  // InvalidArgument (seq < 1).
  virtual absl::StatusOr<InsertResult> RecordDeviceReport(const DeviceReport& report) = 0;
  // Newest first: seq < before_seq (0 = from the newest), at most `limit`.
  virtual absl::StatusOr<std::vector<DeviceEvent>> ListDeviceEvents(std::string_view device_id,
                                                                    int64_t before_seq = 0,
                                                                    int64_t limit = 100) = 0;

  // --- Configuration layers ---------------------------------------------
  // Creates or replaces a layer and bumps the configuration change counter.
  // With expected_version, a compare-and-swap: 0 = the layer must not
  // exist yet, N = its version must be N.
  // Errors: Aborted (expected_version does not match: reload and retry),
  // InvalidArgument (fleet with a key, or another scope without one).
  virtual absl::StatusOr<ConfigLayer> PutConfigLayer(ConfigScope scope, std::string_view scope_key,
                                                     std::string_view yaml,
                                                     std::optional<int64_t> expected_version,
                                                     TimeMs now) = 0;
  // Errors: NotFound.
  virtual absl::StatusOr<ConfigLayer> GetConfigLayer(ConfigScope scope,
                                                     std::string_view scope_key) = 0;
  // Bumps the change counter. Errors: NotFound, Aborted (as PutConfigLayer).
  virtual absl::Status DeleteConfigLayer(ConfigScope scope, std::string_view scope_key,
                                         std::optional<int64_t> expected_version) = 0;
  // Every layer, in merge order (scope, then key).
  virtual absl::StatusOr<std::vector<ConfigLayer>> ListConfigLayers() = 0;
  // The layers that apply to `target`, in merge order: fleet, its site, its
  // groups (in target.groups order), the device. Missing layers are skipped.
  virtual absl::StatusOr<std::vector<ConfigLayer>> ListConfigLayersFor(
      const ConfigTarget& target) = 0;
  // The configuration change counter: changes whenever any layer does.
  virtual absl::StatusOr<int64_t> ConfigChangeSeq() = 0;

  // --- Rollouts ---------------------------------------------------------
  // Creates the rollout (id assigned, version 1, created_at = updated_at =
  // now) with its device membership (rollout_id and updated_at of `devices`
  // are filled in) in one transaction.
  // Errors: NotFound (release), FailedPrecondition (release yanked; a
  // device does not exist), AlreadyExists (a device listed twice).
  virtual absl::StatusOr<Rollout> CreateRollout(const Rollout& rollout,
                                                const std::vector<RolloutDevice>& devices,
                                                TimeMs now) = 0;
  // Errors: NotFound.
  virtual absl::StatusOr<Rollout> GetRollout(int64_t id) = 0;
  // Newest first; `states` empty = any state.
  virtual absl::StatusOr<std::vector<Rollout>> ListRollouts(
      const std::vector<RolloutState>& states) = 0;
  // Compare-and-swap: writes state, current_wave, wave_started_at,
  // gates_json, updated_at of `rollout` if its stored version is still
  // expected_version, and returns it with the new version.
  // Errors: NotFound, Aborted (changed meanwhile: reload and retry).
  virtual absl::StatusOr<Rollout> UpdateRollout(const Rollout& rollout,
                                                int64_t expected_version) = 0;
  // Runs `fn` in one transaction holding rollout `id`'s lock (PostgreSQL:
  // SELECT ... FOR UPDATE on its row; SQLite: the database write lock), so
  // no other hub process runs a step of the same rollout at the same time,
  // and the step's writes commit together or not at all. fn's error rolls
  // everything back and is returned. fn may run more than once when the
  // database resolves a deadlock, so it must act only through `tx` and its
  // own local state. fn must not call this Store (it would wait for the
  // lock it holds); keep it short (SQLite: all writers wait for it).
  // Errors: NotFound, Unavailable (lock_timeout), fn's.
  virtual absl::Status WithRolloutLock(int64_t id,
                                       absl::FunctionRef<absl::Status(RolloutTransaction&)> fn) = 0;
  // The rollout's devices by wave then device id; nullopt = every wave.
  virtual absl::StatusOr<std::vector<RolloutDevice>> ListRolloutDevices(
      int64_t rollout_id, std::optional<int64_t> wave = std::nullopt) = 0;
  // Every rollout a device belongs to, newest rollout first.
  virtual absl::StatusOr<std::vector<RolloutDevice>> ListDeviceRollouts(
      std::string_view device_id) = 0;

  // --- Telemetry --------------------------------------------------------
  // Stores the batch and its samples atomically. A batch_id already stored
  // for this device returns kDuplicate and stores nothing.
  // Errors: NotFound (device), InvalidArgument (empty batch_id or metric,
  // a non-finite value).
  virtual absl::StatusOr<InsertResult> InsertTelemetryBatch(const TelemetryBatch& batch) = 0;
  // Oldest first (by the queried time axis, then device id), at most
  // query.limit. Errors: InvalidArgument (empty metric).
  virtual absl::StatusOr<std::vector<StoredSample>> QueryTelemetry(const TelemetryQuery& query) = 0;
  // Retention: deletes samples and batch records that arrived before
  // `cutoff` (hub time). Returns the number of samples deleted. A batch re-sent
  // after its record expired is stored again.
  virtual absl::StatusOr<int64_t> DeleteTelemetryBefore(TimeMs cutoff) = 0;

  // Downsampling. Folds every sample that arrived (hub time) from the rollup
  // watermark up to `up_to` into count/sum/min/max buckets of each
  // resolution in `resolutions_ms` (bucketed on device_time, per device,
  // metric, labels, release and model version), and moves the watermark to
  // up_to, in one transaction: each sample is counted exactly once even
  // with several hub processes (the watermark row is locked). A sample
  // that arrives late (a device's offline backlog) lands in its old
  // bucket. The first call starts from the oldest sample. Returns the
  // number of samples folded. up_to at or before the watermark is a no-op.
  // Errors: InvalidArgument (a resolution < 1 s).
  virtual absl::StatusOr<int64_t> RollUpTelemetry(const std::vector<int64_t>& resolutions_ms,
                                                  TimeMs up_to) = 0;
  // The hub time up to which samples are folded (0 before the first call).
  virtual absl::StatusOr<TimeMs> RollupWatermark() = 0;
  // Retention of one rollup resolution: deletes buckets starting before
  // `cutoff`. Returns the number of buckets deleted.
  virtual absl::StatusOr<int64_t> DeleteRollupsBefore(int64_t resolution_ms, TimeMs cutoff) = 0;
  // Points of a metric, from raw samples or a rollup (SeriesQuery).
  // Errors: InvalidArgument (empty metric, step_ms < 1, a step that is not
  // a multiple of the resolution, too many devices).
  virtual absl::StatusOr<std::vector<SeriesPoint>> QueryTelemetrySeries(
      const SeriesQuery& query) = 0;
  // Hub time of each device's newest telemetry batch still retained.
  virtual absl::StatusOr<std::map<std::string, TimeMs>> LastTelemetryByDevice() = 0;

  // --- Alerts -----------------------------------------------------------
  // Records one evaluation of the rules named in `evaluated`, in one
  // transaction serialised across hub processes: each observation updates
  // its firing alert (value, threshold, summary, severity, updated_at) or
  // opens a new one (started_at = now); every firing alert of an evaluated
  // rule with no observation is resolved (resolved_at = now). Alerts of
  // rules not in `evaluated` are left alone. Returns the alerts that
  // changed state (opened or resolved), to notify about.
  // Errors: InvalidArgument (an observation of a rule not in `evaluated`,
  // an empty name or severity, a non-finite value).
  virtual absl::StatusOr<std::vector<Alert>> RecordAlertEvaluation(
      const std::vector<std::string>& evaluated, const std::vector<AlertObservation>& observations,
      TimeMs now) = 0;
  virtual absl::StatusOr<std::vector<Alert>> ListAlerts(const AlertFilter& filter) = 0;
  // Retention: deletes alerts resolved before `cutoff`. Returns how many.
  virtual absl::StatusOr<int64_t> DeleteAlertsResolvedBefore(TimeMs cutoff) = 0;
};

}  // namespace outpost::hub
