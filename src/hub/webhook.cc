#include "hub/webhook.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/http_client.h"
#include "hub/alerts.h"

namespace outpost::hub {
namespace {

using json = nlohmann::json;

std::string SlackLine(const Alert& a) {
  const bool firing = a.state == AlertState::kFiring;
  std::string_view mark = !firing                    ? ":large_green_circle:"
                          : a.severity == "critical" ? ":red_circle:"
                                                     : ":large_orange_circle:";
  return StrCat(mark, " [", firing ? "FIRING" : "RESOLVED", "] ", a.name, " ", a.severity,
                a.device_id.empty() ? "" : StrCat(" ", a.device_id),
                a.site.empty() ? "" : StrCat(" (site ", a.site, ")"), ": ", a.summary);
}

}  // namespace

absl::StatusOr<WebhookFormat> ParseWebhookFormat(std::string_view name) {
  if (name == "json") return WebhookFormat::kJson;
  if (name == "slack") return WebhookFormat::kSlack;
  return absl::InvalidArgumentError(
      StrCat("unknown webhook format \"", name.substr(0, 40), "\"; expected json or slack"));
}

json WebhookPayload(const std::vector<Alert>& alerts, WebhookFormat format,
                    std::string_view hub_url) {
  if (format == WebhookFormat::kSlack) {
    std::string text = StrCat("outpost-hub ", hub_url, ":");
    for (const Alert& a : alerts) StrAppend(&text, "\n", SlackLine(a));
    return {{"text", text}};
  }
  json list = json::array();
  for (const Alert& a : alerts) list.push_back(AlertJson(a));
  return {{"source", "outpost-hub"}, {"hub", hub_url}, {"alerts", std::move(list)}};
}

absl::StatusOr<std::unique_ptr<WebhookNotifier>> WebhookNotifier::Create(WebhookOptions options) {
  if (!options.url.starts_with("http://") && !options.url.starts_with("https://")) {
    return absl::InvalidArgumentError(
        StrCat("alert webhook URL \"", options.url.substr(0, 200), "\" is not http(s)://"));
  }
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("alert webhook attempts must be at least 1");
  }
  return std::unique_ptr<WebhookNotifier>(new WebhookNotifier(std::move(options)));
}

WebhookNotifier::WebhookNotifier(WebhookOptions options) : options_(std::move(options)) {}

WebhookNotifier::~WebhookNotifier() { Stop(); }

void WebhookNotifier::Start() {
  if (thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stopping_ = false;
  }
  thread_ = std::thread([this] { Loop(); });
}

void WebhookNotifier::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void WebhookNotifier::Enqueue(std::vector<Alert> alerts) {
  {
    std::lock_guard lock(mu_);
    if (queue_.size() >= options_.max_queued) {
      queue_.pop_front();
      ++counters_.dropped;
      spdlog::warn("alerts: webhook queue full ({} batches); dropped the oldest",
                   options_.max_queued);
    }
    queue_.push_back(std::move(alerts));
  }
  cv_.notify_all();
}

WebhookNotifier::Counters WebhookNotifier::counters() const {
  std::lock_guard lock(mu_);
  return counters_;
}

void WebhookNotifier::Loop() {
  std::unique_ptr<HttpClient> client;
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    std::vector<Alert> batch = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    HttpRequest request;
    request.method = "POST";
    request.url = options_.url;
    request.content_type = "application/json";
    request.body = WebhookPayload(batch, options_.format, options_.hub_url).dump();
    request.timeout = options_.timeout;
    std::chrono::milliseconds backoff = options_.initial_backoff;
    bool delivered = false, gave_up = false;
    std::string last_error;
    for (int attempt = 1; attempt <= options_.max_attempts; ++attempt) {
      if (!client) {
        absl::StatusOr<std::unique_ptr<HttpClient>> created =
            HttpClient::Create({.ca_file = options_.ca_file, .timeout = options_.timeout});
        if (created.ok()) client = *std::move(created);
        if (!created.ok()) last_error = std::string(MessageOf(created.status()));
      }
      if (client) {
        absl::StatusOr<HttpResponse> response = client->Send(request);
        if (response.ok() && response->status >= 200 && response->status < 300) {
          delivered = true;
          break;
        }
        if (response.ok()) {
          last_error = StrCat("HTTP ", response->status, " ", response->ErrorMessage());
          // The receiver refuses this payload: sending it again will not help.
          if (response->status < 500 && response->status != 429 && response->status != 408) {
            gave_up = true;
            break;
          }
        } else {
          last_error = std::string(MessageOf(response.status()));
          client.reset();  // a fresh connection next time
        }
      }
      if (attempt == options_.max_attempts) break;
      lock.lock();
      ++counters_.retried;
      bool stop = cv_.wait_for(lock, backoff, [this] { return stopping_; });
      lock.unlock();
      if (stop) return;
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
    lock.lock();
    if (delivered) {
      ++counters_.delivered;
    } else {
      ++counters_.failed;
      spdlog::error("alerts: webhook {} refused {} alert change(s){}: {}", options_.url,
                    batch.size(), gave_up ? "" : " after every retry", last_error);
    }
  }
}

}  // namespace outpost::hub
