// tcp_floor: the least any server over loopback TCP can add to a model's
// latency, measured on the machine the benchmark runs on. It is the
// baseline that shows how much of outpost-serve's overhead is the kernel's.
//
// In one process: a "server" thread that owns one blocking TCP connection,
// reads exactly --request-bytes into a buffer made once, runs the model on
// those bytes in place (the tail of the request is the input tensor: no
// parsing, no copy, no HTTP) and writes --response-bytes back; and a client
// that sends a request built once, in a closed loop at concurrency 1, and
// times each round trip. Same session options as outpost-serve and raw_ort
// (bench_common.h). Without --model it only moves the bytes.
//
//   tcp_floor --model DIR/mobilenet_v2/1/model.onnx --request-bytes 602455 --duration 5
//
// Prints the same JSON line as loadgen and raw_ort. Exit 1 when the model
// cannot be loaded or run or a socket fails, 2 for bad flags.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_common.h"

namespace outpost::bench {
namespace {

constexpr std::string_view kUsage = R"(usage: tcp_floor [options]
  --model PATH            model.onnx to run between request and response; its
                          one FP32 input takes the request's last bytes in place
                          (default: no model, only the bytes move)
  --request-bytes N       bytes per request (default: 4096, or with --model the
                          input tensor's size plus 1024 for the headers loadgen sends)
  --response-bytes N      bytes per response (default 4290: mobilenet_v2's binary answer)
  --warmup S              seconds of unmeasured warm-up (default 1)
  --duration S            measured seconds (default 5)
  --requests N            measure exactly N round trips instead of --duration
  --intra-op-threads N    as raw_ort (default 0 = ONNX Runtime's default)
  --busy-poll             the server spins on a non-blocking recv instead of
                          sleeping until the request arrives (burns a core)
)";

// Socket buffers as outpost-serve's listener and loadgen set them: a whole
// request fits, so one write() hands it all to the kernel.
constexpr int kSocketBuffer = 4 << 20;

bool SendAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t sent = ::send(fd, p, n, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) return false;
    p += sent;
    n -= static_cast<size_t>(sent);
  }
  return true;
}

bool RecvAll(int fd, char* p, size_t n, bool busy_poll = false) {
  while (n > 0) {
    ssize_t got = ::recv(fd, p, n, busy_poll ? MSG_DONTWAIT : 0);
    if (got < 0 && (errno == EINTR || (busy_poll && errno == EAGAIN))) continue;
    if (got <= 0) return false;
    p += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

void Tune(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &kSocketBuffer, sizeof(kSocketBuffer));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &kSocketBuffer, sizeof(kSocketBuffer));
}

// The model side: one session, its single FP32 input over a caller's buffer.
struct Model {
  Ort::Env env{ORT_LOGGING_LEVEL_WARNING, "tcp_floor"};
  std::optional<Ort::Session> session;
  std::string input_name;
  std::vector<int64_t> shape;
  size_t input_bytes = 0;
  std::vector<std::string> output_names;

  absl::Status Load(const std::string& path, int intra_op_threads) {
    Ort::SessionOptions options = ServeSessionOptions(intra_op_threads);
    auto loaded = LoadSession(env, path, options);
    if (!loaded.ok()) return loaded.status();
    session.emplace(std::move(*loaded));
    if (session->GetInputCount() != 1) {
      return absl::InvalidArgumentError(path + ": tcp_floor takes a model with one input");
    }
    Ort::AllocatorWithDefaultOptions allocator;
    input_name = session->GetInputNameAllocated(0, allocator).get();
    Ort::TypeInfo type_info = session->GetInputTypeInfo(0);
    auto info = type_info.GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      return absl::InvalidArgumentError(path + ": tcp_floor takes an FP32 input");
    }
    size_t count = 1;
    for (int64_t d : info.GetShape()) {
      shape.push_back(d < 0 ? 1 : d);
      count *= static_cast<size_t>(shape.back());
    }
    input_bytes = count * sizeof(float);
    for (size_t i = 0; i < session->GetOutputCount(); ++i) {
      output_names.push_back(session->GetOutputNameAllocated(i, allocator).get());
    }
    return absl::OkStatus();
  }

