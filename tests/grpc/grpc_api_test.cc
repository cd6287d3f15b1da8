// End-to-end suite of outpost-serve's KServe v2 gRPC API: a real
// outpost-serve process per test on a temporary model repository, driven
// through the stub generated from proto/grpc_service.proto on loopback.
//
// Environment (set by ctest): OUTPOST_SERVE_BIN, OUTPOST_TEST_MODELS.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/tls_pki.h"
#include "grpc_service.grpc.pb.h"

namespace {

namespace fs = std::filesystem;
using inference::GRPCInferenceService;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using ::testing::HasSubstr;

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') {
    ADD_FAILURE() << name << " is not set: run through ctest (ctest -R grpc)";
    return "";
  }
  return value;
}

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Reads `"key": N` from the port file's one-line JSON.
int JsonInt(const std::string& text, const std::string& key) {
  size_t at = text.find("\"" + key + "\":");
  if (at == std::string::npos) return -1;
  return std::atoi(text.c_str() + at + key.size() + 3);
}

// A real outpost-serve on a temporary repository with HTTP and gRPC on free
// ports. Stop() sends SIGTERM and expects exit code 0 within 15 s.
class Serve {
 public:
  struct Options {
    std::map<std::string, std::vector<int>> models;  // name -> versions to copy
    std::map<std::string, std::string> configs;      // name -> config.yaml
    std::vector<std::string> flags;
    std::string tls_ca_file;  // set: talk TLS, trusting this CA
  };

  explicit Serve(Options options) : options_(std::move(options)) {
    char tmpl[] = "/tmp/outpost-grpc-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    repo_ = dir_ / "models";
    for (const auto& [name, versions] : options_.models) {
      for (int v : versions) AddVersion(name, v, name, v);
    }
    for (const auto& [name, text] : options_.configs) {
      std::ofstream(repo_ / name / "config.yaml") << text;
    }
  }
  ~Serve() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (!::testing::Test::HasFailure())
      fs::remove_all(dir_);
    else
      std::cerr << "outpost-serve log kept in " << (dir_ / "serve.log") << "\n"
                << ReadAll(dir_ / "serve.log").substr(0, 20000);
  }

  // Copies test model src_name/src_version to <repo>/name/version.
  void AddVersion(const std::string& name, int version, const std::string& src_name,
                  int src_version) {
    fs::path src = fs::path(Env("OUTPOST_TEST_MODELS")) / src_name / std::to_string(src_version) /
                   "model.onnx";
    fs::path dst = repo_ / name / std::to_string(version);
    fs::create_directories(dst);
    fs::copy_file(src, dst / "model.onnx.tmp", fs::copy_options::overwrite_existing);
    fs::rename(dst / "model.onnx.tmp", dst / "model.onnx");
  }

  // Starts the process; false (with the log) when it exits or never listens.
  bool Start(bool wait_ready = true) {
    fs::path port_file = dir_ / "ports.json";
    std::vector<std::string> args = {Env("OUTPOST_SERVE_BIN"),
                                     "--model-repository",
                                     repo_.string(),
                                     "--http-port",
                                     "0",
                                     "--port-file",
                                     port_file.string()};
    if (std::find(options_.flags.begin(), options_.flags.end(), "--grpc-port") ==
        options_.flags.end()) {
      args.insert(args.end(), {"--grpc-port", "0"});
    }
    args.insert(args.end(), options_.flags.begin(), options_.flags.end());
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open((dir_ / "serve.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        exit_status_ = status;
        return false;
      }
      if (fs::exists(port_file)) {
        std::string text = ReadAll(port_file);
        http_port_ = JsonInt(text, "http");
        grpc_port_ = JsonInt(text, "grpc");
        if (grpc_port_ > 0) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (grpc_port_ <= 0) return false;
    if (options_.tls_ca_file.empty()) {
      channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(grpc_port_),
                                     grpc::InsecureChannelCredentials());
    } else {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = ReadAll(options_.tls_ca_file);
      channel_ =
          grpc::CreateChannel("localhost:" + std::to_string(grpc_port_), grpc::SslCredentials(ssl));
    }
    stub_ = GRPCInferenceService::NewStub(channel_);
    while (wait_ready && std::chrono::steady_clock::now() < deadline) {
      grpc::ClientContext ctx;
      inference::ServerReadyResponse ready;
      if (stub_->ServerReady(&ctx, {}, &ready).ok() && ready.ready()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return !wait_ready;
  }

  // SIGTERM; the exit status (-1 when it had to be killed after 15 s).
  int Stop() {
    if (pid_ <= 0) return exit_status_;
    kill(pid_, SIGTERM);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

  // Exit code of a process that ended by itself in Start().
  int exit_code() const { return WIFEXITED(exit_status_) ? WEXITSTATUS(exit_status_) : -1; }
  std::string log() const { return ReadAll(dir_ / "serve.log"); }
  GRPCInferenceService::Stub& stub() { return *stub_; }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }
  int grpc_port() const { return grpc_port_; }

  // GET /metrics over plain HTTP/1.0.
  std::string Metrics() const {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(http_port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string out;
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      std::string req = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
      (void)!write(fd, req.data(), req.size());
      char buf[65536];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
    }
    close(fd);
    return out;
  }

 private:
  Options options_;
  fs::path dir_;
  fs::path repo_;
  pid_t pid_ = -1;
  int exit_status_ = 0;
  int http_port_ = -1;
  int grpc_port_ = -1;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<GRPCInferenceService::Stub> stub_;
};

// The value of the sample `name{...model="<model>"...}` in a Prometheus text.
double Sample(const std::string& text, const std::string& name, const std::string& model,
              const std::string& extra = "") {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + "{", 0) != 0) continue;
    if (line.find("model=\"" + model + "\"") == std::string::npos) continue;
    if (!extra.empty() && line.find(extra) == std::string::npos) continue;
    return std::atof(line.c_str() + line.rfind(' ') + 1);
  }
  return -1;
}

