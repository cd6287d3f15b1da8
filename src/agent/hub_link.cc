#include "agent/hub_link.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <random>

#include "agent/telemetry.h"
#include "common/atomic_file.h"
#include "common/fault_injection.h"

namespace outpost::agent {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string ReadTrimmed(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == ' ' || line.back() == '\n')) line.pop_back();
  return line;
}

int64_t NowMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

bool HubConfigured(const fs::path& state_dir, const fs::path& bootstrap_file) {
  std::error_code ec;
  return !bootstrap_file.empty() || fs::exists(state_dir / "hub" / "credential.json", ec);
}

json DeviceFactsJson(const bundle::DeviceFacts& facts) {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  json j = {{"arch", facts.arch},
            {"accelerators", facts.accelerators},
            {"agent_version", facts.agent_version},
            {"hostname", host}};
  const fs::path dmi = "/sys/class/dmi/id";
  for (const auto& [key, file] :
       {std::pair{"make", "sys_vendor"}, std::pair{"model", "product_name"},
        std::pair{"serial", "product_serial"}}) {
    std::string value = ReadTrimmed(dmi / file);
    if (!value.empty()) j[key] = value;
  }
  return j;
}

absl::StatusOr<std::unique_ptr<HubLink>> HubLink::Start(HubLinkOptions options, const json& facts) {
  std::chrono::milliseconds backoff(1000);
  std::mt19937_64 rng(std::random_device{}());
  while (true) {
    absl::StatusOr<HubConnection> connection =
        EnsureEnrolled(options.state_dir, options.bootstrap_file, facts);
    if (connection.ok()) {
      auto link = std::unique_ptr<HubLink>(new HubLink(std::move(options), *std::move(connection)));
      return link;
    }
    if (!absl::IsUnavailable(connection.status()) &&
        !absl::IsDeadlineExceeded(connection.status())) {
      return connection.status();
    }
    spdlog::warn("hub: cannot enrol yet ({}); retrying in up to {} s",
                 MessageOf(connection.status()), backoff.count() / 1000.0);
    auto sleep = std::chrono::milliseconds(
        std::uniform_int_distribution<int64_t>(backoff.count() / 2, backoff.count())(rng));
    for (auto until = Clock::now() + sleep; Clock::now() < until;) {
      if (options.stopping && options.stopping()) return absl::CancelledError("stopped");
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    backoff = std::min(backoff * 2, std::chrono::milliseconds(60000));
  }
}

HubLink::HubLink(HubLinkOptions options, HubConnection connection)
    : options_(std::move(options)), connection_(std::move(connection)) {
  absl::StatusOr<std::unique_ptr<HubClient>> client = HubClient::Create(connection_);
  if (client.ok()) {
    source_ = std::make_unique<HubSource>(*std::move(client), options_.long_poll, options_.fetch,
                                          progress_, options_.state_dir / "downloads");
  }
  reporter_ = std::thread([this] { ReporterLoop(); });
}

HubLink::~HubLink() { Stop(); }

std::unique_ptr<UpdateSource> HubLink::TakeSource() { return std::move(source_); }

void HubLink::Nudge() {
  {
    std::lock_guard lock(mu_);
    nudged_ = true;
  }
  cv_.notify_one();
}

void HubLink::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stop_) {
      if (reporter_.joinable()) reporter_.join();
      return;
    }
    stop_ = true;
  }
  cv_.notify_one();
  if (reporter_.joinable()) reporter_.join();
}

