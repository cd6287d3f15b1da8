#include "serve/api_http.h"

#include <spdlog/spdlog.h>

#include <charconv>
#include <chrono>
#include <nlohmann/json.hpp>

#include "serve/infer_codec.h"

namespace outpost::serve {
namespace {

namespace bhttp = boost::beast::http;
using nlohmann::json;

constexpr std::string_view kHeaderLengthField = "Inference-Header-Content-Length";

http::Response Empty(const http::Request& request, http::Status status) {
  http::Response response(status, request.version());
  response.keep_alive(request.keep_alive());
  response.prepare_payload();
  return response;
}

http::Response StatusError(const http::Request& request, const absl::Status& status) {
  return http::ErrorResponse(request, static_cast<http::Status>(HttpStatusFor(status)),
                             MessageOf(status));
}

json SpecsJson(const std::vector<TensorSpec>& specs) {
  json out = json::array();
  for (const TensorSpec& spec : specs) {
    out.push_back({{"name", spec.name},
                   {"datatype", std::string(DataTypeName(spec.datatype))},
                   {"shape", spec.shape}});
  }
  return out;
}

// Splits "/a/b/c" into {"a","b","c"}, percent-decoding each segment.
bool SplitPath(std::string_view path, std::vector<std::string>* segments) {
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string segment;
    if (!DecodePathSegment(path.substr(start, end - start), &segment)) return false;
    segments->push_back(std::move(segment));
    start = end + 1;
  }
  return true;
}

bool ParseVersionSegment(const std::string& text, int64_t* version) {
  auto result = std::from_chars(text.data(), text.data() + text.size(), *version);
  return result.ec == std::errc() && result.ptr == text.data() + text.size() && *version > 0;
}

// Shared by the io thread (until Submit accepts) and the inference callback.
struct InferContext {
  ~InferContext() { http::RecycleBody(std::move(request.body())); }

  http::Request request;
  http::Responder responder;
  DecodedInferRequest decoded;
  std::chrono::steady_clock::time_point start;
};

}  // namespace

bool DecodePathSegment(std::string_view in, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out->push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;
    int value = 0;
    auto result = std::from_chars(in.data() + i + 1, in.data() + i + 3, value, 16);
    if (result.ec != std::errc() || result.ptr != in.data() + i + 3) return false;
    out->push_back(static_cast<char>(value));
    i += 2;
  }
  return true;
}

HttpApi::HttpApi(ModelRepository& repository, ServeMetrics& metrics, std::function<bool()> ready,
                 SharedMemoryRegistry* shm)
    : repository_(repository), metrics_(metrics), ready_(std::move(ready)), shm_(shm) {}