ModelInferRequest RawRequest(const std::string& model, const std::string& input,
                             const std::vector<float>& values, std::vector<int64_t> shape) {
  ModelInferRequest req;
  req.set_model_name(model);
  auto* in = req.add_inputs();
  in->set_name(input);
  in->set_datatype("FP32");
  for (int64_t d : shape) in->add_shape(d);
  req.add_raw_input_contents(values.data(), values.size() * sizeof(float));
  return req;
}

std::vector<float> RawFloats(const ModelInferResponse& resp, int index) {
  const std::string& raw = resp.raw_output_contents(index);
  std::vector<float> out(raw.size() / sizeof(float));
  std::memcpy(out.data(), raw.data(), out.size() * sizeof(float));
  return out;
}

std::vector<int64_t> RawInt64s(const ModelInferResponse& resp, int index) {
  const std::string& raw = resp.raw_output_contents(index);
  std::vector<int64_t> out(raw.size() / sizeof(int64_t));
  std::memcpy(out.data(), raw.data(), out.size() * sizeof(int64_t));
  return out;
}

grpc::Status Infer(Serve& serve, const ModelInferRequest& req, ModelInferResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return serve.stub().ModelInfer(&ctx, req, resp);
}

// Sends `requests` at once with the async callback API; returns the statuses.
std::vector<grpc::Status> InferAll(Serve& serve, const std::vector<ModelInferRequest>& requests,
                                   std::vector<ModelInferResponse>* responses) {
  size_t n = requests.size();
  responses->assign(n, {});
  std::vector<grpc::Status> statuses(n);
  std::vector<grpc::ClientContext> contexts(n);
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;
  for (size_t i = 0; i < n; ++i) {
    contexts[i].set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    serve.stub().async()->ModelInfer(&contexts[i], &requests[i], &(*responses)[i],
                                     [&, i](grpc::Status s) {
                                       std::lock_guard lock(mu);
                                       statuses[i] = std::move(s);
                                       ++done;
                                       cv.notify_all();
                                     });
  }
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return done == n; });
  return statuses;
}

