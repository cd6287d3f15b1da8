#include "serve/api_grpc.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <thread>

#include "common/atomic_file.h"
#include "common/http_server.h"
#include "grpc_service.grpc.pb.h"
#include "serve/grpc_codec.h"

namespace outpost::serve {
namespace {

// absl and gRPC number their codes alike (both follow google.rpc.Code).
grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(MessageOf(status)));
}

void FillSpecs(
    const std::vector<TensorSpec>& specs,
    google::protobuf::RepeatedPtrField<inference::ModelMetadataResponse::TensorMetadata>* out) {
  for (const TensorSpec& spec : specs) {
    auto* t = out->Add();
    t->set_name(spec.name);
    std::string_view datatype = DataTypeName(spec.datatype);
    t->set_datatype(datatype.data(), datatype.size());
    t->mutable_shape()->Add(spec.shape.begin(), spec.shape.end());
  }
}

}  // namespace

class GrpcApi::Service final : public inference::GRPCInferenceService::CallbackService {
 public:
  Service(ModelRepository& repository, std::function<bool()> ready)
      : repository_(repository), ready_(std::move(ready)) {}

  // Calls begun and not yet finished.
  int in_flight() const { return in_flight_.load(std::memory_order_acquire); }

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context,
                                       const inference::ServerLiveRequest*,
                                       inference::ServerLiveResponse* response) override {
    response->set_live(true);
    return Done(context, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context,
                                        const inference::ServerReadyRequest*,
                                        inference::ServerReadyResponse* response) override {
    response->set_ready(ready_());
    return Done(context, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override {
    absl::StatusOr<int64_t> version = ParseModelVersion(request->version());
    if (!version.ok()) return Done(context, version.status());
    auto found = repository_.Get(request->name(), *version);
    // Unknown is an error (as HTTP's 404); known but not loaded is "not ready".
    if (absl::IsNotFound(found.status())) return Done(context, found.status());
    response->set_ready(found.ok());
    return Done(context, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* context,
                                           const inference::ServerMetadataRequest*,
                                           inference::ServerMetadataResponse* response) override {
    response->set_name("outpost-serve");
    response->set_version(OUTPOST_VERSION);
    response->add_extensions("model_repository");
    response->add_extensions("metrics");
    return Done(context, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* context,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override {
    absl::StatusOr<int64_t> version = ParseModelVersion(request->version());
    if (!version.ok()) return Done(context, version.status());
    auto found = repository_.Get(request->name(), *version);
    if (!found.ok()) return Done(context, found.status());
    const ModelVersion& mv = **found;
    response->set_name(mv.name());
    if (*version != 0) {
      response->add_versions(mv.version_string());
    } else {
      for (const auto& v : repository_.Versions(mv.name())) {
        response->add_versions(v->version_string());
      }
    }
    response->set_platform("onnxruntime_onnx");
    FillSpecs(mv.engine().inputs(), response->mutable_inputs());
    FillSpecs(mv.engine().outputs(), response->mutable_outputs());
    return Done(context, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context,
                                       const inference::ModelInferRequest* request,
                                       inference::ModelInferResponse* response) override {
    const auto start = std::chrono::steady_clock::now();
    grpc::ServerUnaryReactor* reactor = Begin(context);
    absl::StatusOr<int64_t> version = ParseModelVersion(request->model_version());
    if (!version.ok()) return Finish(reactor, version.status());
    auto found = repository_.Get(request->model_name(), *version);
    if (!found.ok()) return Finish(reactor, found.status());
    ModelVersion* mv = found->get();

    // Inputs borrow from *request, which gRPC keeps until Finish; the
    // decoded request's own buffers (narrowed or realigned inputs) travel
    // with the callback.
    GrpcDecodedRequest decoded;
    absl::Status status = DecodeGrpcInferRequest(*request, &decoded);
    if (!status.ok()) {
      mv->metrics().RecordFailure();
      return Finish(reactor, status);
    }
    decoded.request.arrival = start;
    // As in HttpApi: the callback does not keep the version alive; the
    // version's destructor drains its scheduler, so `mv` outlives it.
    status = mv->scheduler().Submit(
        std::move(decoded.request),
        [this, reactor, request, response, mv, start,
         buffers = std::move(decoded.buffers)](absl::StatusOr<InferResponse> result) mutable {
          if (!result.ok()) {
            mv->metrics().RecordFailure();
            spdlog::warn("model '{}' version {}: inference failed: {}", mv->name(),
                         mv->version_string(), MessageOf(result.status()));
            Finish(reactor, result.status());
            return;
          }
          EncodeGrpcInferResponse(*request, mv->name(), mv->version_string(), result->outputs,
                                  response);
          result->outputs.clear();  // release ONNX Runtime's buffers before answering
          buffers.clear();
          int64_t total_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::steady_clock::now() - start)
                                 .count();
          mv->metrics().RecordSuccess(total_ns, result->stats.queue_ns, result->stats.compute_ns);
          Finish(reactor, absl::OkStatus());
        },
        // Never inline: a callback-API handler must not block gRPC's thread,
        // and a call gRPC has received but no handler has handed to the
        // scheduler yet would miss the drain on SIGTERM.
        SubmitMode::kQueued);
    if (!status.ok()) {
      if (absl::IsUnavailable(status)) {
        mv->metrics().RecordRejection();
      } else {
        mv->metrics().RecordFailure();
      }
      return Finish(reactor, status);
    }
    return reactor;
  }

  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* context,
                                            const inference::RepositoryIndexRequest* request,
                                            inference::RepositoryIndexResponse* response) override {
    for (const ModelStatus& s : repository_.Index()) {
      if (request->ready() && s.state != "READY") continue;
      auto* m = response->add_models();
      m->set_name(s.name);
      m->set_version(s.version);
      m->set_state(s.state);
      m->set_reason(s.reason);
    }
    return Done(context, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* RepositoryModelLoad(
      grpc::CallbackServerContext* context, const inference::RepositoryModelLoadRequest* request,
      inference::RepositoryModelLoadResponse*) override {
    return LoadOrUnload(context, request->model_name(), request->parameters().size(),
                        /*load=*/true);
  }

  grpc::ServerUnaryReactor* RepositoryModelUnload(
      grpc::CallbackServerContext* context, const inference::RepositoryModelUnloadRequest* request,
      inference::RepositoryModelUnloadResponse*) override {
    return LoadOrUnload(context, request->model_name(), request->parameters().size(),
                        /*load=*/false);
  }

 private:
  // Every call starts with Begin and ends with exactly one Finish, so
  // in_flight() tells Shutdown when the last answer has gone out.
  grpc::ServerUnaryReactor* Begin(grpc::CallbackServerContext* context) {
    in_flight_.fetch_add(1, std::memory_order_acq_rel);
    return context->DefaultReactor();
  }
  grpc::ServerUnaryReactor* Finish(grpc::ServerUnaryReactor* reactor, const absl::Status& status) {
    reactor->Finish(ToGrpc(status));
    in_flight_.fetch_sub(1, std::memory_order_acq_rel);
    return reactor;
  }
  grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context, const absl::Status& status) {
    return Finish(Begin(context), status);
  }

  grpc::ServerUnaryReactor* LoadOrUnload(grpc::CallbackServerContext* context,
                                         const std::string& model, size_t parameter_count,
                                         bool load) {
    grpc::ServerUnaryReactor* reactor = Begin(context);
    if (model.empty() || model.find('/') != std::string::npos) {
      return Finish(reactor, absl::InvalidArgumentError("model_name must be a non-empty model name "
                                                        "(one directory of the repository)"));
    }
    if (parameter_count > 0) {
      // Triton's config/file overrides would bypass the repository on disk.
      return Finish(reactor, absl::InvalidArgumentError(
                                 "load/unload parameters are not supported; change the model "
                                 "repository on disk and load again"));
    }
    bool queued = repository_.RunOnRepositoryThread([this, reactor, model, load]() mutable {
      absl::Status status = load ? repository_.Load(model) : repository_.Unload(model);
      Finish(reactor, status);
    });
    if (!queued) return Finish(reactor, absl::UnavailableError("server is shutting down"));
    return reactor;
  }

  ModelRepository& repository_;
  std::function<bool()> ready_;
  std::atomic<int> in_flight_{0};
};

absl::StatusOr<std::unique_ptr<GrpcApi>> GrpcApi::Create(GrpcOptions options,
                                                         ModelRepository& repository,
                                                         std::function<bool()> ready) {
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        StrCat("gRPC port ", options.port, " is out of range 0..65535"));
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("give both --tls-cert and --tls-key, or neither");
  }
  const bool tls = !options.tls_cert_file.empty();
  if (!tls && !options.allow_insecure && !http::IsLoopbackAddress(options.address)) {
    return absl::InvalidArgumentError(
        StrCat("refusing plaintext gRPC on non-loopback address ", options.address,
               "; give --tls-cert/--tls-key or --allow-insecure-http"));
  }
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (tls) {
    ASSIGN_OR_RETURN(std::string cert, ReadFile(options.tls_cert_file));
    ASSIGN_OR_RETURN(std::string key, ReadFile(options.tls_key_file));
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({std::move(key), std::move(cert)});
    credentials = grpc::SslServerCredentials(ssl);
  } else {
    credentials = grpc::InsecureServerCredentials();
  }

  std::unique_ptr<GrpcApi> api(new GrpcApi());
  api->tls_ = tls;
  api->service_ = std::make_unique<Service>(repository, std::move(ready));
  // IPv6 literals need brackets in a gRPC target.
  std::string host = options.address.find(':') != std::string::npos
                         ? StrCat("[", options.address, "]")
                         : options.address;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(StrCat(host, ":", options.port), credentials, &api->port_);
  builder.RegisterService(api->service_.get());
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  // One port per process: a second outpost-serve on the same port must fail,
  // not share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  api->server_ = builder.BuildAndStart();
  if (api->server_ == nullptr || api->port_ == 0) {
    return absl::UnavailableError(StrCat("cannot listen for gRPC on ", host, ":", options.port,
                                         " (address in use or not local?)"));
  }
  return api;
}

GrpcApi::~GrpcApi() { Shutdown(std::chrono::milliseconds(0)); }

void GrpcApi::Shutdown(std::chrono::milliseconds grace) {
  if (server_ == nullptr || shut_down_.exchange(true)) return;
  // gRPC's own graceful shutdown also waits, up to its deadline, for idle
  // clients to close their connections, which clients holding a channel
  // open never do. Wait for the calls in flight instead, then shut down at
  // once (cancelling whatever is still running past the grace).
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (service_->in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
}

}  // namespace outpost::serve
