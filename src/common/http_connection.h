// One blocking HTTP/1.1 client connection on Boost.Beast + Asio, with
// mbedTLS for https (not OpenSSL: the agent's memory budget, see
// docs/architecture.md): the single HTTP client implementation under
// HttpClient (control-plane calls of the agent and the CLI) and
// agent::Fetch (resumable artifact downloads).
//
// An HttpConnection keeps its connection open between exchanges with the
// same scheme, host and port through the same proxy (keep-alive; a TLS
// session is kept for the next handshake too), so a device polling every few seconds pays neither a
// TCP nor a TLS handshake each time. A kept connection the server has closed in the meantime is
// replaced transparently: a request that fails before any byte of its response arrived on a reused
// connection is sent once more on a new one. Idle connections carry TCP keep-alive probes only
// after 15 minutes (a long poll or a heartbeat connection is idle by design).
//
// Response bodies are passed through as received: no Content-Encoding is
// decoded (callers that send Accept-Encoding decode what they asked for).
// Chunked and close-delimited bodies are de-framed. Redirects are not
// followed: a 3xx is a response like any other.
//
// Thread safety: one thread at a time. No thread is started: name
// resolution is a blocking getaddrinfo on the calling thread.
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

#include "common/status.h"

namespace outpost {

// Header names lowercased, values trimmed, in arrival order.
using HttpHeaderList = std::vector<std::pair<std::string, std::string>>;

struct ParsedUrl {
  bool tls = false;
  std::string host;  // IPv6 literals without brackets
  uint16_t port = 0;
  std::string target = "/";  // path and query
  // "host" or "host:port" (bracketed IPv6) for the Host header.
  std::string Authority() const;
  // "scheme://host:port": connections are reused only for the same origin.
  std::string Origin() const;
};

struct HostPort {
  std::string host;  // IPv6 literals without brackets
  uint16_t port = 0;
};

// "host", "host:port", "[v6]" or "[v6]:port" (port 1..65535, `default_port`
// when absent). InvalidArgument with the reason alone ("no host", "bad
// port", ...), for the caller to put in its own message.
absl::StatusOr<HostPort> ParseAuthority(std::string_view authority, uint16_t default_port);

// Accepts http:// and https:// URLs with a host, an optional port and an
// optional path; InvalidArgument for anything else, naming the URL.
absl::StatusOr<ParsedUrl> ParseHttpUrl(std::string_view url);

// An HTTP proxy to go through (common/http_proxy.h chooses one from the
// environment). https:// targets are reached through a CONNECT tunnel (TLS
// end to end with the target: the proxy sees only the tunnel's host and
// port), http:// targets with absolute-form requests.
struct HttpProxy {
  std::string host;  // IPv6 literals without brackets; empty: connect directly
  uint16_t port = 80;
  // The Proxy-Authorization value ("Basic <base64>"), or empty for none.
  std::string authorization;
  // Where the setting came from, for messages (e.g. "https_proxy").
  std::string source = "options";
  // "host:port" (IPv6 in brackets).
  std::string Address() const;
};

struct HttpConnectionOptions {
  // PEM file of the CAs to trust *instead of* the system store (the hub's
  // own CA, pinned by the bootstrap file). Empty: the system store.
  std::string ca_file;
  // Optional public-key pins, "sha256//BASE64[;sha256//BASE64...]": the
  // base64 SHA-256 of the server certificate's SubjectPublicKeyInfo (DER).
  std::string pinned_public_key;
  // TCP connect, plus the proxy's CONNECT exchange, plus TLS handshake.
  std::chrono::milliseconds connect_timeout{10000};
  // Unset: the environment's proxy variables decide, read once for each new
  // target (ProxyFromEnvironment in common/http_proxy.h; loopback targets
  // are always direct). Set with an empty host: always direct. Set: every
  // target goes through that proxy, loopback included.
  std::optional<HttpProxy> proxy;
};

// Receives one response. A non-OK return aborts the exchange (the
// connection is dropped) and Exchange returns that status.
class HttpResponseHandler {
 public:
  virtual ~HttpResponseHandler() = default;
  // The final response's status line and headers, before any body byte.
  virtual absl::Status OnHead(int status, const HttpHeaderList& headers) = 0;
  // Each piece of the de-framed body, in order.
  virtual absl::Status OnBody(std::string_view data) = 0;
};

struct HttpExchange {
  std::string_view method = "GET";
  const ParsedUrl* url = nullptr;  // required
  // Sent after Host; Content-Length is added for a body (or POST/PUT).
  // InvalidArgument when a name or value holds CR, LF or NUL.
  const std::vector<std::pair<std::string, std::string>>* headers = nullptr;
  std::string_view body;
  // When >= 0, the body is read from this file descriptor with pread from
  // offset 0, `body_fd_size` bytes, instead of `body` (not owned).
  int body_fd = -1;
  uint64_t body_fd_size = 0;
  // Called with (bytes sent, body size) as the body goes out, at most about
  // ten times a second and always once when all of it is sent.
  const std::function<void(uint64_t, uint64_t)>* upload_progress = nullptr;
  // The whole exchange (connect included) must end by then.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  // Abandon the exchange when fewer than low_speed_bytes_per_second arrive
  // on average over low_speed_time (0: no such check).
  uint64_t low_speed_bytes_per_second = 0;
  std::chrono::seconds low_speed_time{0};
  // Polled about ten times a second; true aborts with Cancelled.
  const std::function<bool()>* cancelled = nullptr;
};

class HttpConnection {
 public:
  static std::unique_ptr<HttpConnection> Create(HttpConnectionOptions options);
  ~HttpConnection();
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  // Sends one request and streams its response into `handler`.
  // Errors (messages name the host or the file):
  //   InvalidArgument     a header with CR/LF/NUL, no url, or a malformed
  //                       proxy variable (the message names it)
  //   FailedPrecondition  TLS verification failed (CA, host name, pin) or
  //                       the CA file cannot be loaded
  //   DeadlineExceeded    the deadline passed, the connect timed out, or
  //                       the transfer stalled under the low-speed limit
  //   Cancelled           `cancelled` returned true
  //   Unavailable         name resolution, connect, reset, truncated or
  //                       malformed response, a proxy that cannot be reached
  //                       or refused the tunnel: worth retrying
  //   PermissionDenied    the proxy answered 407 or 401 (authentication
  //                       required or failed) or 403 to a CONNECT
  //   errno codes         reading body_fd
  //   whatever `handler` returned
  absl::Status Exchange(const HttpExchange& exchange, HttpResponseHandler& handler);

  // Drops the kept connection, if any.
  void Close();

 private:
  struct Impl;
  explicit HttpConnection(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace outpost
