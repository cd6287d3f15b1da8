// The KServe v2 gRPC API of outpost-serve (inference.GRPCInferenceService,
// proto/grpc_service.proto; docs/serve.md) on the same model repository,
// schedulers (batching, queue bounds), hot swap and metrics as the HTTP API.
//
// Built on gRPC's callback API: a handler decodes the request on a gRPC
// thread, submits it to the model version's scheduler and returns at once;
// the inference thread that ran the request encodes the response and
// finishes the call. Repository load/unload run on the repository's thread.
// No gRPC thread ever waits for a model, so a slow model cannot pin them.
//
// Errors map to gRPC codes as absl's do (the numbers are the same):
// InvalidArgument for a bad request, NotFound for an unknown model or
// version, Unavailable for a full queue, an unloaded model or shutdown.
//
// Thread safety: Shutdown() and port() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "serve/model_repository.h"

namespace grpc {
class Server;
}

namespace outpost::serve {

struct GrpcOptions {
  std::string address = "127.0.0.1";
  int port = 8001;  // 0 = pick a free port (see port())
  // Largest request or response message; gRPC's own default is 4 MiB, less
  // than a batch of images.
  int max_message_bytes = 64 << 20;
  // PEM files: serve gRPC over TLS. Both or neither.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Plaintext on a non-loopback address is refused unless this is set.
  bool allow_insecure = false;
};

class GrpcApi {
 public:
  // Listens and starts serving. `repository` is borrowed and must outlive
  // the API (its models' metrics count gRPC requests as HTTP's); `ready` answers ServerReady.
  // Errors: InvalidArgument (bad options, plaintext on a non-loopback address without
  // allow_insecure, unreadable TLS files), Unavailable (cannot bind).
  static absl::StatusOr<std::unique_ptr<GrpcApi>> Create(GrpcOptions options,
                                                         ModelRepository& repository,
                                                         std::function<bool()> ready);
  // Shutdown(0) if not done yet.
  ~GrpcApi();

  // The port bound (the chosen one when options.port was 0).
  int port() const { return port_; }
  bool tls() const { return tls_; }

  // Lets calls in flight - queued inferences, and calls still arriving
  // (a client's messages may wait on HTTP/2 flow control) - finish until
  // none is left or `grace` has passed, then stops accepting and cancels
  // the rest. Idempotent.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  class Service;
  GrpcApi() = default;

  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool tls_ = false;
  std::atomic<bool> shut_down_{false};
};

}  // namespace outpost::serve
