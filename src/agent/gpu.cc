#include "agent/gpu.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <ostream>
#include <thread>

#include "common/status.h"

namespace outpost::agent {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// The parts of the NVML and CUDA driver ABIs used here, declared from their
// public documentation (no NVIDIA headers needed to build).
constexpr int kNvmlSuccess = 0;
constexpr int kNvmlTemperatureGpu = 0;
constexpr unsigned kNvmlNameBuffer = 96;
constexpr unsigned kNvmlUuidBuffer = 96;
constexpr unsigned kNvmlVersionBuffer = 80;
struct NvmlMemory {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
struct NvmlUtilization {
  unsigned int gpu;
  unsigned int memory;
};
using NvmlDevice = void*;
constexpr int kCudaSuccess = 0;

std::string LibraryPath(const std::string& configured, const char* env, const char* soname) {
  if (!configured.empty()) return configured;
  const char* value = std::getenv(env);
  return value != nullptr && *value != '\0' ? value : soname;
}

// dlopen with the error text; nullptr on failure.
void* Open(const std::string& path, std::string* error) {
  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* e = ::dlerror();
    *error = e != nullptr ? e : StrCat("cannot load ", path);
  }
  return handle;
}

template <typename Fn>
Fn Symbol(void* handle, const char* name) {
  return reinterpret_cast<Fn>(::dlsym(handle, name));
}

template <typename Fn>
Fn SymbolEither(void* handle, const char* preferred, const char* fallback) {
  Fn fn = Symbol<Fn>(handle, preferred);
  return fn != nullptr ? fn : Symbol<Fn>(handle, fallback);
}

std::string GiB(uint64_t bytes) { return fmt::format("{:.1f} GiB", bytes / 1073741824.0); }
std::string Seconds(Clock::duration d) {
  return fmt::format("{:.1f} s", std::chrono::duration<double>(d).count());
}

}  // namespace

struct GpuProber::Nvml {
  void* handle = nullptr;
  bool initialized = false;
  int (*init)() = nullptr;
  int (*shutdown)() = nullptr;
  const char* (*error_string)(int) = nullptr;
  int (*get_count)(unsigned*) = nullptr;
  int (*get_handle)(unsigned, NvmlDevice*) = nullptr;
  int (*get_name)(NvmlDevice, char*, unsigned) = nullptr;
  int (*get_uuid)(NvmlDevice, char*, unsigned) = nullptr;
  int (*get_memory)(NvmlDevice, NvmlMemory*) = nullptr;
  int (*get_temperature)(NvmlDevice, int, unsigned*) = nullptr;
  int (*get_utilization)(NvmlDevice, NvmlUtilization*) = nullptr;
  int (*driver_version)(char*, unsigned) = nullptr;

  std::string Error(int code) const {
    const char* text = error_string != nullptr ? error_string(code) : nullptr;
    return text != nullptr ? StrCat(text, " (", code, ")") : StrCat("error ", code);
  }

  // Loads the library and its symbols; "" on success, else why not.
  std::string Load(const std::string& path) {
    std::string error;
    handle = Open(path, &error);
    if (handle == nullptr) return error;
    init = SymbolEither<decltype(init)>(handle, "nvmlInit_v2", "nvmlInit");
    shutdown = Symbol<decltype(shutdown)>(handle, "nvmlShutdown");
    error_string = Symbol<decltype(error_string)>(handle, "nvmlErrorString");
    get_count =
        SymbolEither<decltype(get_count)>(handle, "nvmlDeviceGetCount_v2", "nvmlDeviceGetCount");
    get_handle = SymbolEither<decltype(get_handle)>(handle, "nvmlDeviceGetHandleByIndex_v2",
                                                    "nvmlDeviceGetHandleByIndex");
    get_name = Symbol<decltype(get_name)>(handle, "nvmlDeviceGetName");
    get_uuid = Symbol<decltype(get_uuid)>(handle, "nvmlDeviceGetUUID");
    get_memory = Symbol<decltype(get_memory)>(handle, "nvmlDeviceGetMemoryInfo");
    get_temperature = Symbol<decltype(get_temperature)>(handle, "nvmlDeviceGetTemperature");
    get_utilization = Symbol<decltype(get_utilization)>(handle, "nvmlDeviceGetUtilizationRates");
    driver_version = Symbol<decltype(driver_version)>(handle, "nvmlSystemGetDriverVersion");
    if (init == nullptr || shutdown == nullptr || get_count == nullptr) {
      ::dlclose(handle);
      handle = nullptr;
      return StrCat(path, " lacks nvmlInit/nvmlShutdown/nvmlDeviceGetCount (not NVML?)");
    }
    return "";
  }

