#include "agent/hub_link.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <fstream>
#include <random>

#include "agent/telemetry.h"
#include "common/atomic_file.h"

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

void HubLink::ReporterLoop() {
  absl::StatusOr<std::unique_ptr<HubClient>> client = HubClient::Create(connection_);
  if (!client.ok()) {
    spdlog::error("hub: reporter cannot start: {}", MessageOf(client.status()));
    return;
  }
  StatusReporter reporter(options_.state_dir, *std::move(client), progress_);
  TelemetryCollector telemetry({.state_dir = options_.state_dir});
  std::string last_error;
  uint64_t batch = 0;
  const std::string boot = StrCat(NowMillis());  // batch ids unique across restarts
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
    if (Clock::now() >= next_telemetry) {
      next_telemetry = Clock::now() + options_.telemetry_interval;
      json samples = telemetry.Collect(NowMillis(), reporter.client().clock_offset_ms());
      absl::StatusOr<json> sent =
          reporter.client().Post("/telemetry", {{"batch_id", StrCat(boot, "-", ++batch)},
                                                {"time_ms", NowMillis()},
                                                {"samples", samples}});
      if (!sent.ok()) report_error(sent.status());
    }
    std::unique_lock lock(mu_);
    if (stop_) break;
    cv_.wait_for(lock, options_.report_interval, [this] { return stop_ || nudged_; });
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