void HubLink::QueueEvents(TelemetryQueue& queue, const json& samples, int64_t now_ms) {
  json events = json::array();
  // Overheating: once per crossing of the threshold.
  for (const json& sample : samples) {
    if (sample.value("metric", "") != "temperature_c") continue;
    const double celsius = sample.value("value", 0.0);
    if (celsius >= options_.overheat_c && !overheated_) {
      events.push_back({{"metric", "overheating"},
                        {"value", celsius},
                        {"labels", {{"threshold_c", StrCat(options_.overheat_c)}}}});
    }
    overheated_ = celsius >= options_.overheat_c;
  }
  // Update failures and crash loops, from the transitions not seen yet.
  absl::StatusOr<int64_t> seen = queue.GetCounter("history_seq");
  if (seen.ok()) {
    int64_t last = *seen;
    std::ifstream history(options_.state_dir / "history.jsonl");
    std::string line;
    while (std::getline(history, line)) {
      json event = json::parse(line, nullptr, false);
      if (!event.is_object()) continue;
      const int64_t seq = event.value("seq", int64_t{0});
      if (seq <= *seen) continue;
      last = std::max(last, seq);
      if (event.value("state", "") != "rolled_back") continue;
      const std::string reason = event.value("reason", "");
      json labels = {{"release", event.value("release", "")}, {"reason", reason}};
      const int64_t time_ms = event.value("time_ms", now_ms);
      events.push_back(
          {{"metric", "update_failed"}, {"value", 1}, {"labels", labels}, {"time_ms", time_ms}});
      if (reason == "crash_loop") {
        events.push_back(
            {{"metric", "crash_loop"}, {"value", 1}, {"labels", labels}, {"time_ms", time_ms}});
      }
    }
    if (!events.empty()) {
      absl::Status queued = queue.Append(events, Priority::kHigh, now_ms);
      if (!queued.ok()) {
        spdlog::error("telemetry: cannot queue events: {}", MessageOf(queued));
        return;  // the history is read again next time
      }
    }
    if (last != *seen) {
      absl::Status saved = queue.SetCounter("history_seq", last);
      if (!saved.ok()) spdlog::warn("telemetry: {}", MessageOf(saved));
    }
  }
}

void HubLink::ShipTelemetry(TelemetryQueue& queue, HubClient& client) {
  if (Clock::now() < next_ship_) return;
  while (true) {
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
    }
    absl::StatusOr<std::optional<QueuedBatch>> batch = queue.NextBatch();
    if (!batch.ok()) {
      spdlog::error("telemetry: {}", MessageOf(batch.status()));
      return;
    }
    if (!batch->has_value()) return;
    const QueuedBatch& next = **batch;
    absl::StatusOr<json> sent = client.Post(
        "/telemetry",
        {{"batch_id", next.batch_id}, {"time_ms", NowMillis()}, {"samples", next.samples}});
    if (!sent.ok()) {
      if (absl::IsInvalidArgument(sent.status())) {
        // The hub refuses this batch for good: retrying would block every
        // later one. Dropped, counted and reported like any loss (after the
        // backoff below, so a hub refusing everything is not hammered).
        spdlog::error("telemetry: the hub refused batch {} ({}); its {} samples are dropped",
                      next.batch_id, MessageOf(sent.status()), next.samples.size());
        absl::Status dropped = queue.Acknowledge(next.batch_id);
        if (dropped.ok()) {
          dropped = queue.Append(json{{"metric", "telemetry_dropped"},
                                      {"value", next.samples.size()},
                                      {"labels", {{"priority", "refused"}}}},
                                 Priority::kHigh, NowMillis());
        }
        if (!dropped.ok()) spdlog::error("telemetry: {}", MessageOf(dropped));
      }
      // Exponential backoff with full jitter; the batch (same id, same
      // samples) waits in the queue.
      ship_backoff_ =
          std::clamp(ship_backoff_ * 2, std::chrono::milliseconds(1000),
                     std::max(options_.telemetry_retry_max, std::chrono::milliseconds(1000)));
      static thread_local std::mt19937_64 rng(std::random_device{}());
      next_ship_ = Clock::now() + std::chrono::milliseconds(std::uniform_int_distribution<int64_t>(
                                      ship_backoff_.count() / 2, ship_backoff_.count())(rng));
      if (!ship_failing_) {
        spdlog::warn("telemetry: not sent ({}); kept in the queue, retried with backoff",
                     MessageOf(sent.status()));
        ship_failing_ = true;
      }
      return;
    }
    // A crash here (sent, not acknowledged) re-sends the batch after the
    // restart; the hub stores it once.
    OUTPOST_CRASH_AT("telemetry.after_send");
    absl::Status acknowledged = queue.Acknowledge(next.batch_id);
    if (!acknowledged.ok()) {
      spdlog::error("telemetry: {}", MessageOf(acknowledged));
      return;
    }
    ship_backoff_ = std::chrono::milliseconds(0);
    if (ship_failing_) {
      spdlog::info("telemetry: the hub takes batches again; sending the backlog");
      ship_failing_ = false;
    }
  }
}

