// GPU readiness and inventory, without a link-time dependency on the NVIDIA
// driver: NVML (libnvidia-ml.so.1) is dlopen'ed first, the CUDA driver API
// (libcuda.so.1: cuInit + cuDeviceGetCount) is the fallback. A machine
// without them is a CPU-only device, not an error of this module.
//
// Used by `outpost-agent gpu-wait` (an init container / systemd
// ExecStartPre that holds inference until the GPU answers: GPUs and their
// drivers come up late) and later by telemetry (per-GPU name, memory,
// temperature, utilization when NVML is present).
//
// Library paths: $OUTPOST_NVML_LIBRARY / $OUTPOST_CUDA_LIBRARY override the
// default sonames (tests point them at stand-in libraries).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

namespace outpost::agent {

struct GpuDevice {
  int index = 0;
  std::string name;
  std::string uuid;  // NVML only
  uint64_t memory_total_bytes = 0;
  uint64_t memory_used_bytes = 0;  // NVML only
  int temperature_c = -1;          // -1: unknown (no NVML, or not supported)
  int utilization_percent = -1;    // -1: unknown
};

struct GpuStatus {
  bool ready = false;           // a driver answered and reports >= 1 device
  bool driver_present = false;  // the NVML or CUDA library could be loaded
  std::string source;           // "nvml" or "cuda" when ready
  std::string driver_version;
  std::vector<GpuDevice> devices;
  // Why not ready, one line naming each library's answer, e.g.
  // "NVML: nvmlInit failed: Driver Not Loaded; CUDA: libcuda.so.1 not found (...)".
  std::string reason;
};

struct GpuProbeOptions {
  std::string nvml_library;  // empty: $OUTPOST_NVML_LIBRARY, else "libnvidia-ml.so.1"
  std::string cuda_library;  // empty: $OUTPOST_CUDA_LIBRARY, else "libcuda.so.1"
};

// Loads the libraries on first use (retrying on later probes while they are
// missing: a driver can be installed or mounted late), keeps them loaded
// and NVML initialised between probes; unloads them on destruction.
// Not thread-safe: one prober per thread.
class GpuProber {
 public:
  explicit GpuProber(GpuProbeOptions options = {});
  ~GpuProber();
  GpuProber(const GpuProber&) = delete;
  GpuProber& operator=(const GpuProber&) = delete;

  // Asks the driver now. Never fails: problems are in GpuStatus::reason.
  GpuStatus Probe();

 private:
  struct Nvml;
  struct Cuda;
  GpuProbeOptions options_;
  std::unique_ptr<Nvml> nvml_;
  std::unique_ptr<Cuda> cuda_;
};

// Probes until ready or `timeout` has passed, every `interval` (the last
// probe happens at the deadline; timeout 0 probes once). `polls` (optional)
// receives the number of probes made.
GpuStatus WaitForGpu(GpuProber& prober, std::chrono::milliseconds timeout,
                     std::chrono::milliseconds interval, int* polls = nullptr);
// The same, also ending early when `give_up` (may be null) returns true for a probe.
GpuStatus WaitForGpuUntil(GpuProber& prober, std::chrono::milliseconds timeout,
                          std::chrono::milliseconds interval, int* polls,
                          const std::function<bool(const GpuStatus&)>& give_up);

struct GpuWaitCommand {
  std::chrono::milliseconds timeout{0};
  std::chrono::milliseconds interval{500};
  bool require_gpu = true;
  bool json = false;
};

// `outpost-agent gpu-wait`: waits, prints the result (a line of text, or one
// JSON object with --json) to `out`, problems to `err`, and returns the exit
// code: 0 GPU ready, or no GPU but require_gpu is false ("cpu-only": at once
// when no driver library exists, after the timeout when a driver exists but
// never answers); 1 timed out without a GPU while one is required.
int RunGpuWait(const GpuWaitCommand& command, std::ostream& out, std::ostream& err,
               GpuProbeOptions options = {});

}  // namespace outpost::agent
