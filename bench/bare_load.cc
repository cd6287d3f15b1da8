// bare_load: the memory baseline for outpost-serve. Loads one model into an
// ONNX Runtime session with the server's session options, prints READY,
// and sleeps until killed, so its VmRSS (/proc/PID/status) is what ONNX
// Runtime alone needs to hold the model.
//
//   bare_load --model DIR/mobilenet_v2/1/model.onnx [--warmup-runs N]
//
// --warmup-runs N (default 0) runs the model N times with zero inputs before
// READY: outpost-serve warms every model up once at load, which grows the CPU
// arena, so the bench reports both figures. Exit 1 when the model cannot be
// loaded, 2 for bad flags.
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "bench/bench_common.h"

namespace outpost::bench {
namespace {

constexpr std::string_view kUsage =
    "usage: bare_load --model PATH [--warmup-runs N]\n"
    "  loads PATH with outpost-serve's session options, prints READY, sleeps until killed\n";

int Run(const Flags& flags) {
  std::string model = flags.Get("model");
  auto warmup_runs = flags.GetInt("warmup-runs", 0);
  if (!warmup_runs.ok() || model.empty()) {
    std::fprintf(stderr, "bare_load: need --model PATH and an integer --warmup-runs\n%s",
                 kUsage.data());
    return 2;
  }
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "bare_load");
  Ort::SessionOptions options = ServeSessionOptions();
  auto session = LoadSession(env, model, options);
  if (!session.ok()) {
    std::fprintf(stderr, "bare_load: %s\n", session.status().ToString().c_str());
    return 1;
  }
  if (*warmup_runs > 0) {
    Ort::AllocatorWithDefaultOptions allocator;
    std::vector<std::string> in_names_s, out_names_s;
    std::vector<std::vector<int64_t>> shapes;
    std::vector<std::vector<float>> buffers;
    std::vector<Ort::Value> values;
    Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    for (size_t i = 0; i < session->GetInputCount(); ++i) {
      in_names_s.push_back(session->GetInputNameAllocated(i, allocator).get());
      Ort::TypeInfo type_info = session->GetInputTypeInfo(i);  // owns what info views
      auto info = type_info.GetTensorTypeAndShapeInfo();
      if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        std::fprintf(stderr, "bare_load: --warmup-runs supports FP32 inputs only\n");
        return 1;
      }
      std::vector<int64_t> shape;
      size_t count = 1;
      for (int64_t d : info.GetShape()) {
        shape.push_back(d < 0 ? 1 : d);
        count *= static_cast<size_t>(shape.back());
      }
      shapes.push_back(std::move(shape));
      buffers.emplace_back(count, 0.0f);
    }
    for (size_t i = 0; i < shapes.size(); ++i) {
      values.push_back(Ort::Value::CreateTensor<float>(memory, buffers[i].data(), buffers[i].size(),
                                                       shapes[i].data(), shapes[i].size()));
    }
    for (size_t i = 0; i < session->GetOutputCount(); ++i) {
      out_names_s.push_back(session->GetOutputNameAllocated(i, allocator).get());
    }
    std::vector<const char*> in_names, out_names;
    for (const auto& n : in_names_s) in_names.push_back(n.c_str());
    for (const auto& n : out_names_s) out_names.push_back(n.c_str());
    for (int64_t r = 0; r < *warmup_runs; ++r) {
      session->Run(Ort::RunOptions{nullptr}, in_names.data(), values.data(), values.size(),
                   out_names.data(), out_names.size());
    }
  }
  std::printf("READY\n");
  std::fflush(stdout);
  for (;;) ::pause();
}

}  // namespace
}  // namespace outpost::bench

int main(int argc, char** argv) {
  return outpost::bench::ToolMain(argc, argv, "bare_load", {"help", "model", "warmup-runs"},
                                  outpost::bench::kUsage, outpost::bench::Run);
}
