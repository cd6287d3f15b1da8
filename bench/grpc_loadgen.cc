// grpc_loadgen: a closed-loop load generator for the KServe v2 gRPC API
// (outpost-serve --grpc-port, or any server speaking inference.GRPCInferenceService).
//
//   grpc_loadgen --port 8001 --model mobilenet_v2 --concurrency 4 --duration 5
//
// Each of N threads owns its own channel (its own HTTP/2 connection) and
// sends the same ModelInferRequest, built once with the input in
// raw_input_contents, in a closed loop of blocking ModelInfer calls. The
// input is random floats (fixed seed); its name and shape come from
// --input-name/--shape or from ModelMetadata (dynamic dimensions become 1).
//
// Prints one JSON line like loadgen's: {"p50_ms","p95_ms","p99_ms",
// "mean_ms","throughput_rps","requests","errors","seconds","mode":"grpc",
// "concurrency","request_bytes"}. Exit code 0 on success, 1 when the server
// is unreachable or the first request fails (its status is printed), 2 for
// bad flags.
#include <grpcpp/grpcpp.h>

#include <charconv>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_common.h"
#include "grpc_service.grpc.pb.h"

namespace outpost::bench {
namespace {

constexpr std::string_view kUsage = R"(usage: grpc_loadgen --port N --model NAME [options]
  --host ADDR          server address (default 127.0.0.1)
  --port N             gRPC port (required)
  --model NAME         model name (required)
  --version V          model version (default: the server's newest)
  --concurrency N      channels = threads (default 1)
  --warmup S           seconds of unmeasured warm-up (default 1)
  --duration S         measured seconds (default 5)
  --requests N         measure exactly N requests instead of --duration
  --input-name NAME    skip the metadata request: input name ...
  --shape D,D,...      ... and its full shape (FP32 only)
  --output-name NAME   output to request (default: every output)
)";

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target) {
  grpc::ChannelArguments args;
  // A channel of its own per thread, not one shared connection.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

int Main(const Flags& flags) {
  auto port = flags.GetInt("port", 0);
  auto concurrency = flags.GetInt("concurrency", 1);
  auto warmup = flags.GetDouble("warmup", 1);
  auto duration = flags.GetDouble("duration", 5);
  auto requests = flags.GetInt("requests", 0);
  for (const absl::Status& s : {port.status(), concurrency.status(), warmup.status(),
                                duration.status(), requests.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "grpc_loadgen: %s\n", s.message().data());
      return 2;
    }
  }
  const std::string model = flags.Get("model");
  if (*port <= 0 || *port > 65535 || model.empty() || *concurrency < 1) {
    std::fprintf(stderr, "grpc_loadgen: need --port, --model, --concurrency >= 1\n%s",
                 kUsage.data());
    return 2;
  }
  const std::string target = absl::StrCat(flags.Get("host", "127.0.0.1"), ":", *port);

  std::string input_name;
  std::vector<int64_t> shape;
  auto probe = inference::GRPCInferenceService::NewStub(NewChannel(target));
  if (flags.Has("input-name") && flags.Has("shape")) {
    input_name = flags.Get("input-name");
    const std::string text = flags.Get("shape");
    for (size_t start = 0; start <= text.size();) {
      size_t comma = std::min(text.find(',', start), text.size());
      int64_t v = 0;
      auto r = std::from_chars(text.data() + start, text.data() + comma, v);
      if (r.ec != std::errc() || r.ptr != text.data() + comma || v <= 0) {
        std::fprintf(stderr, "grpc_loadgen: --shape: bad dimension in '%s'\n", text.c_str());
        return 2;
      }
      shape.push_back(v);
      start = comma + 1;
    }
  } else {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    inference::ModelMetadataRequest req;
    req.set_name(model);
    req.set_version(flags.Get("version"));
    inference::ModelMetadataResponse meta;
    grpc::Status status = probe->ModelMetadata(&ctx, req, &meta);
    if (!status.ok() || meta.inputs_size() != 1 || meta.inputs(0).datatype() != "FP32") {
      std::fprintf(stderr, "grpc_loadgen: ModelMetadata: %s (need one FP32 input)\n",
                   status.error_message().c_str());
      return 1;
    }
    input_name = meta.inputs(0).name();
    for (int64_t d : meta.inputs(0).shape()) shape.push_back(d < 0 ? 1 : d);
  }

  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  std::vector<float> data(count);
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& v : data) v = dist(rng);

  inference::ModelInferRequest request;
  request.set_model_name(model);
  request.set_model_version(flags.Get("version"));
  auto* input = request.add_inputs();
  input->set_name(input_name);
  input->set_datatype("FP32");
  for (int64_t d : shape) input->add_shape(d);
  request.add_raw_input_contents(data.data(), data.size() * sizeof(float));
  if (flags.Has("output-name")) request.add_outputs()->set_name(flags.Get("output-name"));

  {
    grpc::ClientContext ctx;
    inference::ModelInferResponse response;
    grpc::Status status = probe->ModelInfer(&ctx, request, &response);
    if (!status.ok()) {
      std::fprintf(stderr, "grpc_loadgen: first request failed: code %d: %s\n",
                   static_cast<int>(status.error_code()), status.error_message().c_str());
      return 1;
    }
  }

  std::vector<std::unique_ptr<inference::GRPCInferenceService::Stub>> stubs;
  for (int i = 0; i < *concurrency; ++i) {
    stubs.push_back(inference::GRPCInferenceService::NewStub(NewChannel(target)));
  }
  // Per-worker response messages, reused: protobuf keeps their buffers.
  std::vector<inference::ModelInferResponse> responses(static_cast<size_t>(*concurrency));
  LoopOptions loop{.concurrency = static_cast<int>(*concurrency),
                   .warmup_seconds = *warmup,
                   .duration_seconds = *duration,
                   .requests = *requests};
  Summary summary = RunClosedLoop(loop, [&](int w) {
    grpc::ClientContext ctx;
    return stubs[w]->ModelInfer(&ctx, request, &responses[w]).ok();
  });
  std::string json = SummaryJson(summary);
  json.pop_back();
  std::printf("%s,\"mode\":\"grpc\",\"concurrency\":%d,\"request_bytes\":%zu}\n", json.c_str(),
              static_cast<int>(*concurrency), request.ByteSizeLong());
  return 0;
}

}  // namespace
}  // namespace outpost::bench

int main(int argc, char** argv) {
  return outpost::bench::ToolMain(
      argc, argv, "grpc_loadgen",
      {"help", "host", "port", "model", "version", "concurrency", "warmup", "duration", "requests",
       "input-name", "shape", "output-name"},
      outpost::bench::kUsage, outpost::bench::Main);
}
