/* A stand-in for libcuda.so.1 so gpu_test can drive the CUDA driver API
 * fallback on machines without a GPU. Environment, read at every call:
 *   FAKE_CUDA_INIT_ERROR=N  cuInit returns N (100 = no device)
 *   FAKE_CUDA_DEVICES=N     cuDeviceGetCount (default 1) */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

static int env_int(const char* name, int fallback) {
  const char* value = getenv(name);
  return value && *value ? atoi(value) : fallback;
}

int cuInit(unsigned int flags) { return flags != 0 ? 1 : env_int("FAKE_CUDA_INIT_ERROR", 0); }

int cuGetErrorString(int error, const char** text) {
  *text = error == 100 ? "no CUDA-capable device is detected" : "unknown error";
  return 0;
}

int cuDeviceGetCount(int* count) {
  *count = env_int("FAKE_CUDA_DEVICES", 1);
  return 0;
}

int cuDeviceGet(int* device, int ordinal) {
  *device = ordinal;
  return 0;
}

int cuDeviceGetName(char* name, int length, int device) {
  snprintf(name, (size_t)length, "Fake CUDA GPU %d", device);
  return 0;
}

int cuDeviceTotalMem_v2(size_t* bytes, int device) {
  *bytes = (size_t)8 << 30;
  return 0;
}

int cuDriverGetVersion(int* version) {
  *version = 12040;
  return 0;
}
