// The agent's side of the device API (docs/device-api.md): enrolment,
// desired state, status reports, and the hub as an UpdateSource.
//
// Every call is initiated by the device (outbound only). Each exchange
// measures the clock offset to the hub (hub time minus the midpoint of the
// device's send and receive times), so the hub can correct device
// timestamps.
//
// Credentials: the bootstrap file (hub URL, a bootstrap token, the hub's CA
// certificate) is used once; enrolment leaves <state>/hub/credential.json
// (0600: device id and the per-device token) and <state>/hub/ca.pem, and
// every later start uses those. A 401 from the hub means the device was
// revoked or decommissioned: calls return Unauthenticated with a message
// that says so, and the agent keeps serving what it has.
//
// Thread safety: a HubClient is used by one thread; the agent makes one per
// thread (update loop, reporter). HubConnection is a plain value.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "agent/fetcher.h"
#include "agent/updater.h"
#include "common/http_client.h"
#include "common/status.h"

namespace outpost::agent {

// What a device needs to talk to its hub.
struct HubConnection {
  std::string hub_url;            // "https://hub.example:8443" (no trailing slash)
  std::filesystem::path ca_file;  // the pinned CA; empty: system store
  std::string device_id;
  std::string token;  // per-device credential (Authorization: Bearer)
};

// The bootstrap file, JSON (written by `outpost-hub admin bootstrap`):
//   {"hub_url": "...", "token": "...", "ca_pem": "-----BEGIN ...",
//    "device_id": "optional-name", "site": "optional", "labels": {...}}
struct Bootstrap {
  std::string hub_url;
  std::string token;
  std::string ca_pem;  // empty: trust the system store (a public CA)
  std::string device_id;
  std::string site;
  nlohmann::json labels = nlohmann::json::object();
};
// Errors: NotFound / PermissionDenied reading it, InvalidArgument naming the
// field when it is malformed.
absl::StatusOr<Bootstrap> LoadBootstrap(const std::filesystem::path& path);

// Loads <state>/hub/credential.json when the device is enrolled; otherwise
// enrols with `bootstrap_file` (required then) sending `facts` (make, model,
// serial, arch, accelerators, versions) and stores the credential.
// Errors: FailedPrecondition when not enrolled and no bootstrap file is
// given; PermissionDenied when the hub refuses the bootstrap token
// (expired, used up, unknown); Unavailable when the hub cannot be reached
// (retry later); others from I/O.
absl::StatusOr<HubConnection> EnsureEnrolled(const std::filesystem::path& state_dir,
                                             const std::filesystem::path& bootstrap_file,
                                             const nlohmann::json& facts);

// A daily maintenance window in the device's local time, seconds since
// local midnight; end < start wraps past midnight ("22:00" to "04:00").
struct InstallWindow {
  int start_s = 0;
  int end_s = 0;
  std::string text;  // "02:00-04:00" for logs
  // Whether `seconds_of_day` (local) falls inside the window.
  bool Contains(int seconds_of_day) const;
};
// "HH:MM" or "HH:MM:SS" -> seconds since midnight; nullopt when malformed.
std::optional<int> ParseTimeOfDay(std::string_view text);

struct DesiredRelease {
  std::string name;
  uint64_t sequence = 0;
  std::string sha256;
  uint64_t size = 0;
  std::string url;  // absolute
  // Install only inside this window (download at once); nullopt: any time.
  std::optional<InstallWindow> window;
};

struct DesiredState {
  std::string etag;
  uint64_t generation = 0;
  std::optional<DesiredRelease> release;             // nullopt: keep what runs
  nlohmann::json config = nlohmann::json::object();  // effective configuration
  int poll_interval_s = 30;
};

class HubClient {
 public:
  static absl::StatusOr<std::unique_ptr<HubClient>> Create(HubConnection connection);