TEST(GrpcApiTest, HealthAndMetadata) {
  Serve serve({.models = {{"add_one", {1}}, {"two_io", {1}}}});
  ASSERT_TRUE(serve.Start()) << serve.log();
  auto& stub = serve.stub();
  {
    grpc::ClientContext ctx;
    inference::ServerLiveResponse resp;
    ASSERT_TRUE(stub.ServerLive(&ctx, {}, &resp).ok());
    EXPECT_TRUE(resp.live());
  }
  {
    grpc::ClientContext ctx;
    inference::ServerMetadataResponse resp;
    ASSERT_TRUE(stub.ServerMetadata(&ctx, {}, &resp).ok());
    EXPECT_EQ(resp.name(), "outpost-serve");
    EXPECT_FALSE(resp.version().empty());
    EXPECT_THAT(resp.extensions(), ::testing::Contains("model_repository"));
  }
  {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest req;
    req.set_name("add_one");
    inference::ModelReadyResponse resp;
    ASSERT_TRUE(stub.ModelReady(&ctx, req, &resp).ok());
    EXPECT_TRUE(resp.ready());
  }
  for (auto [name, version, code] :
       {std::tuple<const char*, const char*, grpc::StatusCode>{"nope", "", grpc::NOT_FOUND},
        {"add_one", "9", grpc::NOT_FOUND},
        {"add_one", "x", grpc::INVALID_ARGUMENT}}) {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest req;
    req.set_name(name);
    req.set_version(version);
    inference::ModelReadyResponse resp;
    grpc::Status status = stub.ModelReady(&ctx, req, &resp);
    EXPECT_EQ(status.error_code(), code)
        << name << " " << version << ": " << status.error_message();
  }
  {
    grpc::ClientContext ctx;
    inference::ModelMetadataRequest req;
    req.set_name("two_io");
    inference::ModelMetadataResponse resp;
    ASSERT_TRUE(stub.ModelMetadata(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.name(), "two_io");
    EXPECT_THAT(resp.versions(), ::testing::ElementsAre("1"));
    EXPECT_EQ(resp.platform(), "onnxruntime_onnx");
    ASSERT_EQ(resp.inputs_size(), 2);
    EXPECT_EQ(resp.inputs(0).name(), "a");
    EXPECT_EQ(resp.inputs(0).datatype(), "FP32");
    EXPECT_THAT(resp.inputs(0).shape(), ::testing::ElementsAre(-1, 3));
    EXPECT_EQ(resp.inputs(1).datatype(), "INT64");
    ASSERT_EQ(resp.outputs_size(), 2);
  }
  {
    grpc::ClientContext ctx;
    inference::ModelMetadataRequest req;
    req.set_name("missing");
    inference::ModelMetadataResponse resp;
    grpc::Status status = stub.ModelMetadata(&ctx, req, &resp);
    EXPECT_EQ(status.error_code(), grpc::NOT_FOUND);
    EXPECT_THAT(status.error_message(), HasSubstr("missing"));
  }
  EXPECT_EQ(serve.Stop(), 0);
}

TEST(GrpcApiTest, InfersWithRawAndTypedInputs) {
  Serve serve({.models = {{"add_one", {1}}, {"two_io", {1}}}});
  ASSERT_TRUE(serve.Start()) << serve.log();

  ModelInferRequest raw = RawRequest("add_one", "x", {1, 2, 3, 4.5}, {1, 4});
  raw.set_id("raw-1");
  ModelInferResponse resp;
  grpc::Status status = Infer(serve, raw, &resp);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(resp.id(), "raw-1");
  EXPECT_EQ(resp.model_name(), "add_one");
  EXPECT_EQ(resp.model_version(), "1");
  ASSERT_EQ(resp.outputs_size(), 1);
  EXPECT_EQ(resp.outputs(0).name(), "y");
  EXPECT_EQ(resp.outputs(0).datatype(), "FP32");
  EXPECT_THAT(resp.outputs(0).shape(), ::testing::ElementsAre(1, 4));
  EXPECT_EQ(RawFloats(resp, 0), (std::vector<float>{2, 3, 4, 5.5}));

  // Typed contents, two inputs of different types, outputs in the order asked.
  ModelInferRequest typed;
  typed.set_model_name("two_io");
  typed.set_model_version("1");
  auto* a = typed.add_inputs();
  a->set_name("a");
  a->set_datatype("FP32");
  a->add_shape(2);
  a->add_shape(3);
  for (float v : {1.f, 2.f, 3.f, -1.f, -2.f, 0.25f}) a->mutable_contents()->add_fp32_contents(v);
  auto* b = typed.add_inputs();
  b->set_name("b");
  b->set_datatype("INT64");
  b->add_shape(2);
  b->add_shape(3);
  for (int64_t v : {10LL, 20LL, 30LL, -1LL, 0LL, 1LL << 40})
    b->mutable_contents()->add_int64_contents(v);
  typed.add_outputs()->set_name("b_plus_one");
  typed.add_outputs()->set_name("twice_a");
  ModelInferResponse typed_resp;
  status = Infer(serve, typed, &typed_resp);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(typed_resp.outputs_size(), 2);
  EXPECT_EQ(typed_resp.outputs(0).name(), "b_plus_one");
  EXPECT_EQ(typed_resp.outputs(0).datatype(), "INT64");
  EXPECT_EQ(RawInt64s(typed_resp, 0), (std::vector<int64_t>{11, 21, 31, 0, 1, (1LL << 40) + 1}));
  EXPECT_EQ(typed_resp.outputs(1).name(), "twice_a");
  EXPECT_EQ(RawFloats(typed_resp, 1), (std::vector<float>{2, 4, 6, -2, -4, 0.5}));

  // The same request with raw contents gives the same answer.
  ModelInferRequest as_raw = typed;
  std::vector<float> av(a->contents().fp32_contents().begin(), a->contents().fp32_contents().end());
  std::vector<int64_t> bv(b->contents().int64_contents().begin(),
                          b->contents().int64_contents().end());
  as_raw.mutable_inputs(0)->clear_contents();
  as_raw.mutable_inputs(1)->clear_contents();
  as_raw.add_raw_input_contents(av.data(), av.size() * sizeof(float));
  as_raw.add_raw_input_contents(bv.data(), bv.size() * sizeof(int64_t));
  ModelInferResponse raw_resp;
  ASSERT_TRUE(Infer(serve, as_raw, &raw_resp).ok());
  EXPECT_EQ(raw_resp.raw_output_contents(0), typed_resp.raw_output_contents(0));
  EXPECT_EQ(raw_resp.raw_output_contents(1), typed_resp.raw_output_contents(1));

  // gRPC requests count in the same /metrics as HTTP's.
  std::string metrics = serve.Metrics();
  EXPECT_EQ(Sample(metrics, "outpost_inference_requests_total", "two_io", "success"), 2) << metrics;
  EXPECT_EQ(serve.Stop(), 0);
}

TEST(GrpcApiTest, ConcurrentRequestsAreBatched) {
  Serve serve({.models = {{"tiny", {1}}},
               .configs = {{"tiny",
                            "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_us: "
                            "200000\n  preferred_batch_sizes: [8]\ninstance_count: 1\n"}}});
  ASSERT_TRUE(serve.Start()) << serve.log();
  constexpr int kRequests = 16;
  std::vector<ModelInferRequest> requests;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (int i = 0; i < kRequests; ++i) {
    std::vector<float> x(64);
    for (float& v : x) v = dist(rng);
    requests.push_back(RawRequest("tiny", "input", x, {1, 64}));
  }
  // Reference answers one at a time (each its own batch of 1).
  std::vector<std::string> expected;
  for (const auto& req : requests) {
    ModelInferResponse resp;
    ASSERT_TRUE(Infer(serve, req, &resp).ok());
    expected.push_back(resp.raw_output_contents(0));
  }
  double batches_before = Sample(serve.Metrics(), "outpost_inference_batch_size_count", "tiny");
  std::vector<ModelInferResponse> responses;
  std::vector<grpc::Status> statuses = InferAll(serve, requests, &responses);
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    EXPECT_EQ(responses[i].outputs(0).shape(0), 1);
    // Each request gets its own rows back out of the batch.
    std::vector<float> got = RawFloats(responses[i], 0);
    std::vector<float> want(expected[i].size() / 4);
    std::memcpy(want.data(), expected[i].data(), expected[i].size());
    ASSERT_EQ(got.size(), want.size());
    for (size_t k = 0; k < got.size(); ++k) EXPECT_NEAR(got[k], want[k], 1e-5) << i;
  }
  std::string metrics = serve.Metrics();
  double batches = Sample(metrics, "outpost_inference_batch_size_count", "tiny") - batches_before;
  EXPECT_GE(batches, 2);
  EXPECT_LE(batches, kRequests / 2)
      << "16 concurrent requests ran in " << batches << " batches: not batched";
  EXPECT_EQ(serve.Stop(), 0);
}

