// The KServe v2 HTTP API of outpost-serve (routes in docs/serve.md) on top of
// the model repository and its schedulers.
//
// Inference path: decode on the io thread (binary tensors are not copied),
// submit to the model version's scheduler, encode and answer on the
// inference thread that ran it. Repository load/unload run on the
// repository's own thread so an io thread never waits for a model to load.
//
// Thread safety: Handle() is called concurrently from the io threads.
#pragma once

#include <functional>
#include <string>

#include "common/http_server.h"
#include "serve/metrics.h"
#include "serve/model_repository.h"
#include "serve/shared_memory.h"

namespace outpost::serve {

class HttpApi {
 public:
  // `repository`, `metrics` and `shm` are borrowed and outlive the API.
  // `ready` answers /v2/health/ready. `shm` null = no shared memory extension
  // (it is offered on loopback listeners only).
  HttpApi(ModelRepository& repository, ServeMetrics& metrics, std::function<bool()> ready,
          SharedMemoryRegistry* shm = nullptr);

  void Handle(http::Request&& request, http::Responder responder);

 private:
  void HandleInfer(http::Request&& request, http::Responder responder, std::string model,
                   int64_t version);
  void HandleModelMetadata(const http::Request& request, http::Responder responder,
                           const std::string& model, int64_t version);
  void HandleRepository(http::Request&& request, http::Responder responder, std::string_view rest);
  void HandleSharedMemory(const http::Request& request, http::Responder responder,
                          const std::vector<std::string>& parts);

  ModelRepository& repository_;
  ServeMetrics& metrics_;
  std::function<bool()> ready_;
  SharedMemoryRegistry* shm_;
};

// Percent-decodes a URL path segment; false on a malformed escape.
bool DecodePathSegment(std::string_view in, std::string* out);

}  // namespace outpost::serve