  void Describe(unsigned index, GpuDevice* device) const {
    device->index = static_cast<int>(index);
    NvmlDevice dev = nullptr;
    if (get_handle == nullptr || get_handle(index, &dev) != kNvmlSuccess) return;
    char buf[kNvmlNameBuffer > kNvmlUuidBuffer ? kNvmlNameBuffer : kNvmlUuidBuffer] = {};
    if (get_name != nullptr && get_name(dev, buf, kNvmlNameBuffer) == kNvmlSuccess) {
      device->name = buf;
    }
    buf[0] = '\0';
    if (get_uuid != nullptr && get_uuid(dev, buf, kNvmlUuidBuffer) == kNvmlSuccess) {
      device->uuid = buf;
    }
    NvmlMemory memory{};
    if (get_memory != nullptr && get_memory(dev, &memory) == kNvmlSuccess) {
      device->memory_total_bytes = memory.total;
      device->memory_used_bytes = memory.used;
    }
    unsigned temperature = 0;
    if (get_temperature != nullptr &&
        get_temperature(dev, kNvmlTemperatureGpu, &temperature) == kNvmlSuccess) {
      device->temperature_c = static_cast<int>(temperature);
    }
    NvmlUtilization utilization{};
    if (get_utilization != nullptr && get_utilization(dev, &utilization) == kNvmlSuccess) {
      device->utilization_percent = static_cast<int>(utilization.gpu);
    }
  }
};

struct GpuProber::Cuda {
  void* handle = nullptr;
  int (*init)(unsigned) = nullptr;
  int (*get_count)(int*) = nullptr;
  int (*get_error_string)(int, const char**) = nullptr;
  int (*get_device)(int*, int) = nullptr;
  int (*get_name)(char*, int, int) = nullptr;
  int (*total_mem)(size_t*, int) = nullptr;
  int (*driver_version)(int*) = nullptr;

  std::string Error(int code) const {
    const char* text = nullptr;
    if (get_error_string != nullptr) get_error_string(code, &text);
    return text != nullptr ? StrCat(text, " (", code, ")") : StrCat("CUresult ", code);
  }

  std::string Load(const std::string& path) {
    std::string error;
    handle = Open(path, &error);
    if (handle == nullptr) return error;
    init = Symbol<decltype(init)>(handle, "cuInit");
    get_count = Symbol<decltype(get_count)>(handle, "cuDeviceGetCount");
    get_error_string = Symbol<decltype(get_error_string)>(handle, "cuGetErrorString");
    get_device = Symbol<decltype(get_device)>(handle, "cuDeviceGet");
    get_name = Symbol<decltype(get_name)>(handle, "cuDeviceGetName");
    total_mem =
        SymbolEither<decltype(total_mem)>(handle, "cuDeviceTotalMem_v2", "cuDeviceTotalMem");
    driver_version = Symbol<decltype(driver_version)>(handle, "cuDriverGetVersion");
    if (init == nullptr || get_count == nullptr) {
      ::dlclose(handle);  // never initialised, so safe to unload
      handle = nullptr;
      return StrCat(path, " lacks cuInit/cuDeviceGetCount (not the CUDA driver?)");
    }
    return "";
  }
};

