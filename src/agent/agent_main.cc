// outpost-agent: the device's update supervisor (DESIGN.md "outpost-agent").
// Subcommands: run (the update loop), status, gpu-wait, version. Exit
// codes: 0 success, 1 the command's own failure (gpu-wait: timed out; run:
// the state directory cannot be used), 2 usage errors.
#include <signal.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>

#include "agent/gpu.h"
#include "agent/hub_link.h"
#include "agent/updater.h"
#include "common/atomic_file.h"

namespace {

std::chrono::milliseconds Millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0 + 0.5));
}

std::atomic<outpost::agent::Updater*> g_updater{nullptr};
std::atomic<bool> g_stopping{false};  // also cancels a download in progress

// Async-signal-safe: atomic loads and stores.
void OnStopSignal(int) {
  g_stopping.store(true);
  if (outpost::agent::Updater* updater = g_updater.load()) updater->RequestStop();
}

bool IsSha256Hex(std::string_view hex) {
  return hex.size() == 64 && hex.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

struct RunFlags {
  std::string state_dir;
  std::string trust_dir;
  std::string bundle_dir;
  std::string bundle_url;
  std::string bootstrap;
  double hub_wait = 240;
  double report_interval = 10;
  double telemetry_interval = 600;
  uint64_t telemetry_queue_max_bytes = 16ull << 20;
  double telemetry_queue_max_age = 7 * 24 * 3600;
  double telemetry_retry_max = 300;
  double overheat_c = 85;
  std::string bundle_sha256;
  uint64_t bundle_size = 0;
  std::string ca_file;
  int download_retries = 8;
  double download_backoff = 1;
  double download_backoff_max = 60;
  double download_stall_timeout = 60;
  std::string serve_binary;
  double ready_timeout = 60;
  double self_test_timeout = 30;
  double soak = 30;
  double poll_interval = 5;
  int max_attempts = 3;
  int transient_retries = 5;
  double transient_retry_delay = 300;
  double restart_backoff = 1;
  int crash_loop_exits = 5;
  double crash_loop_window = 300;
  double stop_grace = 10;
  bool exit_when_idle = false;
};

void InstallStopHandlers() {
  struct sigaction action = {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

int RunAgent(const RunFlags& flags) {
  namespace agent = outpost::agent;
  agent::UpdaterOptions options;
  options.state_dir = flags.state_dir;
  options.trust_dir = flags.trust_dir;
  options.serve_binary = flags.serve_binary;
  options.facts.arch = outpost::bundle::HostArch();
  options.facts.accelerators = {"cpu"};
  {
    // A GPU that answers now is a fact the hub and bundle targets use; one
    // that appears later is picked up at the next start (gpu-wait gates
    // services that need it).
    agent::GpuProber prober;
    agent::GpuStatus gpu = prober.Probe();
    if (gpu.ready) {
      options.facts.accelerators.push_back("cuda");
      spdlog::info("gpu: {} device(s) via {} (driver {})", gpu.devices.size(), gpu.source,
                   gpu.driver_version);
    }
  }
  options.facts.agent_version = OUTPOST_VERSION;
  options.ready_timeout = Millis(flags.ready_timeout);
  options.self_test_timeout = Millis(flags.self_test_timeout);
  options.soak = Millis(flags.soak);
  options.poll_interval = Millis(flags.poll_interval);
  options.max_attempts = flags.max_attempts;
  options.transient_retries = flags.transient_retries;
  options.transient_retry_delay =
      std::chrono::seconds(static_cast<int64_t>(std::llround(flags.transient_retry_delay)));
  options.restart_backoff = Millis(flags.restart_backoff);
  options.crash_loop_exits = flags.crash_loop_exits;
  options.crash_loop_window = Millis(flags.crash_loop_window);
  options.stop_grace = Millis(flags.stop_grace);
  std::unique_ptr<agent::UpdateSource> source;
  std::unique_ptr<agent::HubLink> hub_link;
  if (!flags.bundle_url.empty()) {
    agent::FetchOptions fetch;
    fetch.ca_file = flags.ca_file;
    fetch.max_retries = flags.download_retries;
    fetch.backoff_base = Millis(flags.download_backoff);
    fetch.backoff_max = Millis(flags.download_backoff_max);
    fetch.low_speed_time = std::chrono::seconds(
        std::max<int64_t>(1, static_cast<int64_t>(flags.download_stall_timeout + 0.5)));
    fetch.cancelled = [] { return g_stopping.load(); };
    source = std::make_unique<agent::HttpBundleSource>(flags.bundle_url, flags.bundle_sha256,
                                                       flags.bundle_size, std::move(fetch));
  } else if (agent::HubConfigured(flags.state_dir, flags.bootstrap)) {
    agent::HubLinkOptions link_options;
    link_options.state_dir = flags.state_dir;
    link_options.bootstrap_file = flags.bootstrap;
    link_options.long_poll =
        std::chrono::seconds(std::max<int64_t>(0, static_cast<int64_t>(flags.hub_wait)));
    link_options.report_interval = Millis(flags.report_interval);
    link_options.telemetry_interval = Millis(flags.telemetry_interval);
    link_options.telemetry_queue.max_bytes = flags.telemetry_queue_max_bytes;
    link_options.telemetry_queue.max_age =
        std::chrono::seconds(static_cast<int64_t>(flags.telemetry_queue_max_age));
    link_options.telemetry_retry_max = Millis(flags.telemetry_retry_max);
    link_options.overheat_c = flags.overheat_c;
    link_options.fetch.max_retries = flags.download_retries;
    link_options.fetch.backoff_base = Millis(flags.download_backoff);
    link_options.fetch.backoff_max = Millis(flags.download_backoff_max);
    link_options.fetch.low_speed_time = std::chrono::seconds(
        std::max<int64_t>(1, static_cast<int64_t>(flags.download_stall_timeout + 0.5)));
    link_options.fetch.cancelled = [] { return g_stopping.load(); };
    link_options.stopping = [] { return g_stopping.load(); };
    InstallStopHandlers();
    auto started =
        agent::HubLink::Start(std::move(link_options), agent::DeviceFactsJson(options.facts));
    if (!started.ok()) {
      if (absl::IsCancelled(started.status())) return 0;
      spdlog::error("{}", outpost::MessageOf(started.status()));
      return 1;
    }
    hub_link = *std::move(started);
    source = hub_link->TakeSource();
  } else {
    source = std::make_unique<agent::LocalFolderSource>(flags.bundle_dir);
  }
  auto updater = agent::Updater::Create(std::move(options), std::move(source));
  if (!updater.ok()) {
    spdlog::error("{}", outpost::MessageOf(updater.status()));
    return 1;
  }
  g_updater.store(updater->get());
  InstallStopHandlers();
  absl::Status status = (*updater)->Run(flags.exit_when_idle);
  g_updater.store(nullptr);
  if (hub_link) hub_link->Stop();  // ships the last transitions
  if (!status.ok()) {
    spdlog::error("{}", outpost::MessageOf(status));
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Logs go to stderr: stdout carries command output (gpu-wait --json).
  spdlog::set_default_logger(spdlog::stderr_logger_mt("outpost-agent"));

  CLI::App app{"outpost-agent: keeps this device's Outpost release up to date"};
  app.require_subcommand(1);

  CLI::App* version = app.add_subcommand("version", "Print the agent's version");

  CLI::App* gpu_wait = app.add_subcommand(
      "gpu-wait",
      "Wait until a GPU and its driver answer (NVML, else the CUDA driver API); for init "
      "containers and ExecStartPre. Exit 0: GPU ready (or CPU-only allowed), 1: timed out, "
      "2: usage error");
  double timeout_seconds = 0;
  double interval_seconds = 0.5;
  bool require_gpu = true;
  bool json = false;
  gpu_wait->add_option("--timeout", timeout_seconds, "Seconds to wait for a GPU (0: probe once)")
      ->required()
      ->check(CLI::Range(0.0, 86400.0));
  gpu_wait
      ->add_option("--require-gpu", require_gpu,
                   "true: no GPU is a failure (exit 1); false: continue CPU-only (exit 0)")
      ->capture_default_str();
  gpu_wait->add_flag("--json", json, "Print one JSON object (devices, memory, temperature, ...)");
  gpu_wait->add_option("--poll-interval", interval_seconds, "Seconds between probes")
      ->check(CLI::Range(0.01, 60.0))
      ->capture_default_str();

  CLI::App* run = app.add_subcommand(
      "run",
      "Keep this device's release up to date: resume any interrupted install, supervise "
      "outpost-serve on the current slot, and install signed bundles found in --bundle-dir "
      "(or the one at --bundle-url)");
  RunFlags run_flags;
  run->add_option("--state-dir", run_flags.state_dir,
                  "State directory (slots, current, state.json)")
      ->required();
  run->add_option("--trust-dir", run_flags.trust_dir, "Directory of trusted *.pub signing keys")
      ->required();
  CLI::Option* bundle_dir =
      run->add_option("--bundle-dir", run_flags.bundle_dir, "Folder watched for *.tar.zst bundles");
  CLI::Option* bundle_url = run->add_option(
      "--bundle-url", run_flags.bundle_url,
      "Install the bundle at this http(s) URL instead (resumable download; needs --bundle-sha256 "
      "and --bundle-size)");
  CLI::Option* bundle_sha256 = run->add_option("--bundle-sha256", run_flags.bundle_sha256,
                                               "SHA-256 of the bundle at --bundle-url (64 hex)");
  CLI::Option* bundle_size =
      run->add_option("--bundle-size", run_flags.bundle_size, "Size in bytes of that bundle");
  bundle_dir->excludes(bundle_url);
  bundle_url->needs(bundle_sha256)->needs(bundle_size);
  bundle_sha256->needs(bundle_url);
  bundle_size->needs(bundle_url);
  run->add_option("--ca-file", run_flags.ca_file,
                  "PEM file of the CAs trusted for --bundle-url instead of the system store")
      ->needs(bundle_url);
  run->add_option("--download-retries", run_flags.download_retries,
                  "Retries of a failed or cut download (each resumes where it stopped)")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  run->add_option("--download-backoff", run_flags.download_backoff,
                  "Seconds: base of the jittered exponential backoff between download retries")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  run->add_option("--download-backoff-max", run_flags.download_backoff_max,
                  "Seconds: cap of that backoff")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  run->add_option("--download-stall-timeout", run_flags.download_stall_timeout,
                  "Seconds below 1 KiB/s before a download attempt is abandoned and retried")
      ->check(CLI::Range(1.0, 86400.0))
      ->capture_default_str();
  CLI::Option* bootstrap = run->add_option(
      "--bootstrap", run_flags.bootstrap,
      "Bootstrap file from the hub (hub URL, token, CA): enrol and take releases from the hub "
      "(later starts need no flag: the credential is kept in the state directory)");
  bootstrap->excludes(bundle_dir)->excludes(bundle_url);
  run->add_option("--hub-wait", run_flags.hub_wait,
                  "Seconds the hub may hold a desired-state poll (long poll)")
      ->check(CLI::Range(0.0, 300.0))
      ->capture_default_str();
  run->add_option("--report-interval", run_flags.report_interval,
                  "Seconds between status reports to the hub")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  run->add_option("--telemetry-interval", run_flags.telemetry_interval,
                  "Seconds between heartbeats (runtime and device health) to the hub")
      ->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  run->add_option("--telemetry-queue-max-bytes", run_flags.telemetry_queue_max_bytes,
                  "Bound of the on-disk telemetry queue (bytes of samples); the oldest routine "
                  "samples are dropped (and the loss reported) beyond it")
      ->check(CLI::Range(uint64_t{4096}, uint64_t{1} << 40))
      ->capture_default_str();
  run->add_option("--telemetry-queue-max-age", run_flags.telemetry_queue_max_age,
                  "Seconds a routine telemetry sample may wait in the queue")
      ->check(CLI::Range(60.0, 365.0 * 86400))
      ->capture_default_str();
  run->add_option("--telemetry-retry-max", run_flags.telemetry_retry_max,
                  "Cap in seconds of the exponential backoff between failed telemetry sends")
      ->check(CLI::Range(1.0, 3600.0))
      ->capture_default_str();
  run->add_option("--overheat-c", run_flags.overheat_c,
                  "Hottest thermal zone (Celsius) from which an overheating event is queued")
      ->check(CLI::Range(20.0, 200.0))
      ->capture_default_str();
  run->add_option("--serve-binary", run_flags.serve_binary,
                  "outpost-serve to run when a bundle ships no runtime/outpost-serve");
  run->add_option("--ready-timeout", run_flags.ready_timeout,
                  "Seconds a new runtime has to become ready")
      ->capture_default_str();
  run->add_option("--self-test-timeout", run_flags.self_test_timeout,
                  "Seconds per self-test request")
      ->capture_default_str();
  run->add_option("--soak", run_flags.soak, "Seconds a new runtime must stay up before commit")
      ->capture_default_str();
  run->add_option("--poll-interval", run_flags.poll_interval, "Seconds between bundle-dir scans")
      ->capture_default_str();
  run->add_option("--max-attempts", run_flags.max_attempts,
                  "Installs of one bundle interrupted by agent restarts before giving up")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  run->add_option("--transient-retries", run_flags.transient_retries,
                  "Times a bundle whose install failed for a reason that may pass (download "
                  "failed, disk full) is offered again before it is given up")
      ->check(CLI::Range(0, 100))
      ->capture_default_str();
  run->add_option("--transient-retry-delay", run_flags.transient_retry_delay,
                  "Seconds before the first such retry; 3x longer each time, at most 6 h")
      ->check(CLI::Range(1.0, 86400.0))
      ->capture_default_str();
  run->add_option("--restart-backoff", run_flags.restart_backoff,
                  "Seconds before the first restart of a crashed runtime")
      ->capture_default_str();
  run->add_option("--crash-loop-exits", run_flags.crash_loop_exits,
                  "Runtime exits within --crash-loop-window that roll a committed release back")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  run->add_option("--crash-loop-window", run_flags.crash_loop_window, "Seconds")
      ->capture_default_str();
  run->add_option("--stop-grace", run_flags.stop_grace,
                  "Seconds between SIGTERM and SIGKILL when stopping a runtime")
      ->capture_default_str();
  run->add_flag("--exit-when-idle", run_flags.exit_when_idle,
                "Exit once no new bundle is left (one-shot installs, tests); stops the runtime");

  CLI::App* status = app.add_subcommand("status", "Print the update state (state.json)");
  std::string status_dir;
  status->add_option("--state-dir", status_dir, "State directory")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);  // prints help or the error
    return code == 0 ? 0 : 2;
  }

  if (version->parsed()) {
    std::printf("outpost-agent %s\n", OUTPOST_VERSION);
    return 0;
  }
  if (run->parsed()) {
    const bool hub = outpost::agent::HubConfigured(run_flags.state_dir, run_flags.bootstrap);
    if (run_flags.bundle_dir.empty() && run_flags.bundle_url.empty() && !hub) {
      std::fprintf(stderr,
                   "run: give --bootstrap (hub), --bundle-dir or --bundle-url as the source of "
                   "releases\n");
      return 2;
    }
    if (!run_flags.bundle_dir.empty() && !run_flags.bundle_url.empty()) {
      std::fprintf(stderr, "run: give only one of --bundle-dir and --bundle-url\n");
      return 2;
    }
    if (!run_flags.bundle_url.empty() && !IsSha256Hex(run_flags.bundle_sha256)) {
      std::fprintf(stderr, "run: --bundle-sha256 must be 64 lowercase hex characters\n");
      return 2;
    }
    return RunAgent(run_flags);
  }
  if (status->parsed()) {
    auto text = outpost::ReadFile(std::filesystem::path(status_dir) / "state.json");
    if (!text.ok()) {
      std::fprintf(stderr, "%s\n", std::string(outpost::MessageOf(text.status())).c_str());
      return 1;
    }
    std::fwrite(text->data(), 1, text->size(), stdout);
    return 0;
  }
  if (gpu_wait->parsed()) {
    outpost::agent::GpuWaitCommand command;
    command.timeout = Millis(timeout_seconds);
    command.interval = Millis(interval_seconds);
    command.require_gpu = require_gpu;
    command.json = json;
    return outpost::agent::RunGpuWait(command, std::cout, std::cerr);
  }
  return 2;
}