TEST(GrpcApiTest, BadRequestsGetTheRightCodes) {
  Serve serve({.models = {{"add_one", {1}}, {"two_io", {1}}}});
  ASSERT_TRUE(serve.Start()) << serve.log();
  struct Case {
    const char* what;
    ModelInferRequest request;
    grpc::StatusCode code;
    const char* message;
  };
  std::vector<Case> cases;
  cases.push_back({"wrong shape", RawRequest("add_one", "x", {1, 2, 3, 4, 5}, {1, 5}),
                   grpc::INVALID_ARGUMENT, "input 'x': expected shape [-1,4], got [1,5]"});
  cases.push_back({"unknown input", RawRequest("add_one", "z", {1, 2, 3, 4}, {1, 4}),
                   grpc::INVALID_ARGUMENT, "'z'"});
  {
    ModelInferRequest missing = RawRequest("two_io", "a", {1, 2, 3}, {1, 3});
    cases.push_back({"missing input", missing, grpc::INVALID_ARGUMENT, "'b'"});
  }
  {
    ModelInferRequest wrong_type;
    wrong_type.set_model_name("add_one");
    auto* in = wrong_type.add_inputs();
    in->set_name("x");
    in->set_datatype("INT64");
    in->add_shape(1);
    in->add_shape(4);
    for (int i = 0; i < 4; ++i) in->mutable_contents()->add_int64_contents(i);
    cases.push_back({"wrong datatype", wrong_type, grpc::INVALID_ARGUMENT, "FP32"});
  }
  {
    ModelInferRequest short_raw = RawRequest("add_one", "x", {1, 2, 3}, {1, 4});
    cases.push_back({"malformed raw size", short_raw, grpc::INVALID_ARGUMENT,
                     "input 'x': raw_input_contents[0] has 12 bytes but shape [1,4] of FP32 "
                     "needs 16"});
  }
  cases.push_back(
      {"unknown model", RawRequest("nope", "x", {1, 2, 3, 4}, {1, 4}), grpc::NOT_FOUND, "nope"});
  {
    ModelInferRequest unknown_version = RawRequest("add_one", "x", {1, 2, 3, 4}, {1, 4});
    unknown_version.set_model_version("7");
    cases.push_back({"unknown version", unknown_version, grpc::NOT_FOUND, "7"});
    unknown_version.set_model_version("seven");
    cases.push_back({"bad version", unknown_version, grpc::INVALID_ARGUMENT,
                     "model_version 'seven' is not a positive integer"});
  }
  {
    ModelInferRequest bad_output = RawRequest("add_one", "x", {1, 2, 3, 4}, {1, 4});
    bad_output.add_outputs()->set_name("nothing");
    cases.push_back({"unknown output", bad_output, grpc::INVALID_ARGUMENT, "nothing"});
  }
  for (const Case& c : cases) {
    ModelInferResponse resp;
    grpc::Status status = Infer(serve, c.request, &resp);
    EXPECT_EQ(status.error_code(), c.code) << c.what << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(c.message)) << c.what;
  }
  // The server is still fine afterwards.
  ModelInferResponse resp;
  EXPECT_TRUE(Infer(serve, RawRequest("add_one", "x", {0, 0, 0, 0}, {1, 4}), &resp).ok());
  std::string metrics = serve.Metrics();
  // Every bad request that reached a model counts as its failure (5 of the 9).
  EXPECT_EQ(Sample(metrics, "outpost_inference_requests_total", "add_one", "failure"), 5);
  EXPECT_EQ(serve.Stop(), 0);
}