GpuProber::GpuProber(GpuProbeOptions options)
    : options_(std::move(options)),
      nvml_(std::make_unique<Nvml>()),
      cuda_(std::make_unique<Cuda>()) {
  options_.nvml_library =
      LibraryPath(options_.nvml_library, "OUTPOST_NVML_LIBRARY", "libnvidia-ml.so.1");
  options_.cuda_library =
      LibraryPath(options_.cuda_library, "OUTPOST_CUDA_LIBRARY", "libcuda.so.1");
}

GpuProber::~GpuProber() {
  if (nvml_->initialized) nvml_->shutdown();
  if (nvml_->handle != nullptr) ::dlclose(nvml_->handle);
  // libcuda is never unloaded: the driver API does not support it (it
  // registers process-exit handlers).
}

GpuStatus GpuProber::Probe() {
  GpuStatus status;
  std::string nvml_reason;
  if (nvml_->handle == nullptr) nvml_reason = nvml_->Load(options_.nvml_library);
  if (nvml_->handle != nullptr) {
    status.driver_present = true;
    if (!nvml_->initialized) {
      int r = nvml_->init();
      if (r == kNvmlSuccess) {
        nvml_->initialized = true;
      } else {
        nvml_reason = StrCat("nvmlInit failed: ", nvml_->Error(r));
      }
    }
    if (nvml_->initialized) {
      unsigned count = 0;
      int r = nvml_->get_count(&count);
      if (r != kNvmlSuccess) {
        nvml_reason = StrCat("nvmlDeviceGetCount failed: ", nvml_->Error(r));
        // Start over next time: the driver may have been reloaded.
        nvml_->shutdown();
        nvml_->initialized = false;
      } else if (count == 0) {
        nvml_reason = "0 devices";
      } else {
        status.ready = true;
        status.source = "nvml";
        char version[kNvmlVersionBuffer] = {};
        if (nvml_->driver_version != nullptr &&
            nvml_->driver_version(version, sizeof(version)) == kNvmlSuccess) {
          status.driver_version = version;
        }
        status.devices.resize(count);
        for (unsigned i = 0; i < count; ++i) nvml_->Describe(i, &status.devices[i]);
        return status;
      }
    }
  }

  std::string cuda_reason;
  if (cuda_->handle == nullptr) cuda_reason = cuda_->Load(options_.cuda_library);
  if (cuda_->handle != nullptr) {
    status.driver_present = true;
    int count = 0;
    int r = cuda_->init(0);
    if (r != kCudaSuccess) {
      cuda_reason = StrCat("cuInit failed: ", cuda_->Error(r));
    } else if ((r = cuda_->get_count(&count)) != kCudaSuccess) {
      cuda_reason = StrCat("cuDeviceGetCount failed: ", cuda_->Error(r));
    } else if (count <= 0) {
      cuda_reason = "0 devices";
    } else {
      status.ready = true;
      status.source = "cuda";
      int version = 0;
      if (cuda_->driver_version != nullptr && cuda_->driver_version(&version) == kCudaSuccess) {
        status.driver_version = fmt::format("CUDA {}.{}", version / 1000, version % 1000 / 10);
      }
      status.devices.resize(static_cast<size_t>(count));
      for (int i = 0; i < count; ++i) {
        GpuDevice& device = status.devices[static_cast<size_t>(i)];
        device.index = i;
        int dev = 0;
        if (cuda_->get_device == nullptr || cuda_->get_device(&dev, i) != kCudaSuccess) continue;
        char name[256] = {};
        if (cuda_->get_name != nullptr &&
            cuda_->get_name(name, sizeof(name), dev) == kCudaSuccess) {
          device.name = name;
        }
        size_t total = 0;
        if (cuda_->total_mem != nullptr && cuda_->total_mem(&total, dev) == kCudaSuccess) {
          device.memory_total_bytes = total;
        }
      }
      return status;
    }
  }
  status.reason = StrCat("NVML: ", nvml_reason, "; CUDA: ", cuda_reason);
  return status;
}

