// outpost-hub: the fleet's control plane (DESIGN.md "outpost-hub").
//
// One Hub serves the device API (/api/v1/device/..., docs/device-api.md)
// and the admin API (/api/v1/admin/...) on one HTTPS listener, keeps all
// state in a Store (SQLite by default, PostgreSQL for several replicas) and
// release bundles in a BlobStore, and runs the rollout engine.
//
// Handling is stateless apart from long polls parked in memory: any hub
// process sharing the database may serve any request. A change made by
// this process wakes its parked polls at once; a change made by another
// replica is seen by the periodic re-check (HubOptions::long_poll_recheck).
//
// Threads: the HTTP server's io threads parse and route; store work runs
// on a pool of `worker_threads` (SQLite and PostgreSQL calls block); the
// rollout engine and the long-poll re-check run on their own threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "hub/alerts.h"
#include "hub/store.h"
#include "hub/telemetry_retention.h"
#include "hub/webhook.h"

namespace outpost::hub {

struct HubOptions {
  // Holds hub.db (the SQLite default), blobs/, tls/ and trusted-keys/.
  std::filesystem::path data_dir;
  // Database URL (store.h); empty: sqlite at <data_dir>/hub.db.
  std::string db_url;

  std::string address = "127.0.0.1";
  uint16_t port = 7443;  // 0: any free port (tests)
  // TLS: a certificate and key given by the operator, or (both empty) the
  // hub's own CA and server certificate under <data_dir>/tls, covering
  // `tls_names` plus loopback.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::vector<std::string> tls_names;
  // Plain HTTP, allowed only on a loopback address (a warning is logged).
  bool insecure_http = false;
  // The URL devices reach the hub at, written into bootstrap files.
  // Empty: https://<address>:<port>.
  std::string public_url;

  int worker_threads = 8;
  // Longest a desired-state poll is held (a device's `wait` is capped).
  std::chrono::seconds max_long_poll{300};
  // How often parked polls are re-evaluated against the database (changes
  // made by other hub replicas).
  std::chrono::milliseconds long_poll_recheck{5000};
  // Poll interval suggested to devices.
  std::chrono::seconds device_poll_interval{120};
  // Rollout engine period.
  std::chrono::milliseconds rollout_tick{1000};
  // Largest release bundle accepted by a push.
  uint64_t max_bundle_bytes = 4ull << 30;
  StoreOptions store;
  // The hub's clock, in ms since the Unix epoch; empty: the system clock.
  // Tests move it forward to cross time windows (offline devices, soaks).
  std::function<TimeMs()> clock;
  // The dashboard's built files (web/ bundled by the `dashboard` target).
  // Empty: `web` next to the executable, else ../share/outpost/web; when
  // neither exists the hub serves its API without a dashboard. A folder
  // given here must exist.
  std::filesystem::path web_dir;
  // Telemetry rollups and retention, and how often that task runs.
  TelemetryRetention telemetry_retention;
  std::chrono::milliseconds telemetry_maintenance_interval{60'000};
  // Alert rules (docs/alerts.md), how often they are evaluated, and the
  // webhook alert changes go to (url empty: none).
  AlertRules alert_rules;
  std::chrono::milliseconds alert_interval{30'000};
  WebhookOptions alert_webhook;
};

class Hub {
 public:
  // Opens the store (migrating it), the blob store and the trusted keys,
  // prepares TLS and binds the listener. Serves nothing until Start().
  // Errors: those of Store::Open; InvalidArgument for bad options (plain
  // HTTP on a non-loopback address, TLS files); Unavailable (bind failed).
  static absl::StatusOr<std::unique_ptr<Hub>> Create(HubOptions options);
  ~Hub();  // Stop()

  void Start();
  // Stops the rollout engine, answers parked polls, stops the listener.
  void Stop();

  uint16_t port() const;
  // The URL devices and the CLI use (public_url or the listener's).
  std::string url() const;
  bool tls() const;
  // The CA certificate devices pin ("" when the operator's own certificate
  // is used: devices then trust the system store).
  std::string ca_file() const;
  Store& store();
  // Evaluates the alert rules once, now (tests; the hub also does it every
  // HubOptions::alert_interval).
  absl::Status EvaluateAlerts();
  // Every registered route, for the OpenAPI check.
  struct RouteInfo {
    std::string method;   // "GET"
    std::string pattern;  // "/api/v1/admin/devices/{id}"
    std::string access;   // "public", "device", "viewer", "operator", "admin"
  };
  std::vector<RouteInfo> Routes() const;

  struct Impl;

 private:
  explicit Hub(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Secrets: 32 random bytes, base64url, after a prefix that says what the
// secret is for ("oat_" admin API token, "obt_" bootstrap token, "odc_"
// device credential). Only their SHA-256 hex is stored.
std::string NewSecret(std::string_view prefix);
std::string HashSecret(std::string_view secret);

}  // namespace outpost::hub
