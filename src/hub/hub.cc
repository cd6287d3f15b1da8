#include "hub/hub.h"

#include <fcntl.h>
#include <sodium.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "bundle/bundle.h"
#include "common/atomic_file.h"
#include "common/http_server.h"
#include "common/sha256.h"
#include "common/tls_pki.h"
#include "hub/api.h"
#include "hub/blob_store.h"
#include "hub/rollout_engine.h"
#include "hub/router.h"
#include "hub/web_assets.h"

namespace outpost::hub {

// See Hub::Impl's listener (idle keep-alive of device connections).
constexpr std::chrono::seconds kDeviceIdleKeepAlive{660};
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

TimeMs NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string_view BearerToken(const http::Request& request) {
  std::string_view auth = HeaderOf(request, boost::beast::http::field::authorization);
  constexpr std::string_view kBearer = "Bearer ";
  if (auth.size() <= kBearer.size() || !auth.starts_with(kBearer)) return {};
  return auth.substr(kBearer.size());
}

bool Allows(Role role, Access access) {
  switch (access) {
    case Access::kViewer:
      return true;
    case Access::kOperator:
      return role == Role::kOperator || role == Role::kAdmin;
    case Access::kAdmin:
      return role == Role::kAdmin;
    default:
      return false;
  }
}

}  // namespace