TEST(GrpcApiTest, FullQueueIsUnavailable) {
  Serve serve(
      {.models = {{"heavy", {1}}},
       .configs = {{"heavy", "max_queue_size: 1\ninstance_count: 1\nintra_op_threads: 1\n"}}});
  ASSERT_TRUE(serve.Start()) << serve.log();
  std::vector<ModelInferRequest> requests(
      24, RawRequest("heavy", "input", std::vector<float>(8 * 256, 0.5f), {8, 256}));
  std::vector<ModelInferResponse> responses;
  std::vector<grpc::Status> statuses = InferAll(serve, requests, &responses);
  int ok = 0, unavailable = 0;
  for (const grpc::Status& s : statuses) {
    if (s.ok()) {
      ++ok;
    } else {
      EXPECT_EQ(s.error_code(), grpc::UNAVAILABLE) << s.error_message();
      EXPECT_THAT(s.error_message(), HasSubstr("queue full"));
      ++unavailable;
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(unavailable, 1);
  EXPECT_EQ(Sample(serve.Metrics(), "outpost_inference_queue_rejections_total", "heavy"),
            unavailable);
  EXPECT_EQ(serve.Stop(), 0);
}

TEST(GrpcApiTest, RepositoryIndexLoadAndUnload) {
  Serve serve({.models = {{"add_one", {1}}, {"fixed", {1}}},
               .flags = {"--model-control-mode", "explicit", "--load-model", "add_one"}});
  ASSERT_TRUE(serve.Start()) << serve.log();
  auto& stub = serve.stub();
  auto index = [&](bool ready_only) {
    grpc::ClientContext ctx;
    inference::RepositoryIndexRequest req;
    req.set_ready(ready_only);
    inference::RepositoryIndexResponse resp;
    EXPECT_TRUE(stub.RepositoryIndex(&ctx, req, &resp).ok());
    std::map<std::string, std::string> out;
    for (const auto& m : resp.models()) out[m.name()] = m.state();
    return out;
  };
  EXPECT_EQ(index(true), (std::map<std::string, std::string>{{"add_one", "READY"}}));
  EXPECT_EQ(index(false).count("fixed"), 1u);

  auto load = [&](const std::string& name, bool unload = false) {
    grpc::ClientContext ctx;
    if (unload) {
      inference::RepositoryModelUnloadRequest req;
      req.set_model_name(name);
      inference::RepositoryModelUnloadResponse resp;
      return stub.RepositoryModelUnload(&ctx, req, &resp);
    }
    inference::RepositoryModelLoadRequest req;
    req.set_model_name(name);
    inference::RepositoryModelLoadResponse resp;
    return stub.RepositoryModelLoad(&ctx, req, &resp);
  };
  ASSERT_TRUE(load("fixed").ok());
  EXPECT_EQ(index(true).size(), 2u);
  ModelInferResponse resp;
  grpc::Status status = Infer(serve, RawRequest("fixed", "x", {1, 2, 3, 4}, {2, 2}), &resp);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(RawFloats(resp, 0), (std::vector<float>{3, 6, 9, 12}));

  ASSERT_TRUE(load("fixed", /*unload=*/true).ok());
  status = Infer(serve, RawRequest("fixed", "x", {1, 2, 3, 4}, {2, 2}), &resp);
  EXPECT_EQ(status.error_code(), grpc::UNAVAILABLE) << status.error_message();
  {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest req;
    req.set_name("fixed");
    inference::ModelReadyResponse ready;
    ASSERT_TRUE(stub.ModelReady(&ctx, req, &ready).ok());
    EXPECT_FALSE(ready.ready());
  }
  EXPECT_EQ(load("not_there").error_code(), grpc::NOT_FOUND);
  EXPECT_EQ(load("a/b").error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_EQ(load("").error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_EQ(load("not_there", /*unload=*/true).error_code(), grpc::NOT_FOUND);
  EXPECT_EQ(serve.Stop(), 0);
}

// Versions 3, 4, ... are swapped in while clients keep inferring: odd
// versions add 1, even ones add 2, and no request may fail.
TEST(GrpcApiTest, HotSwapUnderLoadDropsNothing) {
  Serve serve({.models = {{"add_one", {1}}},
               .flags = {"--model-control-mode", "explicit", "--load-model", "add_one"}});
  ASSERT_TRUE(serve.Start()) << serve.log();
  constexpr int kClients = 4;
  constexpr int kSwaps = 20;
  std::atomic<bool> stop{false};
  std::atomic<int> requests{0};
  std::mutex mu;
  std::vector<std::string> failures;
  std::set<std::string> versions_seen;
  auto client = [&](int seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> dist(-1000, 1000);
    while (!stop.load()) {
      std::vector<float> x = {static_cast<float>(dist(rng)), static_cast<float>(dist(rng)), 0.5f,
                              -2.f};
      ModelInferResponse resp;
      grpc::Status status = Infer(serve, RawRequest("add_one", "x", x, {1, 4}), &resp);
      requests.fetch_add(1);
      std::lock_guard lock(mu);
      if (!status.ok()) {
        failures.push_back(std::to_string(status.error_code()) + " " + status.error_message());
        continue;
      }
      int version = std::atoi(resp.model_version().c_str());
      float delta = version % 2 ? 1.f : 2.f;
      std::vector<float> got = RawFloats(resp, 0);
      for (size_t i = 0; i < 4; ++i) {
        if (got.size() != 4 || got[i] != x[i] + delta) {
          failures.push_back("version " + resp.model_version() + " answered wrong");
          break;
        }
      }
      versions_seen.insert(resp.model_version());
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) threads.emplace_back(client, i);
  for (int v = 2; v < 2 + kSwaps; ++v) {
    int before = requests.load();
    while (requests.load() < before + 200)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    serve.AddVersion("add_one", v, "add_one", v % 2 ? 1 : 2);
    grpc::ClientContext ctx;
    inference::RepositoryModelLoadRequest req;
    req.set_model_name("add_one");
    inference::RepositoryModelLoadResponse resp;
    grpc::Status status = serve.stub().RepositoryModelLoad(&ctx, req, &resp);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  int before = requests.load();
  while (requests.load() < before + 100) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  stop.store(true);
  for (auto& t : threads) t.join();
  std::cout << "hot swap over gRPC: " << requests.load() << " requests, " << kSwaps << " swaps, "
            << failures.size() << " failures\n";
  EXPECT_THAT(failures, ::testing::IsEmpty());
  EXPECT_EQ(versions_seen.count(std::to_string(1 + kSwaps)), 1u);
  EXPECT_GE(versions_seen.size(), 4u);
  EXPECT_EQ(serve.Stop(), 0);
}

// SIGTERM while requests are queued: every accepted request is answered,
// then the process exits 0.
TEST(GrpcApiTest, SigtermAnswersQueuedRequestsThenExits) {
  Serve serve({.models = {{"heavy", {1}}},
               .configs = {{"heavy",
                            "max_batch_size: 64\nmax_queue_size: 64\ninstance_count: 1\n"
                            "intra_op_threads: 1\n"}}});
  ASSERT_TRUE(serve.Start()) << serve.log();
  constexpr int kRequests = 12;
  // Batches of 64 rows: several milliseconds each, so most are still queued
  // when the signal arrives.
  std::vector<ModelInferRequest> requests(
      kRequests, RawRequest("heavy", "input", std::vector<float>(64 * 256, 0.5f), {64, 256}));
  std::vector<ModelInferResponse> responses(kRequests);
  std::vector<grpc::ClientContext> contexts(kRequests);
  std::mutex mu;
  std::condition_variable cv;
  int done = 0, ok = 0;
  std::vector<std::string> errors;
  for (int i = 0; i < kRequests; ++i) {
    serve.stub().async()->ModelInfer(&contexts[i], &requests[i], &responses[i],
                                     [&](grpc::Status s) {
                                       std::lock_guard lock(mu);
                                       if (s.ok()) {
                                         ++ok;
                                       } else {
                                         errors.push_back(s.error_message());
                                       }
                                       ++done;
                                       cv.notify_all();
                                     });
  }
  // Wait until the first is answered, so the rest are queued, then stop.
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return done >= 1; });
  }
  int answered_before_signal;
  {
    std::lock_guard lock(mu);
    answered_before_signal = done;
  }
  EXPECT_EQ(serve.Stop(), 0);
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return done == kRequests; });
  EXPECT_LT(answered_before_signal, kRequests) << "nothing was queued at SIGTERM";
  EXPECT_EQ(ok, kRequests) << ::testing::PrintToString(errors);
}

TEST(GrpcApiTest, RefusesPlaintextOnPublicAddressAndBusyPort) {
  Serve open({.models = {{"add_one", {1}}}, .flags = {"--grpc-address", "0.0.0.0"}});
  EXPECT_FALSE(open.Start());
  EXPECT_EQ(open.exit_code(), 1);
  EXPECT_THAT(open.log(), HasSubstr("refusing plaintext gRPC on non-loopback address 0.0.0.0"));

  Serve first({.models = {{"add_one", {1}}}});
  ASSERT_TRUE(first.Start()) << first.log();
  Serve second(
      {.models = {{"add_one", {1}}}, .flags = {"--grpc-port", std::to_string(first.grpc_port())}});
  EXPECT_FALSE(second.Start());
  EXPECT_EQ(second.exit_code(), 1);
  EXPECT_THAT(second.log(), HasSubstr("cannot listen for gRPC"));
  EXPECT_EQ(first.Stop(), 0);
}

}  // namespace