  // Runs on `data` (input_bytes, in place); false on an ONNX Runtime error.
  bool Run(char* data) {
    static const Ort::MemoryInfo memory =
        Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value value = Ort::Value::CreateTensor(memory, data, input_bytes, shape.data(),
                                                shape.size(), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
    const char* in_names[] = {input_name.c_str()};
    std::vector<const char*> out_names;
    for (const auto& n : output_names) out_names.push_back(n.c_str());
    try {
      auto outputs = session->Run(Ort::RunOptions{nullptr}, in_names, &value, 1, out_names.data(),
                                  out_names.size());
      return !outputs.empty();
    } catch (const Ort::Exception&) {
      return false;
    }
  }
};

int Run(const Flags& flags) {
  auto request_flag = flags.GetInt("request-bytes", 0);
  auto response_bytes = flags.GetInt("response-bytes", 4290);
  auto warmup = flags.GetDouble("warmup", 1);
  auto duration = flags.GetDouble("duration", 5);
  auto requests = flags.GetInt("requests", 0);
  auto intra = flags.GetInt("intra-op-threads", 0);
  for (const absl::Status& s : {request_flag.status(), response_bytes.status(), warmup.status(),
                                duration.status(), requests.status(), intra.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "tcp_floor: %s\n", s.message().data());
      return 2;
    }
  }

  const bool busy_poll = flags.Has("busy-poll");
  Model model;
  const std::string model_path = flags.Get("model");
  if (!model_path.empty()) {
    absl::Status loaded = model.Load(model_path, static_cast<int>(*intra));
    if (!loaded.ok()) {
      std::fprintf(stderr, "tcp_floor: %s\n", loaded.ToString().c_str());
      return 1;
    }
  }
  const size_t request_bytes = *request_flag > 0
                                   ? static_cast<size_t>(*request_flag)
                                   : (model.session ? model.input_bytes + 1024 : size_t{4096});
  if (*response_bytes < 1 || request_bytes < model.input_bytes) {
    std::fprintf(stderr,
                 "tcp_floor: --request-bytes must hold the input tensor (%zu B) and "
                 "--response-bytes must be >= 1\n",
                 model.input_bytes);
    return 2;
  }

  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ::setsockopt(listener, SOL_SOCKET, SO_RCVBUF, &kSocketBuffer, sizeof(kSocketBuffer));
  if (listener < 0 || ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::fprintf(stderr, "tcp_floor: cannot listen on loopback: %s\n", std::strerror(errno));
    return 1;
  }

  // Server: read a whole request, run the model on its tail, answer.
  std::vector<char> server_in(request_bytes);
  std::vector<char> server_out(static_cast<size_t>(*response_bytes), 'r');
  std::atomic<bool> server_failed{false};
  std::thread server([&] {
    int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      server_failed = true;
      return;
    }
    Tune(fd);
    char* input = server_in.data() + (request_bytes - model.input_bytes);
    while (RecvAll(fd, server_in.data(), server_in.size(), busy_poll)) {
      if (model.session && !model.Run(input)) server_failed = true;
      if (!SendAll(fd, server_out.data(), server_out.size())) break;
    }
    ::close(fd);
  });

  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  Tune(fd);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::fprintf(stderr, "tcp_floor: connect: %s\n", std::strerror(errno));
    ::shutdown(listener, SHUT_RDWR);
    server.join();
    return 1;
  }
  // Random floats as loadgen sends (the bytes before the tensor stand for
  // the HTTP and JSON headers).
  std::vector<char> request(request_bytes, 'h');
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (size_t off = request_bytes - model.input_bytes; off + sizeof(float) <= request_bytes;
       off += sizeof(float)) {
    const float f = dist(rng);
    std::memcpy(request.data() + off, &f, sizeof(f));
  }
  std::vector<char> response(static_cast<size_t>(*response_bytes));

  LoopOptions loop{.concurrency = 1,
                   .warmup_seconds = *warmup,
                   .duration_seconds = *duration,
                   .requests = *requests};
  Summary summary = RunClosedLoop(loop, [&](int) {
    return SendAll(fd, request.data(), request.size()) &&
           RecvAll(fd, response.data(), response.size()) && !server_failed.load();
  });
  ::shutdown(fd, SHUT_RDWR);
  ::close(fd);
  server.join();
  ::close(listener);
  if (server_failed) {
    std::fprintf(stderr, "tcp_floor: the server side failed (accept or Run)\n");
    return 1;
  }
  std::string json = SummaryJson(summary);
  json.pop_back();
  std::printf(
      "%s,\"mode\":\"%s\",\"concurrency\":1,\"request_bytes\":%zu,"
      "\"response_bytes\":%lld}\n",
      json.c_str(), model.session ? "tcp_floor_model" : "tcp_floor", request_bytes,
      static_cast<long long>(*response_bytes));
  return 0;
}

}  // namespace
}  // namespace outpost::bench

int main(int argc, char** argv) {
  return outpost::bench::ToolMain(argc, argv, "tcp_floor",
                                  {"help", "model", "request-bytes", "response-bytes", "warmup",
                                   "duration", "requests", "intra-op-threads", "busy-poll"},
                                  outpost::bench::kUsage, outpost::bench::Run);
}
