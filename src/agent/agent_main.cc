// outpost-agent: the device's update supervisor (DESIGN.md "outpost-agent").
// Subcommands so far: gpu-wait, version. Exit codes: 0 success, 1 the
// command's own failure (gpu-wait: timed out), 2 usage errors.
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "agent/gpu.h"

namespace {

std::chrono::milliseconds Millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0 + 0.5));
}

}  // namespace

int main(int argc, char** argv) {
  // Logs go to stderr: stdout carries command output (gpu-wait --json).
  spdlog::set_default_logger(spdlog::stderr_logger_st("outpost-agent"));

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