namespace {

// With --tls-cert/--tls-key gRPC speaks TLS too (same certificate as HTTPS);
// a plaintext client is turned away.
TEST(GrpcApiTest, ServesTlsWithTheHttpsCertificate) {
  char tmpl[] = "/tmp/outpost-grpc-pki-XXXXXX";
  fs::path pki_dir = mkdtemp(tmpl);
  auto pki = outpost::pki::EnsureServerPki(pki_dir, {});
  ASSERT_TRUE(pki.ok()) << pki.status();
  Serve serve(
      {.models = {{"add_one", {1}}},
       .flags = {"--tls-cert", pki->server_cert.string(), "--tls-key", pki->server_key.string()},
       .tls_ca_file = pki->ca_cert.string()});
  ASSERT_TRUE(serve.Start()) << serve.log();
  EXPECT_THAT(serve.log(), HasSubstr("(TLS)"));
  ModelInferResponse resp;
  grpc::Status status = Infer(serve, RawRequest("add_one", "x", {1, 2, 3, 4}, {1, 4}), &resp);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(RawFloats(resp, 0), (std::vector<float>{2, 3, 4, 5}));

  auto plain = GRPCInferenceService::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(serve.grpc_port()), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  inference::ServerLiveResponse live;
  EXPECT_FALSE(plain->ServerLive(&ctx, {}, &live).ok());
  EXPECT_EQ(serve.Stop(), 0);
  fs::remove_all(pki_dir);
}

}  // namespace