void HubLink::ReporterLoop() {
  absl::StatusOr<std::unique_ptr<HubClient>> client = HubClient::Create(connection_);
  if (!client.ok()) {
    spdlog::error("hub: reporter cannot start: {}", MessageOf(client.status()));
    return;
  }
  StatusReporter reporter(options_.state_dir, *std::move(client), progress_);
  TelemetryCollector telemetry({.state_dir = options_.state_dir});
  TelemetryQueueOptions queue_options = options_.telemetry_queue;
  queue_options.path = options_.state_dir / "telemetry.db";
  std::unique_ptr<TelemetryQueue> queue;
  std::string last_error;
  auto next_telemetry = Clock::now();
  auto report_error = [&](const absl::Status& status) {
    std::string text(MessageOf(status));
    if (text != last_error) {
      spdlog::warn("hub: {} (kept on disk; retried)", text);
      last_error = text;
    }
  };
  bool first = true;  // after a start the hub hears the state at once
  while (true) {
    absl::Status reported = reporter.ReportOnce(first);
    if (reported.ok()) first = false;
    if (!reported.ok()) {
      report_error(reported);
    } else if (!last_error.empty()) {
      spdlog::info("hub: reachable again");
      last_error.clear();
    }
    if (queue == nullptr) {
      absl::StatusOr<std::unique_ptr<TelemetryQueue>> opened = TelemetryQueue::Open(queue_options);
      if (opened.ok()) {
        queue = *std::move(opened);
      } else if (Clock::now() >= next_telemetry) {
        spdlog::error("telemetry: {}; heartbeats are not kept", MessageOf(opened.status()));
      }
    }
    if (Clock::now() >= next_telemetry) {
      next_telemetry = Clock::now() + options_.telemetry_interval;
      const int64_t now_ms = NowMillis();
      json samples = telemetry.Collect(now_ms, reporter.client().clock_offset_ms());
      if (queue != nullptr) {
        absl::Status queued = queue->Append(samples, Priority::kRoutine, now_ms);
        if (!queued.ok())
          spdlog::error("telemetry: cannot queue a heartbeat: {}", MessageOf(queued));
        QueueEvents(*queue, samples, now_ms);
        absl::StatusOr<size_t> imported =
            queue->ImportOutbox(options_.state_dir / "telemetry-outbox", now_ms);
        if (!imported.ok()) spdlog::error("telemetry outbox: {}", MessageOf(imported.status()));
        // Pipeline results marked for upload, once per interval: no thread
        // or timer of their own.
        absl::StatusOr<size_t> results =
            queue->ImportResults(UploadQueuePath(options_.state_dir), now_ms);
        if (!results.ok()) spdlog::error("telemetry: {}", MessageOf(results.status()));
      }
    }
    if (queue != nullptr) ShipTelemetry(*queue, reporter.client());
    std::unique_lock lock(mu_);
    if (stop_) break;
    auto wait = options_.report_interval;
    // Wake for the next heartbeat or retry if either comes before the report.
    const auto now = Clock::now();
    wait = std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::max(next_telemetry - now, Clock::duration::zero())));
    if (queue != nullptr && next_ship_ > now) {
      wait =
          std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(next_ship_ - now));
    }
    cv_.wait_for(lock, std::max(wait, std::chrono::milliseconds(10)),
                 [this] { return stop_ || nudged_; });
    nudged_ = false;
    if (stop_) {
      lock.unlock();
      absl::Status last = reporter.ReportOnce();  // the final transitions
      if (!last.ok()) report_error(last);
      break;
    }
  }
}

}  // namespace outpost::agent