GpuStatus WaitForGpu(GpuProber& prober, milliseconds timeout, milliseconds interval, int* polls) {
  return WaitForGpuUntil(prober, timeout, interval, polls, nullptr);
}

GpuStatus WaitForGpuUntil(GpuProber& prober, milliseconds timeout, milliseconds interval,
                          int* polls, const std::function<bool(const GpuStatus&)>& give_up) {
  auto deadline = Clock::now() + timeout;
  int count = 0;
  while (true) {
    GpuStatus status = prober.Probe();
    ++count;
    auto now = Clock::now();
    if (status.ready || now >= deadline || (give_up && give_up(status))) {
      if (polls != nullptr) *polls = count;
      return status;
    }
    std::this_thread::sleep_for(std::min<Clock::duration>(interval, deadline - now));
  }
}

int RunGpuWait(const GpuWaitCommand& command, std::ostream& out, std::ostream& err,
               GpuProbeOptions options) {
  GpuProber prober(std::move(options));
  auto start = Clock::now();
  int polls = 0;
  // Without a driver library a GPU cannot appear by waiting (the library
  // comes with the driver), so CPU-only devices answer at once.
  GpuStatus status = WaitForGpuUntil(
      prober, command.timeout, command.interval, &polls,
      [&](const GpuStatus& s) { return !command.require_gpu && !s.driver_present; });
  auto waited = Clock::now() - start;
  std::string mode = status.ready ? "gpu" : (command.require_gpu ? "timeout" : "cpu-only");
  int code = status.ready || !command.require_gpu ? 0 : 1;

  if (command.json) {
    nlohmann::json j;
    j["ready"] = status.ready;
    j["mode"] = mode;
    j["source"] = status.source;
    j["driver_present"] = status.driver_present;
    j["driver_version"] = status.driver_version;
    j["waited_ms"] = std::chrono::duration_cast<milliseconds>(waited).count();
    j["polls"] = polls;
    if (!status.reason.empty()) j["reason"] = status.reason;
    j["devices"] = nlohmann::json::array();
    for (const GpuDevice& d : status.devices) {
      j["devices"].push_back({{"index", d.index},
                              {"name", d.name},
                              {"uuid", d.uuid},
                              {"memory_total_bytes", d.memory_total_bytes},
                              {"memory_used_bytes", d.memory_used_bytes},
                              {"temperature_c", d.temperature_c},
                              {"utilization_percent", d.utilization_percent}});
    }
    out << j.dump() << "\n";
  } else if (status.ready) {
    out << "GPU ready: " << status.devices.size() << " device(s) via "
        << (status.source == "nvml" ? "NVML" : "the CUDA driver API")
        << (status.driver_version.empty() ? "" : ", driver " + status.driver_version) << ", after "
        << Seconds(waited) << "\n";
    for (const GpuDevice& d : status.devices) {
      out << "  #" << d.index << " " << (d.name.empty() ? "(unnamed)" : d.name);
      if (d.memory_total_bytes > 0) out << ", " << GiB(d.memory_total_bytes);
      if (d.temperature_c >= 0) out << ", " << d.temperature_c << " C";
      if (d.utilization_percent >= 0) out << ", " << d.utilization_percent << " % busy";
      out << "\n";
    }
  } else if (!command.require_gpu) {
    out << "cpu-only: no GPU (" << status.reason << ")\n";
  }
  if (!status.ready && command.require_gpu) {
    err << "gpu-wait: no GPU after " << Seconds(waited) << " (" << polls
        << " polls): " << status.reason << "\n";
  } else if (!status.ready && status.driver_present) {
    // A driver without a GPU is a degraded device, not a CPU-only one: say so.
    err << "gpu-wait: warning: a GPU driver is installed but no GPU answered within "
        << Seconds(waited) << "; continuing CPU-only: " << status.reason << "\n";
  }
  return code;
}

}  // namespace outpost::agent