void HttpApi::Handle(http::Request&& request, http::Responder responder) {
  std::string_view target(request.target().data(), request.target().size());
  std::string_view path = target.substr(0, target.find('?'));
  const bhttp::verb method = request.method();
  auto method_not_allowed = [&](std::string_view allowed) {
    http::Response response = http::ErrorResponse(
        request, http::Status::method_not_allowed,
        StrCat(request.method_string(), " is not allowed on ", path, "; use ", allowed));
    response.set(bhttp::field::allow, boost::beast::string_view(allowed.data(), allowed.size()));
    responder.Send(std::move(response));
  };

  if (path == "/metrics") {
    if (method != bhttp::verb::get) return method_not_allowed("GET");
    http::Response response(http::Status::ok, request.version());
    response.keep_alive(request.keep_alive());
    response.set(bhttp::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    response.body() = metrics_.Serialize();
    response.prepare_payload();
    return responder.Send(std::move(response));
  }

  std::vector<std::string> parts;
  if (path.size() < 3 || path.substr(0, 3) != "/v2" || !SplitPath(path, &parts) || parts.empty() ||
      parts[0] != "v2") {
    return responder.Send(http::ErrorResponse(
        request, http::Status::not_found,
        StrCat("no route ", path, "; the API is under /v2 (see docs/serve.md)")));
  }

  if (parts.size() == 1) {  // GET /v2
    if (method != bhttp::verb::get) return method_not_allowed("GET");
    json extensions = {"binary_tensor_data", "model_repository", "metrics"};
    if (shm_ != nullptr) extensions.push_back("system_shared_memory");
    json body = {
        {"name", "outpost-serve"}, {"version", OUTPOST_VERSION}, {"extensions", extensions}};
    return responder.Send(http::JsonResponse(request, http::Status::ok, body.dump()));
  }

  if (parts[1] == "health" && parts.size() == 3) {
    if (method != bhttp::verb::get) return method_not_allowed("GET");
    if (parts[2] == "live") return responder.Send(Empty(request, http::Status::ok));
    if (parts[2] == "ready") {
      return responder.Send(
          Empty(request, ready_() ? http::Status::ok : http::Status::service_unavailable));
    }
  }

  if (parts[1] == "systemsharedmemory") {
    return HandleSharedMemory(request, std::move(responder), parts);
  }

  if (parts[1] == "repository" && parts.size() >= 3) {
    if (method != bhttp::verb::post) return method_not_allowed("POST");
    std::string rest;
    for (size_t i = 2; i < parts.size(); ++i) StrAppend(&rest, i > 2 ? "/" : "", parts[i]);
    return HandleRepository(std::move(request), std::move(responder), rest);
  }

  if (parts[1] == "models" && parts.size() >= 3) {
    const std::string& model = parts[2];
    int64_t version = 0;
    size_t next = 3;
    if (parts.size() >= 5 && parts[3] == "versions") {
      if (!ParseVersionSegment(parts[4], &version)) {
        return responder.Send(
            http::ErrorResponse(request, http::Status::bad_request,
                                StrCat("version '", parts[4], "' is not a positive integer")));
      }
      next = 5;
    }
    if (parts.size() == next) {
      if (method != bhttp::verb::get) return method_not_allowed("GET");
      return HandleModelMetadata(request, std::move(responder), model, version);
    }
    if (parts.size() == next + 1 && parts[next] == "ready") {
      if (method != bhttp::verb::get) return method_not_allowed("GET");
      auto found = repository_.Get(model, version);
      if (absl::IsNotFound(found.status())) {
        return responder.Send(StatusError(request, found.status()));
      }
      return responder.Send(
          Empty(request, found.ok() ? http::Status::ok : http::Status::service_unavailable));
    }
    if (parts.size() == next + 1 && parts[next] == "infer") {
      if (method != bhttp::verb::post) return method_not_allowed("POST");
      return HandleInfer(std::move(request), std::move(responder), model, version);
    }
  }
  responder.Send(http::ErrorResponse(request, http::Status::not_found,
                                     StrCat("no route ", path, " (see docs/serve.md)")));
}

void HttpApi::HandleModelMetadata(const http::Request& request, http::Responder responder,
                                  const std::string& model, int64_t version) {
  auto found = repository_.Get(model, version);
  if (!found.ok()) return responder.Send(StatusError(request, found.status()));
  const ModelVersion& mv = **found;
  json versions = json::array();
  if (version != 0) {
    versions.push_back(mv.version_string());
  } else {
    for (const auto& v : repository_.Versions(model)) versions.push_back(v->version_string());
  }
  json fallbacks = json::array();
  for (const ProviderFallback& f : mv.engine().fallbacks()) {
    fallbacks.push_back(
        {{"provider", std::string(ProviderName(f.provider))}, {"reason", f.reason}});
  }
  json body = {{"name", mv.name()},
               {"versions", versions},
               {"platform", "onnxruntime_onnx"},
               {"inputs", SpecsJson(mv.engine().inputs())},
               {"outputs", SpecsJson(mv.engine().outputs())},
               {"max_batch_size", mv.config().max_batch_size},
               {"execution_provider", std::string(ProviderName(mv.engine().provider()))},
               {"provider_fallbacks", fallbacks}};
  // The model config's pre-processing (only the keys it writes), for
  // clients that build the image tensor themselves.
  if (!mv.config().preprocess.empty())
    body["preprocess"] = PreprocessSpecJson(mv.config().preprocess);
  responder.Send(http::JsonResponse(request, http::Status::ok, body.dump()));
}

void HttpApi::HandleInfer(http::Request&& request, http::Responder responder, std::string model,
                          int64_t version) {
  auto ctx = std::make_shared<InferContext>();
  ctx->start = std::chrono::steady_clock::now();
  ctx->request = std::move(request);
  ctx->responder = std::move(responder);

  std::optional<size_t> header_length;
  if (auto field = ctx->request.find(
          boost::beast::string_view(kHeaderLengthField.data(), kHeaderLengthField.size()));
      field != ctx->request.end()) {
    size_t value = 0;
    std::string_view text(field->value().data(), field->value().size());
    auto result = std::from_chars(text.data(), text.data() + text.size(), value);
    if (result.ec != std::errc() || result.ptr != text.data() + text.size()) {
      return ctx->responder.Send(http::ErrorResponse(
          ctx->request, http::Status::bad_request,
          StrCat(kHeaderLengthField, " must be a non-negative integer, got '", text, "'")));
    }
    header_length = value;
  }

  auto found = repository_.Get(model, version);
  if (!found.ok()) return ctx->responder.Send(StatusError(ctx->request, found.status()));
  ModelVersion* mv = found->get();

  std::string_view body = ctx->request.body();
  absl::Status status = DecodeInferRequest(body, header_length, &ctx->decoded, shm_);
  if (!status.ok()) {
    mv->metrics().RecordFailure();
    return ctx->responder.Send(StatusError(ctx->request, status));
  }
  ctx->decoded.request.arrival = ctx->start;

  // The callback runs on an inference thread, or on this one before Submit
  // returns (inline execution). It does not keep the version alive: the
  // version's destructor drains its scheduler first, so `mv` outlives every
  // callback of its queue, and `found` holds it during an inline run.
  status = mv->scheduler().Submit(
      std::move(ctx->decoded.request),
      [ctx, mv](absl::StatusOr<InferResponse> result) mutable {
        if (!result.ok()) {
          mv->metrics().RecordFailure();
          spdlog::warn("model '{}' version {}: inference failed: {}", mv->name(),
                       mv->version_string(), MessageOf(result.status()));
          return ctx->responder.Send(StatusError(ctx->request, result.status()));
        }
        EncodedInferResponse encoded;
        absl::Status encode_status = EncodeInferResponse(
            ctx->decoded, mv->name(), mv->version_string(), result->outputs, &encoded);
        if (!encode_status.ok()) {
          mv->metrics().RecordFailure();
          return ctx->responder.Send(StatusError(ctx->request, encode_status));
        }
        result->outputs.clear();  // release ONNX Runtime's buffers before answering
        http::Response response(http::Status::ok, ctx->request.version());
        response.keep_alive(ctx->request.keep_alive());
        if (encoded.header_length.has_value()) {
          response.set(bhttp::field::content_type, "application/octet-stream");
          response.set(
              boost::beast::string_view(kHeaderLengthField.data(), kHeaderLengthField.size()),
              std::to_string(*encoded.header_length));
        } else {
          response.set(bhttp::field::content_type, "application/json");
        }
        response.body() = std::move(encoded.body);
        response.prepare_payload();
        int64_t total_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::steady_clock::now() - ctx->start)
                               .count();
        mv->metrics().RecordSuccess(total_ns, result->stats.queue_ns, result->stats.compute_ns);
        ctx->responder.Send(std::move(response));
      },
      SubmitMode::kMayRunInline);
  if (!status.ok()) {
    if (absl::IsUnavailable(status)) {
      mv->metrics().RecordRejection();
    } else {
      mv->metrics().RecordFailure();
    }
    ctx->responder.Send(StatusError(ctx->request, status));
  }
}

