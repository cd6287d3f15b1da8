// raw_ort: the in-process ONNX Runtime baseline outpost-serve is measured
// against. One session with the server's session options (bench_common.h);
// N threads each call Session::Run on it in a closed loop, as N scheduler
// instances would. Inputs are random (float) or zero (other types) tensors
// wrapping buffers made once; outputs are allocated by ONNX Runtime per run,
// as in the server.
//
//   raw_ort --model DIR/mobilenet_v2/1/model.onnx --concurrency 4 --duration 5
//
// Prints the same JSON line as loadgen. Exit 1 when the model cannot be
// loaded or run, 2 for bad flags.
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "bench/bench_common.h"

namespace outpost::bench {
namespace {

constexpr std::string_view kUsage = R"(usage: raw_ort --model PATH [options]
  --model PATH            model.onnx (required)
  --concurrency N         threads calling Run on the one session (default 1)
  --warmup S              seconds of unmeasured warm-up (default 1)
  --duration S            measured seconds (default 5)
  --requests N            measure exactly N runs instead of --duration
  --intra-op-threads N    0 = ONNX Runtime's default, as outpost-serve (default 0)
  --inter-op-threads N    (default 1, as outpost-serve)
  --session-config K=V,.. ONNX Runtime session config entries, as a model's
                          config.yaml `session_config` gives outpost-serve
)";

size_t ElementSize(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8:
      return 1;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
      return 2;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
      return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE:
      return 8;
    default:
      return 0;
  }
}

struct Input {
  std::string name;
  ONNXTensorElementDataType type;
  std::vector<int64_t> shape;
  std::vector<char> data;
};

int Run(const Flags& flags) {
  std::string model = flags.Get("model");
  auto concurrency = flags.GetInt("concurrency", 1);
  auto warmup = flags.GetDouble("warmup", 1);
  auto duration = flags.GetDouble("duration", 5);
  auto requests = flags.GetInt("requests", 0);
  auto intra = flags.GetInt("intra-op-threads", 0);
  auto inter = flags.GetInt("inter-op-threads", 1);
  for (const absl::Status& s : {concurrency.status(), warmup.status(), duration.status(),
                                requests.status(), intra.status(), inter.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "raw_ort: %s\n", s.message().data());
      return 2;
    }
  }
  if (model.empty() || *concurrency < 1) {
    std::fprintf(stderr, "raw_ort: need --model and --concurrency >= 1\n%s", kUsage.data());
    return 2;
  }

  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "raw_ort");
  Ort::SessionOptions options =
      ServeSessionOptions(static_cast<int>(*intra), static_cast<int>(*inter));
  for (absl::string_view entry :
       absl::StrSplit(flags.Get("session-config"), ',', absl::SkipEmpty())) {
    const size_t eq = entry.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      std::fprintf(stderr, "raw_ort: --session-config wants KEY=VALUE, got '%.*s'\n",
                   static_cast<int>(entry.size()), entry.data());
      return 2;
    }
    options.AddConfigEntry(std::string(entry.substr(0, eq)).c_str(),
                           std::string(entry.substr(eq + 1)).c_str());
  }
  auto session_or = LoadSession(env, model, options);
  if (!session_or.ok()) {
    std::fprintf(stderr, "raw_ort: %s\n", session_or.status().ToString().c_str());
    return 1;
  }
  Ort::Session& session = *session_or;

  Ort::AllocatorWithDefaultOptions allocator;
  std::vector<Input> inputs;
  std::vector<std::string> output_names;
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (size_t i = 0; i < session.GetInputCount(); ++i) {
    Input in;
    in.name = session.GetInputNameAllocated(i, allocator).get();
    Ort::TypeInfo type_info = session.GetInputTypeInfo(i);  // owns what info views
    auto info = type_info.GetTensorTypeAndShapeInfo();
    in.type = info.GetElementType();
    size_t count = 1;
    for (int64_t d : info.GetShape()) {
      in.shape.push_back(d < 0 ? 1 : d);
      count *= static_cast<size_t>(in.shape.back());
    }
    size_t elem = ElementSize(in.type);
    if (elem == 0) {
      std::fprintf(stderr, "raw_ort: input '%s' has an unsupported element type %d\n",
                   in.name.c_str(), static_cast<int>(in.type));
      return 1;
    }
    in.data.assign(count * elem, 0);
    if (in.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      auto* f = reinterpret_cast<float*>(in.data.data());
      for (size_t k = 0; k < count; ++k) f[k] = dist(rng);
    }
    inputs.push_back(std::move(in));
  }
  for (size_t i = 0; i < session.GetOutputCount(); ++i) {
    output_names.push_back(session.GetOutputNameAllocated(i, allocator).get());
  }
  std::vector<const char*> in_names, out_names;
  for (const auto& in : inputs) in_names.push_back(in.name.c_str());
  for (const auto& n : output_names) out_names.push_back(n.c_str());

  // Per-thread input values over the shared buffers: Run only reads them.
  Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<std::vector<Ort::Value>> values(static_cast<size_t>(*concurrency));
  for (auto& per_thread : values) {
    for (auto& in : inputs) {
      per_thread.push_back(Ort::Value::CreateTensor(memory, in.data.data(), in.data.size(),
                                                    in.shape.data(), in.shape.size(), in.type));
    }
  }

  // One run before timing, so a model that cannot run fails loudly.
  try {
    session.Run(Ort::RunOptions{nullptr}, in_names.data(), values[0].data(), in_names.size(),
                out_names.data(), out_names.size());
  } catch (const Ort::Exception& e) {
    std::fprintf(stderr, "raw_ort: first Run of %s failed: %s\n", model.c_str(), e.what());
    return 1;
  }

  LoopOptions loop{.concurrency = static_cast<int>(*concurrency),
                   .warmup_seconds = *warmup,
                   .duration_seconds = *duration,
                   .requests = *requests};
  Summary summary = RunClosedLoop(loop, [&](int w) {
    try {
      std::vector<Ort::Value> outputs =
          session.Run(Ort::RunOptions{nullptr}, in_names.data(), values[w].data(), in_names.size(),
                      out_names.data(), out_names.size());
      return !outputs.empty();
    } catch (const Ort::Exception&) {
      return false;
    }
  });
  std::string json = SummaryJson(summary);
  json.pop_back();
  std::printf("%s,\"mode\":\"raw\",\"concurrency\":%d,\"ort_version\":\"%s\"}\n", json.c_str(),
              static_cast<int>(*concurrency), Ort::GetVersionString().c_str());
  return 0;
}

}  // namespace
}  // namespace outpost::bench

int main(int argc, char** argv) {
  return outpost::bench::ToolMain(argc, argv, "raw_ort",
                                  {"help", "model", "concurrency", "warmup", "duration", "requests",
                                   "intra-op-threads", "inter-op-threads", "session-config"},
                                  outpost::bench::kUsage, outpost::bench::Run);
}
