#include "common/http_connection.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <limits>

namespace outpost {
namespace {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

// One read or one file chunk of an upload; allocated once per connection.
constexpr size_t kChunk = 64 * 1024;
// How often a blocked operation wakes to poll `cancelled`.
constexpr auto kPollInterval = std::chrono::milliseconds(100);
constexpr auto kProgressInterval = std::chrono::milliseconds(100);
// Keep-alive probes after this much idle time, then every kKeepAliveInterval.
constexpr int kKeepAliveIdleSeconds = 15 * 60;
constexpr int kKeepAliveIntervalSeconds = 60;

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

bool IsIpLiteral(const std::string& host) {
  error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

bool HasControl(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos;
}

// Base64 SHA-256 of the peer certificate's SubjectPublicKeyInfo (DER).
std::string PeerKeyPin(SSL* ssl) {
  X509* cert = SSL_get1_peer_certificate(ssl);
  if (cert == nullptr) return {};
  unsigned char* der = nullptr;
  int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
  X509_free(cert);
  if (len <= 0) return {};
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  int ok = EVP_Digest(der, static_cast<size_t>(len), digest, &digest_len, EVP_sha256(), nullptr);
  OPENSSL_free(der);
  if (ok != 1) return {};
  std::string b64(4 * ((digest_len + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), digest,
                          static_cast<int>(digest_len));
  b64.resize(static_cast<size_t>(n));
  return b64;
}

bool PinMatches(std::string_view pins, std::string_view pin) {
  while (!pins.empty()) {
    size_t semi = pins.find(';');
    std::string_view one = pins.substr(0, semi);
    if (one.starts_with("sha256//") && one.substr(8) == pin) return true;
    if (semi == std::string_view::npos) break;
    pins.remove_prefix(semi + 1);
  }
  return false;
}

// What may abort a blocked operation: cancellation, the exchange's
// deadline, the low-speed limit.
class Watch {
 public:
  explicit Watch(const HttpExchange& exchange) : exchange_(exchange) { Reset(); }

  void Reset() {
    window_start_ = Clock::now();
    window_bytes_ = 0;
  }
  void Count(size_t bytes) { window_bytes_ += bytes; }

  // OK, or why to abort now; `*wake` is when to check again.
  absl::Status Check(Clock::time_point now, Clock::time_point* wake) {
    *wake = now + std::chrono::hours(1);
    if (exchange_.cancelled != nullptr && *exchange_.cancelled) {
      if ((*exchange_.cancelled)()) return absl::CancelledError("cancelled");
      *wake = now + kPollInterval;
    }
    if (exchange_.deadline) {
      if (now >= *exchange_.deadline) return absl::DeadlineExceededError("timed out");
      *wake = std::min(*wake, *exchange_.deadline);
    }
    if (exchange_.low_speed_bytes_per_second > 0 && exchange_.low_speed_time.count() > 0) {
      auto window_end = window_start_ + exchange_.low_speed_time;
      if (now >= window_end) {
        uint64_t needed = exchange_.low_speed_bytes_per_second *
                          static_cast<uint64_t>(exchange_.low_speed_time.count());
        if (window_bytes_ < needed) {
          return absl::DeadlineExceededError(
              StrCat("the transfer stalled: ", window_bytes_, " bytes in the last ",
                     exchange_.low_speed_time.count(), " s, under the limit of ",
                     exchange_.low_speed_bytes_per_second, " bytes/s"));
        }
        window_start_ = now;
        window_bytes_ = 0;
        window_end = now + exchange_.low_speed_time;
      }
      *wake = std::min(*wake, window_end);
    }
    return absl::OkStatus();
  }

 private:
  const HttpExchange& exchange_;
  Clock::time_point window_start_;
  uint64_t window_bytes_ = 0;
};

}  // namespace

std::string ParsedUrl::Authority() const {
  bool v6 = host.find(':') != std::string::npos;
  std::string h = v6 ? StrCat("[", host, "]") : host;
  if (port == (tls ? 443 : 80)) return h;
  return StrCat(h, ":", port);
}

std::string ParsedUrl::Origin() const {
  return StrCat(tls ? "https://" : "http://", Authority(), ":", port);
}

absl::StatusOr<ParsedUrl> ParseHttpUrl(std::string_view url) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(StrCat("'", url, "' is not a valid URL: ", why));
  };
  ParsedUrl out;
  std::string_view rest;
  if (url.starts_with("http://")) {
    rest = url.substr(7);
  } else if (url.starts_with("https://")) {
    out.tls = true;
    rest = url.substr(8);
  } else {
    return absl::InvalidArgumentError(StrCat("'", url, "' is not an http:// or https:// URL"));
  }
  if (HasControl(url) || url.find(' ') != std::string_view::npos) {
    return bad("it holds spaces or control characters");
  }
  size_t end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, end);
  std::string_view target = end == std::string_view::npos ? "" : rest.substr(end);
  if (size_t hash = target.find('#'); hash != std::string_view::npos) {
    target = target.substr(0, hash);
  }
  if (authority.find('@') != std::string_view::npos) return bad("user info is not supported");
  std::string_view port_text;
  if (authority.starts_with("[")) {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated [IPv6] host");
    out.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (!after.starts_with(":")) return bad("junk after the [IPv6] host");
      port_text = after.substr(1);
    }
  } else {
    size_t colon = authority.find(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (out.host.empty()) return bad("no host");
  out.port = out.tls ? 443 : 80;
  if (!port_text.empty()) {
    unsigned value = 0;
    auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
    if (ec != std::errc() || p != port_text.data() + port_text.size() || value == 0 ||
        value > 65535) {
      return bad("bad port");
    }
    out.port = static_cast<uint16_t>(value);
  }
  if (target.empty()) {
    out.target = "/";
  } else if (target.front() == '?') {
    out.target = StrCat("/", target);
  } else {
    out.target = std::string(target);
  }
  return out;
}

struct HttpConnection::Impl {
  HttpConnectionOptions options;
  asio::io_context ioc{1};
  std::optional<ssl::context> tls_context;
  // At most one of these is open.
  std::optional<tcp::socket> plain;
  std::optional<ssl::stream<tcp::socket>> tls;
  std::string origin;  // of the open connection
  boost::beast::flat_buffer buffer;
  std::unique_ptr<char[]> chunk{new char[kChunk]};
  SSL_SESSION* session = nullptr;  // for the next handshake with session_origin
  std::string session_origin;
  Watch* watch = nullptr;  // of the exchange in progress

  ~Impl() {
    Close();
    if (session != nullptr) SSL_SESSION_free(session);
  }

  tcp::socket& Lowest() { return tls ? tls->next_layer() : *plain; }
  bool IsOpen() { return (tls || plain) && Lowest().is_open(); }

  void Close() {
    if (tls || plain) {
      error_code ignored;
      Lowest().close(ignored);
    }
    tls.reset();
    plain.reset();
    origin.clear();
    buffer.clear();
  }

  // A kept connection with something to read while no request is out was
  // closed by the server (EOF, or a TLS close_notify) or is out of step:
  // not worth a write that would fail.
  bool StillUsable() {
    if (!IsOpen() || buffer.size() != 0) return false;
    pollfd p{Lowest().native_handle(), POLLIN, 0};
    return ::poll(&p, 1, 0) == 0;
  }

  // Runs one asynchronous operation to completion: `start` is called with
  // a completion handler (error_code, size_t). Aborts it (closing the
  // socket) when the watch or `op_deadline` says so.
  template <class Start>
  absl::Status Run(Start&& start, error_code* ec, size_t* transferred,
                   std::optional<Clock::time_point> op_deadline = std::nullopt,
                   std::string_view op_deadline_what = "") {
    bool done = false;
    start([&](error_code e, size_t n) {
      *ec = e;
      if (transferred != nullptr) *transferred = n;
      done = true;
    });
    absl::Status abort;
    while (!done) {
      ioc.restart();
      if (!abort.ok()) {  // wait for the aborted operation's handler
        ioc.run_one();
        continue;
      }
      auto now = Clock::now();
      Clock::time_point wake;
      abort = watch->Check(now, &wake);
      if (abort.ok() && op_deadline) {
        if (now >= *op_deadline) abort = absl::DeadlineExceededError(std::string(op_deadline_what));
        wake = std::min(wake, *op_deadline);
      }
      if (!abort.ok()) {
        error_code ignored;
        Lowest().close(ignored);
        continue;
      }
      ioc.run_one_until(wake);
    }
    return abort;
  }

  absl::Status EnsureTlsContext() {
    if (tls_context) return absl::OkStatus();
    ssl::context context(ssl::context::tls_client);
    error_code ec;
    context.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                            ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                            ssl::context::no_tlsv1_1,
                        ec);
    SSL_CTX_set_min_proto_version(context.native_handle(), TLS1_2_VERSION);
    if (!options.ca_file.empty()) {
      context.load_verify_file(options.ca_file, ec);
      if (ec) {
        return absl::FailedPreconditionError(
            StrCat("cannot load the trusted CA file ", options.ca_file, ": ", ec.message()));
      }
    } else {
      context.set_default_verify_paths(ec);
      if (ec) {
        return absl::FailedPreconditionError(
            StrCat("cannot load the system's trusted CAs: ", ec.message()));
      }
    }
    context.set_verify_mode(ssl::verify_peer);
    SSL_CTX_set_session_cache_mode(context.native_handle(), SSL_SESS_CACHE_CLIENT);
    tls_context.emplace(std::move(context));
    return absl::OkStatus();
  }

  absl::Status Connect(const ParsedUrl& url) {
    Close();
    std::string where = StrCat(url.host, ":", url.port);
    if (url.tls) RETURN_IF_ERROR(EnsureTlsContext());
    tcp::resolver resolver(ioc);
    error_code ec;
    auto endpoints =
        resolver.resolve(url.host, std::to_string(url.port), tcp::resolver::numeric_service, ec);
    if (ec) return absl::UnavailableError(StrCat("cannot resolve ", url.host, ": ", ec.message()));
    if (url.tls) {
      tls.emplace(ioc, *tls_context);
    } else {
      plain.emplace(ioc);
    }
    const auto connect_deadline = Clock::now() + options.connect_timeout;
    const std::string timeout_what = StrCat("connecting to ", where, " timed out after ",
                                            options.connect_timeout.count(), " ms");
    absl::Status aborted = Run(
        [&](auto handler) {
          asio::async_connect(Lowest(), endpoints,
                              [handler](error_code e, const tcp::endpoint&) { handler(e, 0); });
        },
        &ec, nullptr, connect_deadline, timeout_what);
    if (!aborted.ok()) {
      Close();
      return aborted;
    }
    if (ec) {
      Close();
      return absl::UnavailableError(StrCat("cannot connect to ", where, ": ", ec.message()));
    }
    tcp::socket& socket = Lowest();
    socket.set_option(tcp::no_delay(true), ec);
    socket.set_option(asio::socket_base::keep_alive(true), ec);
    int idle = kKeepAliveIdleSeconds, interval = kKeepAliveIntervalSeconds;
    ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
    if (url.tls) RETURN_IF_ERROR(Handshake(url, connect_deadline, timeout_what));
    origin = url.Origin();
    return absl::OkStatus();
  }

  absl::Status Handshake(const ParsedUrl& url, Clock::time_point deadline,
                         const std::string& timeout_what) {
    SSL* ssl = tls->native_handle();
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (IsIpLiteral(url.host)) {
      X509_VERIFY_PARAM_set1_ip_asc(param, url.host.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl, url.host.c_str());
      X509_VERIFY_PARAM_set1_host(param, url.host.c_str(), 0);
    }
    if (session != nullptr && session_origin == url.Origin()) SSL_set_session(ssl, session);
    error_code ec;
    absl::Status aborted = Run(
        [&](auto handler) {
          tls->async_handshake(ssl::stream_base::client,
                               [handler](error_code e) { handler(e, 0); });
        },
        &ec, nullptr, deadline, timeout_what);
    if (!aborted.ok()) {
      Close();
      return aborted;
    }
    const std::string trust =
        options.ca_file.empty() ? "the system's CAs" : StrCat("the CA file ", options.ca_file);
    if (ec) {
      long verify = SSL_get_verify_result(ssl);
      Close();
      if (verify != X509_V_OK) {
        return absl::FailedPreconditionError(
            StrCat("TLS verification of ", url.host,
                   " failed: ", X509_verify_cert_error_string(verify), " (trusting ", trust, ")"));
      }
      return absl::UnavailableError(
          StrCat("TLS handshake with ", url.host, ":", url.port, " failed: ", ec.message()));
    }
    if (!options.pinned_public_key.empty()) {
      std::string pin = PeerKeyPin(ssl);
      if (pin.empty() || !PinMatches(options.pinned_public_key, pin)) {
        Close();
        return absl::FailedPreconditionError(StrCat("TLS verification of ", url.host,
                                                    " failed: its public key sha256//", pin,
                                                    " is not the pinned one"));
      }
    }
    return absl::OkStatus();
  }

  // After a successful exchange: keep the TLS session for the next handshake.
  void RememberSession() {
    if (!tls) return;
    SSL_SESSION* current = SSL_get1_session(tls->native_handle());
    if (current == nullptr) return;
    if (session != nullptr) SSL_SESSION_free(session);
    session = current;
    session_origin = origin;
  }

  template <class Op>
  absl::Status RunOnStream(Op&& op, error_code* ec, size_t* transferred) {
    if (tls) return Run([&](auto handler) { op(*tls, handler); }, ec, transferred);
    return Run([&](auto handler) { op(*plain, handler); }, ec, transferred);
  }

  absl::Status Write(asio::const_buffer data, error_code* ec) {
    return RunOnStream(
        [&](auto& stream, auto handler) { asio::async_write(stream, data, handler); }, ec, nullptr);
  }

  // Sends the head and body. `*write_error` is set (status OK) when the
  // socket failed: the server may still have answered (an early 401).
  absl::Status SendRequest(const HttpExchange& exchange, const std::string& head,
                           error_code* write_error) {
    const uint64_t total = exchange.body_fd >= 0 ? exchange.body_fd_size : exchange.body.size();
    if (exchange.body_fd < 0) {
      std::array<asio::const_buffer, 2> buffers{asio::buffer(head), asio::buffer(exchange.body)};
      RETURN_IF_ERROR(RunOnStream(
          [&](auto& stream, auto handler) { asio::async_write(stream, buffers, handler); },
          write_error, nullptr));
      if (!*write_error && exchange.upload_progress != nullptr && *exchange.upload_progress) {
        (*exchange.upload_progress)(total, total);
      }
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(Write(asio::buffer(head), write_error));
    uint64_t sent = 0;
    auto last_report = Clock::now();
    while (!*write_error && sent < total) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(kChunk, total - sent));
      ssize_t n = ::pread(exchange.body_fd, chunk.get(), want, static_cast<off_t>(sent));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return absl::ErrnoToStatus(errno, "cannot read the request body");
      if (n == 0) {
        return absl::DataLossError(
            StrCat("the request body file ended at ", sent, " of ", total, " bytes"));
      }
      RETURN_IF_ERROR(Write(asio::buffer(chunk.get(), static_cast<size_t>(n)), write_error));
      if (*write_error) break;
      sent += static_cast<uint64_t>(n);
      if (exchange.upload_progress != nullptr && *exchange.upload_progress) {
        auto now = Clock::now();
        if (sent == total || now - last_report >= kProgressInterval) {
          last_report = now;
          (*exchange.upload_progress)(sent, total);
        }
      }
    }
    return absl::OkStatus();
  }

  // One request/response on the open connection. `*stale` is set when it
  // failed before any byte of a response arrived (a reused connection the
  // server had closed: worth one more try on a new connection).
  absl::Status Transact(const HttpExchange& exchange, const std::string& head,
                        HttpResponseHandler& handler, bool* stale) {
    *stale = false;
    const std::string& host = exchange.url->host;
    error_code write_error;
    RETURN_IF_ERROR(SendRequest(exchange, head, &write_error));

    bhttp::response_parser<bhttp::buffer_body> parser;
    // Callers bound what they accept. Not boost::none: Boost 1.74 compares
    // a Content-Length against an empty optional as "over the limit".
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    parser.header_limit(64 * 1024);
    if (exchange.method == "HEAD") parser.skip(true);
    error_code ec;
    RETURN_IF_ERROR(RunOnStream(
        [&](auto& stream, auto h) { bhttp::async_read_header(stream, buffer, parser, h); }, &ec,
        nullptr));
    if (ec) {
      *stale = !parser.got_some();
      if (write_error) {
        return absl::UnavailableError(
            StrCat("sending the request to ", host, " failed: ", write_error.message()));
      }
      return absl::UnavailableError(
          StrCat("reading the response from ", host, " failed: ", ec.message()));
    }
    auto& message = parser.get();
    HttpHeaderList headers;
    headers.reserve(16);
    for (const auto& field : message) {
      std::string_view value(field.value().data(), field.value().size());
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
        value.remove_prefix(1);
      }
      while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) {
        value.remove_suffix(1);
      }
      headers.emplace_back(Lower({field.name_string().data(), field.name_string().size()}),
                           std::string(value));
    }
    RETURN_IF_ERROR(handler.OnHead(static_cast<int>(message.result_int()), headers));
    while (!parser.is_done()) {
      message.body().data = chunk.get();
      message.body().size = kChunk;
      RETURN_IF_ERROR(RunOnStream(
          [&](auto& stream, auto h) { bhttp::async_read_some(stream, buffer, parser, h); }, &ec,
          nullptr));
      if (ec == bhttp::error::need_buffer) ec = {};
      // A TLS peer that closes without close_notify ends a close-delimited body.
      if (ec == ssl::error::stream_truncated && parser.need_eof()) parser.put_eof(ec);
      size_t n = kChunk - message.body().size;
      if (n > 0) {
        watch->Count(n);
        RETURN_IF_ERROR(handler.OnBody(std::string_view(chunk.get(), n)));
      }
      if (ec) {
        return absl::UnavailableError(
            StrCat("reading the response from ", host, " failed: ", ec.message()));
      }
    }
    // The server answered but could not take the whole body: do not reuse.
    if (write_error || !message.keep_alive() || buffer.size() != 0) {
      Close();
    } else {
      RememberSession();
    }
    return absl::OkStatus();
  }
};