void HttpApi::HandleSharedMemory(const http::Request& request, http::Responder responder,
                                 const std::vector<std::string>& parts) {
  if (shm_ == nullptr) {
    return responder.Send(http::ErrorResponse(
        request, http::Status::not_found,
        "the system shared memory extension is offered on loopback listeners only"));
  }
  // /v2/systemsharedmemory/status | /unregister
  // /v2/systemsharedmemory/region/{name}/status | /register | /unregister
  std::string region;
  std::string action;
  if (parts.size() == 3) {
    action = parts[2];
  } else if (parts.size() == 5 && parts[2] == "region") {
    region = parts[3];
    action = parts[4];
  }
  auto status_json = [](const SharedMemoryRegion& r) {
    return json{
        {"name", r.name()}, {"key", r.key()}, {"offset", r.offset()}, {"byte_size", r.byte_size()}};
  };
  if (action == "status") {
    if (request.method() != bhttp::verb::get) {
      return responder.Send(
          http::ErrorResponse(request, http::Status::method_not_allowed, "use GET for status"));
    }
    json out = json::array();
    if (!region.empty()) {
      auto found = shm_->Find(region);
      if (!found.ok()) return responder.Send(StatusError(request, found.status()));
      out.push_back(status_json(**found));
    } else {
      for (const auto& r : shm_->List()) out.push_back(status_json(*r));
    }
    return responder.Send(http::JsonResponse(request, http::Status::ok, out.dump()));
  }
  if ((action == "register" && !region.empty()) || action == "unregister") {
    if (request.method() != bhttp::verb::post) {
      return responder.Send(http::ErrorResponse(request, http::Status::method_not_allowed,
                                                StrCat("use POST to ", action)));
    }
    absl::Status status;
    if (action == "unregister") {
      if (region.empty()) {
        shm_->UnregisterAll();
      } else {
        status = shm_->Unregister(region);
      }
    } else {
      json body = json::parse(request.body(), nullptr, /*allow_exceptions=*/false);
      if (!body.is_object() || !body.contains("key") || !body["key"].is_string() ||
          !body.contains("byte_size") || !body["byte_size"].is_number_unsigned() ||
          (body.contains("offset") && !body["offset"].is_number_unsigned())) {
        return responder.Send(http::ErrorResponse(
            request, http::Status::bad_request,
            "register takes {\"key\": \"/name\", \"byte_size\": N, \"offset\": N}"));
      }
      status = shm_->Register(region, body["key"].get<std::string>(),
                              body.value("offset", size_t{0}), body["byte_size"].get<size_t>());
    }
    if (!status.ok()) return responder.Send(StatusError(request, status));
    return responder.Send(http::JsonResponse(request, http::Status::ok, "{}"));
  }
  responder.Send(http::ErrorResponse(
      request, http::Status::not_found,
      "no such shared memory route; see docs/serve.md (status, region/{name}/register, "
      "region/{name}/unregister, unregister)"));
}

