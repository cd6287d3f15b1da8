// A small blocking HTTP/1.1 client for Outpost's control-plane
// calls: the agent's device API (enrol, desired state, status, telemetry)
// and the CLI's admin API. Artifact downloads use agent::Fetch instead
// (resumable, streamed to disk).
//
// One HttpClient keeps one connection alive between calls (keep-alive, TLS
// session reuse), so a device polling every few seconds does not pay a TLS
// handshake each time; the transport is common/http_connection.h (Beast,
// Asio, mbedTLS), also under agent::Fetch. Response bodies are returned as
// received (no Content-Encoding decoding); redirects are not followed.
//
// Thread safety: an HttpClient is used by one thread at a time; make one per
// thread that calls it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/http_connection.h"
#include "common/status.h"

namespace outpost {

struct HttpClientOptions {
  // PEM file of the CAs to trust *instead of* the system store (the hub's
  // own CA, pinned by the bootstrap file). Empty: the system store.
  std::string ca_file;
  // Sent as "Authorization: Bearer <token>" on every request. Empty: none.
  std::string bearer_token;
  std::string user_agent = "outpost/" OUTPOST_VERSION;
  std::chrono::milliseconds connect_timeout{10000};
  // Whole request, unless the request sets its own (long polls do).
  std::chrono::milliseconds timeout{30000};
  // Unset: the environment's https_proxy/http_proxy/no_proxy decide
  // (common/http_proxy.h). See HttpConnectionOptions::proxy.
  std::optional<HttpProxy> proxy;
};

struct HttpRequest {
  std::string method = "GET";
  std::string url;
  std::string body;
  std::string content_type;  // set when body is not empty
  std::vector<std::pair<std::string, std::string>> headers;
  std::optional<std::chrono::milliseconds> timeout;
  // When set, the body is streamed from this file instead of `body` (a
  // release bundle of gigabytes is never held in memory).
  std::string body_file;
  // When set, called as the body goes out with the bytes sent so far and
  // the body's size (several times a second, and at least once at the
  // end). Runs on the calling thread, inside Send.
  std::function<void(uint64_t sent, uint64_t total)> upload_progress;
};

struct HttpResponse {
  long status = 0;
  std::string body;
  // Header names lowercased, in arrival order (last response only when
  // there were interim 100 responses or redirects).
  std::vector<std::pair<std::string, std::string>> headers;

  // The value of the first header `name` (lowercase), or "".
  std::string_view Header(std::string_view name) const;
  // The "error" member of a JSON error body, or the body itself (clipped).
  std::string ErrorMessage() const;
};

class HttpClient {
 public:
  // Does not connect yet; never fails today (StatusOr for the future).
  static absl::StatusOr<std::unique_ptr<HttpClient>> Create(HttpClientOptions options);
  ~HttpClient();

  // Performs one request. Any HTTP status is a response (callers decide
  // what a 4xx means). Errors: InvalidArgument (malformed URL, a scheme
  // other than http/https, a header with CR/LF, a malformed proxy
  // variable), PermissionDenied (the proxy refused the tunnel: 407 or 403), FailedPrecondition (TLS
  // verification failed: wrong CA or name; unreadable CA file), DeadlineExceeded (timed out),
  // Unavailable (could not connect, connection reset: worth retrying), or the errno status of
  // opening `body_file` (NotFound, PermissionDenied, ...). Messages name
  // the URL or the file.
  absl::StatusOr<HttpResponse> Send(const HttpRequest& request);

  void set_bearer_token(std::string token) { options_.bearer_token = std::move(token); }
  const HttpClientOptions& options() const { return options_; }

 private:
  HttpClient(HttpClientOptions options, std::unique_ptr<HttpConnection> connection);

  HttpClientOptions options_;
  std::unique_ptr<HttpConnection> connection_;
};

// Maps an HTTP error status to the absl code an API client should return:
// 400 InvalidArgument, 401 Unauthenticated, 403 PermissionDenied, 404
// NotFound, 409 AlreadyExists / 412 FailedPrecondition, 429 and 5xx
// Unavailable, others Unknown. The message is `context: <status> <error>`.
absl::Status HttpErrorStatus(const HttpResponse& response, std::string_view context);

}  // namespace outpost
