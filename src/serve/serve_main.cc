// outpost-serve: the inference runtime. Flags follow Triton's names where the
// concept is the same (docs/serve.md).
#include <malloc.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/http_server.h"
#include "common/work_queue.h"
#include "serve/api_grpc.h"
#include "serve/api_http.h"
#include "serve/metrics.h"
#include "serve/model_repository.h"
#include "serve/pipeline_set.h"

namespace {

using namespace outpost;

// Writes the file in one step so a reader never sees half of it.
// {"http": N} or, with gRPC on, {"http": N, "grpc": M}.
bool WritePortFile(const std::string& path, uint16_t port, int grpc_port) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << "{\"http\": " << port;
    if (grpc_port >= 0) out << ", \"grpc\": " << grpc_port;
    out << "}\n";
    if (!out.flush()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

// glibc's default raises the mmap threshold as large blocks are freed, so
// model weights end up in the heap and a model swapped in and out keeps its
// old pages: RSS climbs with every reload. A fixed threshold returns every
// large block to the system when it is freed. Request bodies, the large
// per-request allocation, come from a recycling pool (http::AcquireBody), so
// this costs the request path nothing.
void TuneAllocator() {
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  mallopt(M_TRIM_THRESHOLD, 4 * 1024 * 1024);
}

int Run(int argc, char** argv) {
  TuneAllocator();
  CLI::App app{"outpost-serve: serves ONNX models over the KServe v2 protocol (docs/serve.md)"};
  std::string repository_root;
  std::string http_address = "127.0.0.1";
  int http_port = 8000;
  int http_threads = 2;
  bool http_shared_loop = false;
  std::string control_mode = "none";
  std::vector<std::string> load_models;
  int poll_secs = 15;
  bool strict_readiness = true;
  int log_verbose = 0;
  std::string port_file;
  size_t max_body = 64u << 20;
  int request_timeout_ms = 30000;
  int idle_timeout_ms = 60000;
  int exit_timeout_secs = 30;
  std::string tls_cert, tls_key;
  std::string unix_socket;
  bool allow_insecure = false;
  std::vector<std::string> pipeline_files;
  int grpc_port = -1;
  bool allow_grpc = false;
  std::string grpc_address;
  int grpc_max_message = 64 << 20;

  app.add_option("--model-repository", repository_root,
                 "Model repository: <dir>/<model>/<version>/model.onnx [+ <model>/config.yaml]")
      ->required();
  app.add_option("--http-address", http_address, "Address to listen on")->capture_default_str();
  app.add_option("--http-port", http_port, "HTTP port; 0 picks a free port")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  app.add_option("--http-unix-socket", unix_socket,
                 "Also serve HTTP on this Unix domain socket (mode 0660, plain HTTP): for "
                 "clients on the device, about half the cost of TCP per large tensor");
  app.add_option("--http-thread-count", http_threads, "HTTP io threads")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_flag("--http-shared-loop", http_shared_loop,
               "Run one event loop on all HTTP io threads instead of one per thread (a "
               "connection then moves between threads: a wake-up more per request, but a "
               "thread busy with an inline inference delays none of the others' connections)");
  app.add_option("--model-control-mode", control_mode,
                 "none: load all at start; poll: also follow changes on disk; explicit: load "
                 "only --load-model and repository API requests")
      ->check(CLI::IsMember({"none", "poll", "explicit"}))
      ->capture_default_str();
  app.add_option("--load-model", load_models,
                 "Model to load at start in explicit mode (repeatable; * = all)");
  app.add_option("--repository-poll-secs", poll_secs, "Poll interval in poll mode")
      ->check(CLI::Range(1, 86400))
      ->capture_default_str();
  app.add_option("--strict-readiness", strict_readiness,
                 "Ready only when every model that should be loaded is loaded")
      ->capture_default_str();
  app.add_option("--log-verbose", log_verbose, "0 = info, 1 = debug, 2 = trace")
      ->capture_default_str();
  app.add_option("--port-file", port_file, "Write {\"http\": PORT} here once listening");
  app.add_option("--http-max-body-bytes", max_body, "Largest accepted request body")
      ->capture_default_str();
  app.add_option("--http-request-timeout-ms", request_timeout_ms,
                 "A request must arrive whole within this time")
      ->check(CLI::Range(10, 3600000))
      ->capture_default_str();
  app.add_option("--http-idle-timeout-ms", idle_timeout_ms,
                 "Close keep-alive connections idle this long")
      ->check(CLI::Range(10, 3600000))
      ->capture_default_str();
  app.add_option("--exit-timeout-secs", exit_timeout_secs,
                 "On SIGTERM/SIGINT, wait this long for requests already received "
                 "(queued ones included) to be answered before exiting")
      ->check(CLI::Range(0, 3600))
      ->capture_default_str();
  app.add_option("--tls-cert", tls_cert, "PEM certificate chain: serve HTTPS");
  app.add_option("--tls-key", tls_key, "PEM private key for --tls-cert");
  app.add_flag("--allow-insecure-http", allow_insecure,
               "Allow plain HTTP on a non-loopback address");
  app.add_option("--pipeline", pipeline_files,
                 "Pipeline file (YAML, docs/pipelines.md) to run beside the APIs (repeatable)")
      ->check(CLI::ExistingFile);
  app.add_option("--grpc-port", grpc_port,
                 "KServe v2 gRPC port; 0 picks a free port; -1 (default) = no gRPC unless "
                 "--allow-grpc")
      ->check(CLI::Range(-1, 65535))
      ->capture_default_str();
  app.add_option("--allow-grpc", allow_grpc,
                 "Serve gRPC (on --grpc-port, else Triton's 8001); implied by --grpc-port >= 0")
      ->capture_default_str();
  app.add_option("--grpc-address", grpc_address, "gRPC address (default: --http-address)");
  app.add_option("--grpc-max-message-bytes", grpc_max_message,
                 "Largest gRPC request or response message")
      ->check(CLI::Range(4096, 1 << 30))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  spdlog::set_level(log_verbose >= 2   ? spdlog::level::trace
                    : log_verbose == 1 ? spdlog::level::debug
                                       : spdlog::level::info);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ outpost-serve: %v");

  // Signals are taken by sigwait below; every thread started after this
  // inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  serve::ServeMetrics metrics;
  serve::RepositoryOptions repo_options;
  repo_options.root = repository_root;
  repo_options.mode = control_mode == "poll"       ? serve::ControlMode::kPoll
                      : control_mode == "explicit" ? serve::ControlMode::kExplicit
                                                   : serve::ControlMode::kNone;
  repo_options.startup_models = load_models;
  repo_options.poll_interval = std::chrono::seconds(poll_secs);
  repo_options.metrics = &metrics;
  auto repository = serve::ModelRepository::Create(repo_options);
  if (!repository.ok()) {
    spdlog::error("{}", outpost::MessageOf(repository.status()));
    return 1;
  }

  std::atomic<bool> started{false};
  std::atomic<bool> stopping{false};
  serve::ModelRepository& repo = **repository;
  serve::SharedMemoryRegistry shared_memory;
  // Readiness, the same for HTTP and gRPC.
  auto ready = [&] {
    if (stopping.load() || !started.load()) return false;
    return !strict_readiness || repo.AllReady();
  };
  serve::HttpApi api(repo, metrics, ready,
                     http::IsLoopbackAddress(http_address) ? &shared_memory : nullptr);

  http::ServerOptions server_options;
  server_options.address = http_address;
  server_options.port = static_cast<uint16_t>(http_port);
  server_options.threads = http_threads;
  server_options.loop_per_thread = !http_shared_loop;
  server_options.max_body_bytes = max_body;
  server_options.request_timeout = std::chrono::milliseconds(request_timeout_ms);
  server_options.idle_timeout = std::chrono::milliseconds(idle_timeout_ms);
  server_options.shutdown_grace = std::chrono::seconds(exit_timeout_secs);
  server_options.server_name = "outpost-serve/" OUTPOST_VERSION;
  server_options.tls_cert_file = tls_cert;
  server_options.tls_key_file = tls_key;
  server_options.allow_insecure = allow_insecure;
  server_options.unix_socket_path = unix_socket;
  auto server = http::Server::Create(server_options,
                                     [&api](http::Request&& request, http::Responder responder) {
                                       api.Handle(std::move(request), std::move(responder));
                                     });
  if (!server.ok()) {
    spdlog::error("cannot listen on {}:{}: {}", http_address, http_port,
                  outpost::MessageOf(server.status()));
    return 1;
  }
  (*server)->Start();
  spdlog::info("HTTP listening on {}:{}{}", http_address, (*server)->port(),
               (*server)->tls() ? " (TLS)" : "");
  if (!unix_socket.empty()) spdlog::info("HTTP listening on unix socket {}", unix_socket);
  // gRPC listens beside HTTP on the same repository, schedulers and metrics.
  std::unique_ptr<serve::GrpcApi> grpc_api;
  if (allow_grpc || grpc_port >= 0) {
    serve::GrpcOptions grpc_options;
    grpc_options.address = grpc_address.empty() ? http_address : grpc_address;
    grpc_options.port = grpc_port >= 0 ? grpc_port : 8001;
    grpc_options.max_message_bytes = grpc_max_message;
    grpc_options.tls_cert_file = tls_cert;
    grpc_options.tls_key_file = tls_key;
    grpc_options.allow_insecure = allow_insecure;
    auto created = serve::GrpcApi::Create(grpc_options, repo, ready);
    if (!created.ok()) {
      spdlog::error("gRPC: {}", outpost::MessageOf(created.status()));
      (*server)->Stop();
      return 1;
    }
    grpc_api = std::move(created).value();
    spdlog::info("gRPC listening on {}:{}{}", grpc_options.address, grpc_api->port(),
                 grpc_api->tls() ? " (TLS)" : "");
  }
  if (!port_file.empty() &&
      !WritePortFile(port_file, (*server)->port(), grpc_api ? grpc_api->port() : -1)) {
    spdlog::error("cannot write --port-file {}", port_file);
    return 1;
  }

  repo.LoadStartupModels();

  // Pipelines start once the models they use are loaded. A pipeline file
  // that does not parse, or a sink that cannot open, stops the runtime: a
  // release with a broken pipeline must fail its health gate, not run half.
  // The pipeline module (and OpenCV with it) is loaded only when asked for.
  std::unique_ptr<serve::PipelineSet> pipelines;
  if (!pipeline_files.empty()) {
    absl::StatusOr<std::unique_ptr<serve::PipelineSet>> loaded =
        serve::LoadPipelineSet(pipeline_files, repo, metrics.registry());
    if (!loaded.ok()) {
      spdlog::error("{}", outpost::MessageOf(loaded.status()));
      (*server)->Stop();
      return 1;
    }
    pipelines = *std::move(loaded);
    pipelines->Start();
  }
  started.store(true);
  spdlog::info("startup loading finished; ready: {}", repo.AllReady() || !strict_readiness);

  outpost::WorkQueue ticker("metrics-tick");
  ticker.SetPeriodic(std::chrono::seconds(1), [&repo, &pipelines] {
    repo.ForEachVersion([](serve::ModelVersion& version) {
      version.metrics().Tick();
      version.metrics().SetQueueDepth(version.scheduler().queue_depth());
    });
    if (pipelines) pipelines->Tick();
  });

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("signal {}: finishing queued requests, then exiting", signal_number);
  stopping.store(true);
  ticker.Stop();
  if (pipelines) pipelines->Stop();  // in-flight frames reach the sinks
  pipelines.reset();
  // Stop taking work, answer what has arrived, then release the models.
  // HTTP and gRPC stop side by side while every model is still loaded: each
  // stops accepting and answers the requests it already received, queued
  // ones and ones its io threads had not read yet, within
  // --exit-timeout-secs; the rest are cut off.
  std::thread grpc_stop;
  if (grpc_api) {
    grpc_stop = std::thread([&grpc_api, exit_timeout_secs] {
      grpc_api->Shutdown(std::chrono::seconds(exit_timeout_secs));
    });
  }
  (*server)->Stop();
  if (grpc_stop.joinable()) grpc_stop.join();
  // Past the timeout nobody waits for what is still queued: not computed.
  int64_t abandoned = 0;
  repo.ForEachVersion([&abandoned](serve::ModelVersion& version) {
    abandoned += version.scheduler().queue_depth();
    version.scheduler().Abandon(absl::UnavailableError("server is shutting down"));
  });
  if (abandoned > 0) {
    spdlog::warn("--exit-timeout-secs ({} s) passed: {} queued requests abandoned",
                 exit_timeout_secs, abandoned);
  }
  repo.UnloadAll();
  repository->reset();
  grpc_api.reset();
  spdlog::info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