HttpConnection::HttpConnection(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpConnection::~HttpConnection() = default;

std::unique_ptr<HttpConnection> HttpConnection::Create(HttpConnectionOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  return std::unique_ptr<HttpConnection>(new HttpConnection(std::move(impl)));
}

void HttpConnection::Close() { impl_->Close(); }

absl::Status HttpConnection::Exchange(const HttpExchange& exchange, HttpResponseHandler& handler) {
  if (exchange.url == nullptr) return absl::InvalidArgumentError("HTTP exchange without a URL");
  const ParsedUrl& url = *exchange.url;
  std::string head =
      StrCat(exchange.method, " ", url.target, " HTTP/1.1\r\nHost: ", url.Authority(), "\r\n");
  if (exchange.headers != nullptr) {
    for (const auto& [name, value] : *exchange.headers) {
      if (name.empty() || HasControl(name) || HasControl(value) ||
          name.find(':') != std::string::npos) {
        return absl::InvalidArgumentError(
            StrCat("HTTP header '", name, "' has a bad name or value"));
      }
      StrAppend(&head, name, ": ", value, "\r\n");
    }
  }
  const bool has_body = exchange.body_fd >= 0 || !exchange.body.empty() ||
                        exchange.method == "POST" || exchange.method == "PUT" ||
                        exchange.method == "PATCH";
  if (has_body) {
    StrAppend(&head, "Content-Length: ",
              exchange.body_fd >= 0 ? exchange.body_fd_size : exchange.body.size(), "\r\n");
  }
  head += "\r\n";

  Watch watch(exchange);
  impl_->watch = &watch;
  struct Unset {
    Impl* impl;
    ~Unset() { impl->watch = nullptr; }
  } unset{impl_.get()};

  bool reused = impl_->origin == url.Origin() && impl_->StillUsable();
  if (!reused) RETURN_IF_ERROR(impl_->Connect(url));
  while (true) {
    watch.Reset();
    bool stale = false;
    absl::Status status = impl_->Transact(exchange, head, handler, &stale);
    if (status.ok()) return status;
    impl_->Close();
    if (!(reused && stale && absl::IsUnavailable(status))) return status;
    reused = false;
    RETURN_IF_ERROR(impl_->Connect(url));
  }
}

}  // namespace outpost
