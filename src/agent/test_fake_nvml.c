/* A stand-in for libnvidia-ml.so.1 so gpu_test can drive the NVML path on
 * machines without a GPU. Behaviour comes from the environment, read at
 * nvmlInit:
 *   FAKE_NVML_INIT_ERROR=N     nvmlInit_v2 returns N (9 = driver not loaded)
 *   FAKE_NVML_DEVICES=N        device count once up (default 1)
 *   FAKE_NVML_DEVICES_AFTER=K  nvmlDeviceGetCount_v2 reports 0 for its first
 *                              K calls (a GPU that comes up late)
 * Only the functions outpost's gpu.cc uses, with NVML's C ABI. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  unsigned long long total, free, used;
} fake_memory;
typedef struct {
  unsigned int gpu, memory;
} fake_utilization;

static int g_devices = 1;
static int g_devices_after = 0;
static int g_count_calls = 0;
static int g_initialized = 0;
static int g_device_tags[16];

static int env_int(const char* name, int fallback) {
  const char* value = getenv(name);
  return value && *value ? atoi(value) : fallback;
}

int nvmlInit_v2(void) {
  int error = env_int("FAKE_NVML_INIT_ERROR", 0);
  if (error) return error;
  g_devices = env_int("FAKE_NVML_DEVICES", 1);
  if (g_devices > 16) g_devices = 16;
  g_devices_after = env_int("FAKE_NVML_DEVICES_AFTER", 0);
  g_count_calls = 0;
  g_initialized = 1;
  return 0;
}

int nvmlShutdown(void) {
  if (!g_initialized) return 1; /* NVML_ERROR_UNINITIALIZED */
  g_initialized = 0;
  return 0;
}

const char* nvmlErrorString(int result) {
  switch (result) {
    case 0:
      return "Success";
    case 1:
      return "Uninitialized";
    case 9:
      return "Driver Not Loaded";
    case 15:
      return "GPU is lost";
    default:
      return "Unknown Error";
  }
}

int nvmlDeviceGetCount_v2(unsigned int* count) {
  if (!g_initialized) return 1;
  *count = g_count_calls++ < g_devices_after ? 0u : (unsigned int)g_devices;
  return 0;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void** device) {
  if (!g_initialized) return 1;
  if ((int)index >= g_devices) return 2; /* NVML_ERROR_INVALID_ARGUMENT */
  *device = &g_device_tags[index];
  return 0;
}

static int index_of(void* device) { return (int)((int*)device - g_device_tags); }

int nvmlDeviceGetName(void* device, char* name, unsigned int length) {
  snprintf(name, length, "Fake GPU %d", index_of(device));
  return 0;
}

int nvmlDeviceGetUUID(void* device, char* uuid, unsigned int length) {
  snprintf(uuid, length, "GPU-fake-%04d", index_of(device));
  return 0;
}

int nvmlDeviceGetMemoryInfo(void* device, fake_memory* memory) {
  memory->total = 16ull << 30;
  memory->used = (1ull << 30) * (unsigned long long)(index_of(device) + 1);
  memory->free = memory->total - memory->used;
  return 0;
}

int nvmlDeviceGetTemperature(void* device, int sensor, unsigned int* temperature) {
  if (sensor != 0) return 3; /* NVML_ERROR_NOT_SUPPORTED */
  *temperature = 40u + (unsigned int)index_of(device);
  return 0;
}

int nvmlDeviceGetUtilizationRates(void* device, fake_utilization* utilization) {
  utilization->gpu = 7;
  utilization->memory = 3;
  return 0;
}

int nvmlSystemGetDriverVersion(char* version, unsigned int length) {
  snprintf(version, length, "999.99.fake");
  return 0;
}