void HttpApi::HandleRepository(http::Request&& request, http::Responder responder,
                               std::string_view rest) {
  if (rest == "index") {
    json out = json::array();
    for (const ModelStatus& s : repository_.Index()) {
      json item = {{"name", s.name}, {"state", s.state}};
      if (!s.version.empty()) item["version"] = s.version;
      if (!s.reason.empty()) item["reason"] = s.reason;
      out.push_back(std::move(item));
    }
    return responder.Send(http::JsonResponse(request, http::Status::ok, out.dump()));
  }
  constexpr std::string_view kModels = "models/";
  bool load = rest.ends_with("/load");
  bool unload = rest.ends_with("/unload");
  if (!rest.starts_with(kModels) || (!load && !unload)) {
    return responder.Send(
        http::ErrorResponse(request, http::Status::not_found,
                            StrCat("no repository route '", rest,
                                   "'; use index, models/{name}/load or models/{name}/unload")));
  }
  std::string model(rest.substr(kModels.size(), rest.size() - kModels.size() -
                                                    (load ? std::string_view("/load").size()
                                                          : std::string_view("/unload").size())));
  if (model.empty() || model.find('/') != std::string::npos) {
    return responder.Send(http::ErrorResponse(request, http::Status::bad_request,
                                              "the model name must be one path segment"));
  }
  auto shared = std::make_shared<std::pair<http::Request, http::Responder>>(std::move(request),
                                                                            std::move(responder));
  bool queued = repository_.RunOnRepositoryThread([this, shared, model, load]() mutable {
    absl::Status status = load ? repository_.Load(model) : repository_.Unload(model);
    auto& [req, res] = *shared;
    if (!status.ok()) return res.Send(StatusError(req, status));
    res.Send(http::JsonResponse(req, http::Status::ok, "{}"));
  });
  if (!queued) {
    auto& [req, res] = *shared;
    res.Send(
        http::ErrorResponse(req, http::Status::service_unavailable, "server is shutting down"));
  }
}

}  // namespace outpost::serve