  // GET desired state. Sends the last ETag and holds the request at the hub
  // for up to `wait` (long poll). nullopt: unchanged since the last answer
  // (304). Errors: Unauthenticated (revoked), Unavailable, DeadlineExceeded.
  absl::StatusOr<std::optional<DesiredState>> GetDesired(std::chrono::seconds wait);
  // The last desired state received (nullptr before the first).
  const DesiredState* last_desired() const { return last_.has_value() ? &*last_ : nullptr; }

  // POSTs a JSON body to a device API path ("/status", "/telemetry") and
  // returns the hub's JSON answer. Errors as GetDesired, InvalidArgument
  // when the hub refuses the body.
  // Bodies over 512 bytes travel zstd-compressed (Content-Encoding: zstd):
  // telemetry is most of an idle device's traffic.
  absl::StatusOr<nlohmann::json> Post(std::string_view path, const nlohmann::json& body);

  // Hub clock minus device clock in milliseconds, from the last exchange
  // (0 before the first).
  int64_t clock_offset_ms() const { return clock_offset_ms_.load(); }
  const HubConnection& connection() const { return connection_; }

 private:
  HubClient(HubConnection connection, std::unique_ptr<HttpClient> http);
  absl::StatusOr<HttpResponse> Exchange(HttpRequest request, std::string_view what);

  const HubConnection connection_;
  std::unique_ptr<HttpClient> http_;
  std::optional<DesiredState> last_;
  std::atomic<int64_t> clock_offset_ms_{0};
};

// Progress of the download in flight, shared with the reporter thread.
struct DownloadProgress {
  std::atomic<uint64_t> bytes_done{0};
  std::atomic<uint64_t> bytes_total{0};
};

// The hub as an update source: offers the desired release ("sha256:<hex>")
// unless it was handled; fetches it from the hub's artifact store with
// Range resume, the pinned CA and the device's token. A release with a
// maintenance window is downloaded at once but offered only inside the
// window, in the device's local time.
class HubSource : public UpdateSource {
 public:
  // `downloads_dir`: where a bundle waiting for its maintenance window is
  // fetched ahead of time (the updater's downloads folder).
  HubSource(std::unique_ptr<HubClient> client, std::chrono::seconds long_poll,
            FetchOptions fetch_options, std::shared_ptr<DownloadProgress> progress,
            std::filesystem::path downloads_dir);
  absl::StatusOr<std::optional<UpdateOffer>> Next(const std::vector<std::string>& handled) override;
  absl::Status Fetch(const UpdateOffer& offer, const std::filesystem::path& dest) override;
  bool Authoritative() const override { return true; }

 private:
  std::unique_ptr<HubClient> client_;
  const std::chrono::seconds long_poll_;
  FetchOptions fetch_options_;
  std::shared_ptr<DownloadProgress> progress_;
  const std::filesystem::path downloads_dir_;
  std::string waiting_logged_;  // offer id whose wait for its window was logged
};

// Ships <state>/history.jsonl to the hub: every transition line with a seq
// above the last one the hub acknowledged (kept in <state>/hub/reported),
// oldest first, in batches, with the agent's current state and download
// progress. The hub de-duplicates on seq, so a report lost after the hub
// stored it is harmless. While the hub is unreachable the history simply
// waits on disk.
class StatusReporter {
 public:
  StatusReporter(std::filesystem::path state_dir, std::unique_ptr<HubClient> client,
                 std::shared_ptr<DownloadProgress> progress);
  // One report: sends the transitions not yet acknowledged, with the
  // current state and download progress. Sends nothing when there is no
  // new transition and the download progress did not move, unless
  // `force`. Errors as HubClient::Post; nothing is lost on error.
  absl::Status ReportOnce(bool force = false);
  uint64_t acknowledged_seq() const { return acknowledged_; }
  HubClient& client() { return *client_; }

 private:
  const std::filesystem::path state_dir_;
  std::unique_ptr<HubClient> client_;
  std::shared_ptr<DownloadProgress> progress_;
  uint64_t acknowledged_ = 0;
  uint64_t last_progress_reported_ = 0;
};

}  // namespace outpost::agent