std::string NewSecret(std::string_view prefix) {
  if (sodium_init() < 0) std::abort();  // no randomness: nothing is safe
  unsigned char bytes[32];
  randombytes_buf(bytes, sizeof(bytes));
  char text[sodium_base64_ENCODED_LEN(sizeof(bytes), sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
  sodium_bin2base64(text, sizeof(text), bytes, sizeof(bytes),
                    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  sodium_memzero(bytes, sizeof(bytes));
  return StrCat(prefix, text);
}

std::string HashSecret(std::string_view secret) { return Sha256::HexOf(secret); }

// ---------------------------------------------------------------- Impl

struct Hub::Impl : HubContext {
  HubOptions options;
  std::unique_ptr<Store> store_;
  std::unique_ptr<BlobStore> blobs_;
  std::string ca_file_;
  std::string url_;
  Router router;
  std::unique_ptr<http::Server> server;
  std::unique_ptr<boost::asio::thread_pool> pool;
  std::unique_ptr<RolloutEngine> rollouts_;
  std::unique_ptr<WebAssets> web_;  // null: the dashboard is not installed
  std::unique_ptr<AlertEngine> alerts_;
  std::unique_ptr<TelemetryMaintainer> maintainer_;

  // Parked desired-state polls, by device id.
  struct Parked {
    std::shared_ptr<Call> call;
    std::string etag;
    Clock::time_point deadline;
  };
  std::mutex parked_mu;
  std::unordered_multimap<std::string, Parked> parked;  // guarded by parked_mu
  std::condition_variable recheck_cv;
  bool stopping = false;  // guarded by parked_mu
  std::thread recheck_thread;

  // HubContext
  Store& store() override { return *store_; }
  BlobStore& blobs() override { return *blobs_; }
  const HubOptions& hub_options() const override { return options; }
  std::string hub_url() const override { return url_; }
  std::string ca_pem() const override {
    if (ca_file_.empty()) return "";
    absl::StatusOr<std::string> pem = ReadFile(ca_file_);
    return pem.ok() ? *pem : "";
  }
  TimeMs Now() const override { return options.clock ? options.clock() : NowMs(); }
  RolloutEngine& rollouts() override { return *rollouts_; }
  AlertEngine& alerts() override { return *alerts_; }

  void DesiredChanged(std::string_view device_id) override {
    std::vector<Parked> wake;
    {
      std::lock_guard lock(parked_mu);
      auto [begin, end] = parked.equal_range(std::string(device_id));
      for (auto it = begin; it != end; ++it) wake.push_back(std::move(it->second));
      parked.erase(begin, end);
    }
    for (Parked& p : wake) Repoll(std::move(p));
  }

  void AllDesiredChanged() override {
    std::vector<Parked> wake;
    {
      std::lock_guard lock(parked_mu);
      for (auto& [id, p] : parked) wake.push_back(std::move(p));
      parked.clear();
    }
    for (Parked& p : wake) Repoll(std::move(p));
  }

  // Answers a parked poll if its desired state changed or its time is up;
  // parks it again otherwise.
  void Repoll(Parked p) {
    boost::asio::post(*pool, [this, p = std::move(p)]() mutable {
      Call& call = *p.call;
      call.now = Now();
      absl::StatusOr<DesiredDocument> doc = BuildDesired(*this, call.device->id);
      if (!doc.ok()) return call.Fail(doc.status());
      if (doc->etag != p.etag) return SendDesired(call, *doc);
      if (Clock::now() >= p.deadline) return SendNotModified(call, *doc);
      Park(std::move(p));
    });
  }

  void Park(Parked p) {
    std::lock_guard lock(parked_mu);
    if (stopping) {
      // Shutting down: let the device come back to another replica.
      SendNotModifiedNoBody(*p.call, p.etag);
      return;
    }
    std::string id = p.call->device->id;
    parked.emplace(std::move(id), std::move(p));
  }

  void ParkPoll(Call&& call, std::string etag, std::chrono::seconds wait) override {
    Park({std::make_shared<Call>(std::move(call)), std::move(etag), Clock::now() + wait});
    recheck_cv.notify_one();
  }

  // Re-evaluates every parked poll: expired ones get 304, others are
  // compared with the database (changes made by other hub replicas).
  void RecheckLoop() {
    std::unique_lock lock(parked_mu);
    while (!stopping) {
      recheck_cv.wait_for(lock, options.long_poll_recheck);
      if (stopping) break;
      std::vector<Parked> all;
      for (auto& [id, p] : parked) all.push_back(std::move(p));
      parked.clear();
      lock.unlock();
      for (Parked& p : all) Repoll(std::move(p));
      lock.lock();
    }
    // Stopping: answer everything parked so no device waits on a dead hub.
    for (auto& [id, p] : parked) SendNotModifiedNoBody(*p.call, p.etag);
    parked.clear();
  }

  void Handle(http::Request&& request, http::Responder responder) {
    auto call = std::make_shared<Call>();
    call->request = std::move(request);
    call->responder = std::move(responder);
    std::string_view target = SV(call->request.target());
    size_t q = target.find('?');
    std::string_view path = target.substr(0, q);
    if (WebAssets::Owns(path)) {
      // The dashboard's files are in memory: answered on the io thread.
      return call->responder.Send(WebAssets::Respond(web_.get(), call->request, path));
    }
    if (q != std::string_view::npos) call->query = ParseQuery(target.substr(q + 1));
    Router::Miss miss;
    const Route* route =
        router.Match(SV(call->request.method_string()), path, &call->params, &miss);
    if (route == nullptr) {
      if (miss == Router::Miss::kNoMethod) {
        return call->Fail(
            http::Status::method_not_allowed,
            StrCat("method ", call->request.method_string(), " is not allowed on ", path));
      }
      return call->Fail(http::Status::not_found, StrCat("no such route: ", path));
    }
    // Everything else may touch the database: off the io thread.
    boost::asio::post(*pool, [this, call, route] {
      call->now = Now();
      if (!Authenticate(*call, route->access)) return;
      try {
        route->handler(*call);
      } catch (const nlohmann::json::exception& e) {
        // A field of the wrong type in the client's JSON (handlers read
        // bodies with typed accessors): the client's mistake, not ours.
        call->Fail(http::Status::bad_request, StrCat("malformed request body: ", e.what()));
      } catch (const std::exception& e) {
        spdlog::error("hub: {} {} failed: {}", SV(call->request.method_string()),
                      SV(call->request.target()), e.what());
        call->Fail(http::Status::internal_server_error, StrCat("internal error: ", e.what()));
      }
    });
  }

  absl::Status CheckHeader(const http::Request& header, uint64_t* limit) {
    std::string_view target = SV(header.target());
    std::map<std::string, std::string> params;
    Router::Miss miss;
    const Route* route = router.Match(SV(header.method_string()),
                                      target.substr(0, target.find('?')), &params, &miss);
    constexpr uint64_t kMaxApiBody = 8 << 20;
    *limit = kMaxApiBody;
    if (route == nullptr) return absl::OkStatus();  // 404/405 once read
    if (route->access != Access::kPublic && BearerToken(header).empty()) {
      return absl::UnauthenticatedError(
          "missing credentials: send 'Authorization: Bearer <token>'");
    }
    if (route->pattern == "/api/v1/admin/releases") *limit = options.max_bundle_bytes;
    return absl::OkStatus();
  }

  bool Authenticate(Call& call, Access access) {
    if (access == Access::kPublic) return true;
    std::string_view secret = BearerToken(call.request);
    if (secret.empty()) {
      call.Fail(http::Status::unauthorized,
                "missing credentials: send 'Authorization: Bearer <token>'");
      return false;
    }
    std::string hash = HashSecret(secret);
    if (access == Access::kDevice) {
      absl::StatusOr<Device> device = store_->GetDeviceByCredential(hash);
      if (!device.ok()) {
        if (absl::IsNotFound(device.status())) {
          call.Fail(http::Status::unauthorized, "unknown device credential");
        } else {
          call.Fail(device.status());
        }
        return false;
      }
      if (device->status != DeviceStatus::kActive) {
        call.Fail(http::Status::unauthorized,
                  StrCat("device '", device->id, "' is ", NameOf(device->status),
                         ": re-enrol it with a new bootstrap token"));
        return false;
      }
      call.device = std::move(*device);
      return true;
    }
    absl::StatusOr<ApiToken> token = store_->FindApiTokenByHash(hash);
    if (!token.ok()) {
      if (absl::IsNotFound(token.status())) {
        call.Fail(http::Status::unauthorized, "unknown or revoked API token");
      } else {
        call.Fail(token.status());
      }
      return false;
    }
    if (!Allows(token->role, access)) {
      call.Fail(http::Status::forbidden,
                StrCat("this route needs the ", access == Access::kAdmin ? "admin" : "operator",
                       " role; token '", token->name, "' is ", NameOf(token->role)));
      return false;
    }
    call.token = std::move(*token);
    return true;
  }
};

// ---------------------------------------------------------------- Hub

absl::StatusOr<std::unique_ptr<Hub>> Hub::Create(HubOptions options) {
  if (options.data_dir.empty()) return absl::InvalidArgumentError("--data is required");
  std::error_code ec;
  fs::create_directories(options.data_dir, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        StrCat("cannot create ", options.data_dir.string(), ": ", ec.message()));
  }
  fs::create_directories(options.data_dir / "trusted-keys", ec);
  auto impl = std::make_unique<Impl>();
  std::string db_url = options.db_url.empty()
                           ? StrCat("sqlite://", (options.data_dir / "hub.db").string())
                           : options.db_url;
  ASSIGN_OR_RETURN(impl->store_, Store::Open(db_url, options.store));
  ASSIGN_OR_RETURN(impl->blobs_, BlobStore::Open(options.data_dir / "blobs"));

  http::ServerOptions server_options;
  server_options.address = options.address;
  server_options.port = options.port;
  server_options.threads = 2;
  server_options.server_name = "outpost-hub/" OUTPOST_VERSION;
  server_options.max_body_bytes = options.max_bundle_bytes;
  server_options.request_timeout = std::chrono::minutes(10);  // bundle uploads
  // Idle keep-alive: longer than the longest long poll, and longer than the
  // agent's default heartbeat interval (600 s), so a device's heartbeat
  // connection stays open between beats instead of paying a TCP and TLS
  // handshake (about 1 kB) every time.
  server_options.idle_timeout =
      std::max(std::chrono::seconds(options.max_long_poll.count() + 60), kDeviceIdleKeepAlive);
  if (options.insecure_http) {
    if (!http::IsLoopbackAddress(options.address)) {
      return absl::InvalidArgumentError(StrCat("plain HTTP is allowed on loopback only; ",
                                               options.address,
                                               " needs TLS (drop --insecure-http)"));
    }
    spdlog::warn("hub: serving plain HTTP on {} (loopback only; never do this in production)",
                 options.address);
  } else if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
    server_options.tls_cert_file = options.tls_cert_file;
    server_options.tls_key_file = options.tls_key_file;
  } else {
    std::vector<std::string> names = options.tls_names;
    if (!http::IsLoopbackAddress(options.address) && options.address != "0.0.0.0" &&
        options.address != "::") {
      names.push_back(options.address);
    }
    ASSIGN_OR_RETURN(pki::ServerPki pki, pki::EnsureServerPki(options.data_dir / "tls", names));
    if (pki.created) {
      ASSIGN_OR_RETURN(std::string fingerprint, pki::CertificateFingerprint(pki.ca_cert));
      spdlog::info("hub: created its own CA {} (SHA-256 {})", pki.ca_cert.string(), fingerprint);
    }
    server_options.tls_cert_file = pki.server_cert;
    server_options.tls_key_file = pki.server_key;
    impl->ca_file_ = pki.ca_cert;
  }
  Impl* raw = impl.get();
  // Before any body is read: anonymous requests to authenticated routes are
  // refused, and only a release push may send more than a few MB.
  server_options.header_check = [raw](const http::Request& header, uint64_t* limit) {
    return raw->CheckHeader(header, limit);
  };
  ASSIGN_OR_RETURN(impl->server,
                   http::Server::Create(server_options,
                                        [raw](http::Request&& request, http::Responder responder) {
                                          raw->Handle(std::move(request), std::move(responder));
                                        }));
  std::string host = options.address == "0.0.0.0" || options.address == "::"
                         ? std::string("127.0.0.1")
                         : options.address;
  if (host.find(':') != std::string::npos) host = StrCat("[", host, "]");
  impl->url_ = !options.public_url.empty() ? options.public_url
                                           : StrCat(impl->server->tls() ? "https" : "http", "://",
                                                    host, ":", impl->server->port());
  while (!impl->url_.empty() && impl->url_.back() == '/') impl->url_.pop_back();
  fs::path web_dir = options.web_dir.empty() ? WebAssets::DefaultDir() : options.web_dir;
  absl::StatusOr<std::unique_ptr<WebAssets>> web = WebAssets::Load(web_dir);
  if (web.ok()) {
    impl->web_ = std::move(*web);
    spdlog::info("hub: dashboard at {}/ui/ ({} files from {})", impl->url_,
                 impl->web_->file_count(), web_dir.string());
  } else if (!options.web_dir.empty()) {
    return absl::InvalidArgumentError(StrCat("--web-dir: ", MessageOf(web.status())));
  } else {
    spdlog::warn("hub: no dashboard ({}); the API is unaffected", MessageOf(web.status()));
  }
  impl->options = std::move(options);
  RegisterDeviceApi(*impl, impl->router);
  RegisterAdminApi(*impl, impl->router);
  RegisterMetricsApi(*impl, impl->router);
  RegisterObservabilityApi(*impl, impl->router);
  impl->rollouts_ = std::make_unique<RolloutEngine>(*impl);
  std::unique_ptr<WebhookNotifier> notifier;
  if (!impl->options.alert_webhook.url.empty()) {
    WebhookOptions webhook = impl->options.alert_webhook;
    if (webhook.hub_url.empty()) webhook.hub_url = impl->url_;
    ASSIGN_OR_RETURN(notifier, WebhookNotifier::Create(std::move(webhook)));
  }
  impl->alerts_ = std::make_unique<AlertEngine>(*impl->store_, impl->options.alert_rules,
                                                std::move(notifier), &NowMs);
  impl->maintainer_ = std::make_unique<TelemetryMaintainer>(
      *impl->store_, impl->options.telemetry_retention, &NowMs);
  return std::unique_ptr<Hub>(new Hub(std::move(impl)));
}

Hub::Hub(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Hub::~Hub() { Stop(); }

void Hub::Start() {
  if (impl_->pool) return;
  impl_->pool = std::make_unique<boost::asio::thread_pool>(impl_->options.worker_threads);
  impl_->recheck_thread = std::thread([this] { impl_->RecheckLoop(); });
  impl_->rollouts_->Start(impl_->options.rollout_tick);
  impl_->alerts_->Start(impl_->options.alert_interval);
  impl_->maintainer_->Start(impl_->options.telemetry_maintenance_interval);
  impl_->server->Start();
  spdlog::info("hub: serving {} ({})", impl_->url_, impl_->store_->Describe());
}

void Hub::Stop() {
  if (!impl_->pool) return;
  impl_->rollouts_->Stop();
  impl_->alerts_->Stop();
  impl_->maintainer_->Stop();
  {
    std::lock_guard lock(impl_->parked_mu);
    impl_->stopping = true;
  }
  impl_->recheck_cv.notify_all();
  if (impl_->recheck_thread.joinable()) impl_->recheck_thread.join();
  impl_->server->Stop();
  impl_->pool->join();
  impl_->pool.reset();
}

uint16_t Hub::port() const { return impl_->server->port(); }
std::string Hub::url() const { return impl_->url_; }
bool Hub::tls() const { return impl_->server->tls(); }
std::string Hub::ca_file() const { return impl_->ca_file_; }
Store& Hub::store() { return *impl_->store_; }

absl::Status Hub::EvaluateAlerts() { return impl_->alerts_->EvaluateOnce(); }

std::vector<Hub::RouteInfo> Hub::Routes() const {
  static constexpr const char* kAccess[] = {"public", "device", "viewer", "operator", "admin"};
  std::vector<RouteInfo> out;
  for (const Route& route : impl_->router.routes()) {
    out.push_back({route.method, route.pattern, kAccess[static_cast<int>(route.access)]});
  }
  return out;
}

}  // namespace outpost::hub
