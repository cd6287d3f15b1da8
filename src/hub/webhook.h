// Sends alert changes to a webhook: one JSON POST per evaluation that
// changed something, retried with exponential backoff while the receiver
// is unreachable or answers 5xx/429 (docs/alerts.md "Webhook").
//
// Payloads:
//   json   {"source": "outpost-hub", "hub": URL, "alerts": [AlertJson...]}
//   slack  {"text": "..."}: one line per alert, what Slack and Mattermost
//          incoming webhooks (and most chat tools) accept
//
// Delivery is at least once while the hub runs: the queue is in memory
// (bounded; the oldest batch is dropped and counted when it overflows); an
// alert's state itself is in the store, so a hub restart loses at most
// undelivered notifications, never alerts.
//
// Thread safety: Enqueue and the counters from any thread; Start/Stop from
// one. Deliveries run on the notifier's own thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "hub/store.h"

namespace outpost::hub {

enum class WebhookFormat { kJson, kSlack };
// "json", "slack".
absl::StatusOr<WebhookFormat> ParseWebhookFormat(std::string_view name);

struct WebhookOptions {
  std::string url;  // http:// or https://
  WebhookFormat format = WebhookFormat::kJson;
  std::string ca_file;   // PEM to trust instead of the system store
  std::string hub_url;   // named in the payload
  int max_attempts = 8;  // per batch, the first included
  std::chrono::milliseconds initial_backoff{1000};
  std::chrono::milliseconds max_backoff{60000};
  std::chrono::milliseconds timeout{10000};  // per attempt
  size_t max_queued = 1000;                  // batches
};

// The request body for `alerts` in `format`.
nlohmann::json WebhookPayload(const std::vector<Alert>& alerts, WebhookFormat format,
                              std::string_view hub_url);

class WebhookNotifier {
 public:
  // Errors: InvalidArgument (URL not http(s), max_attempts < 1).
  static absl::StatusOr<std::unique_ptr<WebhookNotifier>> Create(WebhookOptions options);
  ~WebhookNotifier();  // Stop()

  void Start();
  // Stops at once: a delivery in flight finishes its attempt, queued ones
  // are dropped.
  void Stop();
  void Enqueue(std::vector<Alert> alerts);

  struct Counters {
    int64_t delivered = 0;  // batches the receiver accepted (2xx)
    int64_t retried = 0;    // attempts that failed and were retried
    int64_t failed = 0;     // batches given up on (4xx, or out of attempts)
    int64_t dropped = 0;    // batches dropped by a full queue
  };
  Counters counters() const;
  const WebhookOptions& options() const { return options_; }

 private:
  explicit WebhookNotifier(WebhookOptions options);
  void Loop();

  const WebhookOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::vector<Alert>> queue_;  // guarded by mu_
  bool stopping_ = false;                 // guarded by mu_
  Counters counters_;                     // guarded by mu_
  std::thread thread_;
};

}  // namespace outpost::hub
