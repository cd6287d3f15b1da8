// outpost-agent's link to its hub (docs/device-api.md): enrols once, then
// the hub is the update source (desired state by long poll), and a
// reporter thread ships the update history and heartbeats (status every
// report_interval; telemetry collected every telemetry_interval into the
// on-disk queue, which is shipped whenever the hub is reachable).
//
// Thread safety: Start, TakeSource and Stop from the agent's main thread;
// the reporter runs on its own thread with its own HubClient.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "agent/fetcher.h"
#include "agent/hub_client.h"
#include "agent/telemetry_queue.h"
#include "agent/updater.h"
#include "bundle/bundle.h"
#include "common/status.h"

namespace outpost::agent {

struct HubLinkOptions {
  std::filesystem::path state_dir;
  std::filesystem::path bootstrap_file;  // needed until the device is enrolled
  std::chrono::seconds long_poll{240};
  std::chrono::milliseconds report_interval{10000};
  std::chrono::milliseconds telemetry_interval{600000};
  // Store-and-forward (docs/agent.md "Telemetry queue"): bounds of
  // <state>/telemetry.db (its path is set by HubLink), the cap of the
  // exponential backoff between failed sends, and the temperature from
  // which an `overheating` event is queued.
  TelemetryQueueOptions telemetry_queue;
  std::chrono::milliseconds telemetry_retry_max{300000};
  double overheat_c = 85;
  FetchOptions fetch;              // retries, backoff, stall timeout, cancel
  std::function<bool()> stopping;  // true once the agent is stopping
};

// Whether this agent talks to a hub: a bootstrap file was given, or the
// device enrolled before.
bool HubConfigured(const std::filesystem::path& state_dir,
                   const std::filesystem::path& bootstrap_file);

// What the device tells the hub about itself at enrolment: architecture,
// accelerators, agent version, hostname, and make/model/serial from DMI
// when the machine exposes them.
nlohmann::json DeviceFactsJson(const bundle::DeviceFacts& facts);

class HubLink {
 public:
  // Enrols if needed (retrying with backoff while the hub is unreachable,
  // until `stopping`), then starts the reporter thread. Errors: those of
  // EnsureEnrolled other than Unavailable; Cancelled when stopped first.
  static absl::StatusOr<std::unique_ptr<HubLink>> Start(HubLinkOptions options,
                                                        const nlohmann::json& facts);
  ~HubLink();  // Stop()

  // The hub as the updater's source (once).
  std::unique_ptr<UpdateSource> TakeSource();
  // Wakes the reporter (a transition happened); cheap, any thread.
  void Nudge();
  // Sends a last report and joins the reporter.
  void Stop();

 private:
  HubLink(HubLinkOptions options, HubConnection connection);
  void ReporterLoop();
  // Queues the alert-worthy events found since the last call: update
  // failures and crash loops (history.jsonl), overheating (`samples`).
  void QueueEvents(TelemetryQueue& queue, const nlohmann::json& samples, int64_t now_ms);
  // Sends queued batches until the queue is empty, a send fails (then
  // backs off) or the agent stops.
  void ShipTelemetry(TelemetryQueue& queue, HubClient& client);

  const HubLinkOptions options_;
  const HubConnection connection_;
  std::shared_ptr<DownloadProgress> progress_ = std::make_shared<DownloadProgress>();
  std::unique_ptr<UpdateSource> source_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;    // guarded by mu_
  bool nudged_ = false;  // guarded by mu_
  std::thread reporter_;
  // Reporter thread only.
  bool overheated_ = false;
  bool ship_failing_ = false;
  std::chrono::milliseconds ship_backoff_{0};
  std::chrono::steady_clock::time_point next_ship_{};
};

}  // namespace outpost::agent
