#include "common/http_connection.h"

#include <mbedtls/base64.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/sha256.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/compose.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>

#include "common/http_proxy.h"

namespace outpost {
namespace {

namespace asio = boost::asio;
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

// mbedTLS error codes as error_codes, with mbedTLS's own descriptions.
class TlsCategory final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "mbedtls"; }
  std::string message(int code) const override {
    char text[256];
    mbedtls_strerror(code, text, sizeof(text));
    return text;
  }
};

const boost::system::error_category& TlsErrors() {
  static const TlsCategory category;
  return category;
}

// One CTR-DRBG for the process, seeded once from the system entropy.
struct ProcessRng {
  std::mutex mu;
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  int seed_error = 0;
};

ProcessRng& Rng() {
  static ProcessRng* rng = [] {
    auto* r = new ProcessRng;  // lives as long as the process
    mbedtls_entropy_init(&r->entropy);
    mbedtls_ctr_drbg_init(&r->drbg);
    static constexpr unsigned char kPersonalization[] = "outpost http client";
    r->seed_error = mbedtls_ctr_drbg_seed(&r->drbg, mbedtls_entropy_func, &r->entropy,
                                          kPersonalization, sizeof(kPersonalization) - 1);
    return r;
  }();
  return *rng;
}

int RandomBytes(void*, unsigned char* out, size_t size) {
  ProcessRng& rng = Rng();
  if (rng.seed_error != 0) return rng.seed_error;
  std::lock_guard lock(rng.mu);
  return mbedtls_ctr_drbg_random(&rng.drbg, out, size);
}

// Base64 SHA-256 of a certificate's SubjectPublicKeyInfo (DER).
std::string KeyPin(const mbedtls_x509_crt* cert) {
  if (cert == nullptr || cert->pk_raw.p == nullptr) return {};
  unsigned char digest[32];
  if (mbedtls_sha256_ret(cert->pk_raw.p, cert->pk_raw.len, digest, 0) != 0) return {};
  unsigned char b64[64];
  size_t length = 0;
  if (mbedtls_base64_encode(b64, sizeof(b64), &length, digest, sizeof(digest)) != 0) return {};
  return std::string(reinterpret_cast<const char*>(b64), length);
}

// The CAs and settings shared by an HttpConnection's TLS connections.
struct TlsConfig {
  mbedtls_ssl_config conf;
  mbedtls_x509_crt ca;
  TlsConfig() {
    mbedtls_ssl_config_init(&conf);
    mbedtls_x509_crt_init(&ca);
  }
  ~TlsConfig() {
    mbedtls_ssl_config_free(&conf);
    mbedtls_x509_crt_free(&ca);
  }
  TlsConfig(const TlsConfig&) = delete;
  TlsConfig& operator=(const TlsConfig&) = delete;
};

// Loads `path` (a PEM file, or a directory of them) into `ca`: OK when at
// least one certificate was read.
absl::Status LoadCas(mbedtls_x509_crt* ca, const std::string& path, bool directory) {
  int r = directory ? mbedtls_x509_crt_parse_path(ca, path.c_str())
                    : mbedtls_x509_crt_parse_file(ca, path.c_str());
  if (r >= 0 && ca->version != 0) return absl::OkStatus();
  return absl::FailedPreconditionError(r < 0 ? error_code(r, TlsErrors()).message()
                                             : "it holds no readable certificate");
}

// A TLS client stream over a TCP socket that Beast and Asio's composed
// operations accept as an AsyncReadStream/AsyncWriteStream: mbedTLS does
// non-blocking I/O on the socket, and an operation that would block waits
// for the socket with async_wait and tries again.
class TlsStream {
 public:
  using executor_type = tcp::socket::executor_type;

  TlsStream(asio::io_context& ioc, const mbedtls_ssl_config* conf) : socket_(ioc) {
    mbedtls_ssl_init(&ssl_);
    setup_error_ = mbedtls_ssl_setup(&ssl_, conf);
    mbedtls_ssl_set_bio(&ssl_, this, &TlsStream::Send, &TlsStream::Recv, nullptr);
  }
  ~TlsStream() { mbedtls_ssl_free(&ssl_); }
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  executor_type get_executor() { return socket_.get_executor(); }
  tcp::socket& next_layer() { return socket_; }
  mbedtls_ssl_context* native_handle() { return &ssl_; }
  int setup_error() const { return setup_error_; }
  // The mbedTLS code the last failed operation ended with.
  int last_error() const { return last_error_; }

  // Checks the certificate against an IP address (mbedTLS only matches
  // dNSName entries against a host name): its iPAddress SANs must hold it.
  void VerifyIpAddress(const asio::ip::address& address) {
    if (address.is_v4()) {
      auto bytes = address.to_v4().to_bytes();
      ip_length_ = bytes.size();
      std::memcpy(ip_.data(), bytes.data(), bytes.size());
    } else {
      auto bytes = address.to_v6().to_bytes();
      ip_length_ = bytes.size();
      std::memcpy(ip_.data(), bytes.data(), bytes.size());
    }
    mbedtls_ssl_set_verify(&ssl_, &TlsStream::CheckIp, this);
  }

  template <class Token>
  auto async_handshake(Token&& token) {
    return asio::async_compose<Token, void(error_code, size_t)>(
        Op{this, Op::kHandshake, nullptr, 0}, token, socket_);
  }
  template <class Buffers, class Token>
  auto async_read_some(const Buffers& buffers, Token&& token) {
    asio::mutable_buffer first;
    for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers);
         ++it) {
      first = asio::mutable_buffer(*it);
      if (first.size() != 0) break;
    }
    return asio::async_compose<Token, void(error_code, size_t)>(
        Op{this, Op::kRead, first.data(), first.size()}, token, socket_);
  }
  template <class Buffers, class Token>
  auto async_write_some(const Buffers& buffers, Token&& token) {
    asio::const_buffer first;
    for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers);
         ++it) {
      first = asio::const_buffer(*it);
      if (first.size() != 0) break;
    }
    return asio::async_compose<Token, void(error_code, size_t)>(
        Op{this, Op::kWrite, const_cast<void*>(first.data()), first.size()}, token, socket_);
  }

 private:
  // One handshake, read or write: runs the mbedTLS call again each time the
  // socket is ready for what it wants. Never completes inside the initiating
  // call (the first attempt is posted).
  struct Op {
    enum Kind { kHandshake, kRead, kWrite };
    TlsStream* stream;
    Kind kind;
    void* data;
    size_t size;
    bool started = false;

    template <class Self>
    void operator()(Self& self, error_code ec = {}) {
      if (!started) {
        started = true;
        asio::post(stream->socket_.get_executor(), std::move(self));
        return;
      }
      if (ec) return self.complete(ec, 0);
      if (stream->setup_error_ != 0) {
        return self.complete(stream->Error(stream->setup_error_), 0);
      }
      if (kind != kHandshake && size == 0) return self.complete({}, 0);
      auto* bytes = static_cast<unsigned char*>(data);
      int r = kind == kHandshake ? mbedtls_ssl_handshake(&stream->ssl_)
              : kind == kRead    ? mbedtls_ssl_read(&stream->ssl_, bytes, size)
                                 : mbedtls_ssl_write(&stream->ssl_, bytes, size);
      if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) {
        stream->socket_.async_wait(
            r == MBEDTLS_ERR_SSL_WANT_READ ? tcp::socket::wait_read : tcp::socket::wait_write,
            std::move(self));
        return;
      }
      if (r < 0 || (kind == kRead && r == 0)) return self.complete(stream->Error(r), 0);
      self.complete({}, kind == kHandshake ? 0 : static_cast<size_t>(r));
    }
  };

  error_code Error(int r) {
    last_error_ = r;
    // A close_notify, or a plain TCP close (which ends a close-delimited
    // body as it would on http://; Beast reports a truncated message).
    if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || r == MBEDTLS_ERR_SSL_CONN_EOF) {
      return asio::error::eof;
    }
    if ((r == MBEDTLS_ERR_NET_SEND_FAILED || r == MBEDTLS_ERR_NET_RECV_FAILED ||
         r == MBEDTLS_ERR_NET_CONN_RESET) &&
        socket_errno_ != 0) {
      return error_code(socket_errno_, boost::system::system_category());
    }
    return error_code(r, TlsErrors());
  }

  static int Send(void* context, const unsigned char* data, size_t size) {
    auto* self = static_cast<TlsStream*>(context);
    while (true) {
      ssize_t n = ::send(self->socket_.native_handle(), data, size, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) return static_cast<int>(n);
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return MBEDTLS_ERR_SSL_WANT_WRITE;
      self->socket_errno_ = errno;
      return errno == EPIPE || errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET
                                                   : MBEDTLS_ERR_NET_SEND_FAILED;
    }
  }

  static int Recv(void* context, unsigned char* data, size_t size) {
    auto* self = static_cast<TlsStream*>(context);
    while (true) {
      ssize_t n = ::recv(self->socket_.native_handle(), data, size, MSG_DONTWAIT);
      if (n >= 0) return static_cast<int>(n);
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return MBEDTLS_ERR_SSL_WANT_READ;
      self->socket_errno_ = errno;
      return errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
    }
  }

  static int CheckIp(void* context, mbedtls_x509_crt* cert, int depth, uint32_t* flags) {
    if (depth != 0) return 0;
    auto* self = static_cast<TlsStream*>(context);
    constexpr int kIpTag = MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_IP_ADDRESS;
    for (const mbedtls_x509_sequence* san = &cert->subject_alt_names; san != nullptr;
         san = san->next) {
      if (san->buf.tag == kIpTag && san->buf.len == self->ip_length_ &&
          std::memcmp(san->buf.p, self->ip_.data(), self->ip_length_) == 0) {
        return 0;
      }
    }
    *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
    return 0;
  }

  tcp::socket socket_;
  mbedtls_ssl_context ssl_;
  int setup_error_ = 0;
  int last_error_ = 0;
  int socket_errno_ = 0;
  std::array<uint8_t, 16> ip_{};
  size_t ip_length_ = 0;
};

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

absl::StatusOr<HostPort> ParseAuthority(std::string_view authority, uint16_t default_port) {
  HostPort out;
  out.port = default_port;
  std::string_view port_text;
  if (authority.starts_with("[")) {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      return absl::InvalidArgumentError("unterminated [IPv6] host");
    }
    out.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (!after.starts_with(":")) return absl::InvalidArgumentError("junk after the [IPv6] host");
      port_text = after.substr(1);
    }
  } else {
    size_t colon = authority.find(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (out.host.empty()) return absl::InvalidArgumentError("no host");
  if (!port_text.empty()) {
    unsigned value = 0;
    auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
    if (ec != std::errc() || p != port_text.data() + port_text.size() || value == 0 ||
        value > 65535) {
      return absl::InvalidArgumentError("bad port");
    }
    out.port = static_cast<uint16_t>(value);
  }
  return out;
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
  absl::StatusOr<HostPort> host_port = ParseAuthority(authority, out.tls ? 443 : 80);
  if (!host_port.ok()) return bad(MessageOf(host_port.status()));
  out.host = std::move(host_port->host);
  out.port = host_port->port;
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
  std::unique_ptr<TlsConfig> tls_config;  // loaded for the first https:// URL
  // At most one of these is open.
  std::optional<tcp::socket> plain;
  std::unique_ptr<TlsStream> tls;
  std::string origin;            // of the open connection
  std::optional<HttpProxy> via;  // the proxy the open connection goes through
  // The proxy chosen from the environment for route_origin (read once per
  // target, not per request).
  std::string route_origin;
  std::optional<HttpProxy> route;
  boost::beast::flat_buffer buffer;
  std::unique_ptr<char[]> chunk{new char[kChunk]};
  // For the next handshake with session_origin (resumption).
  mbedtls_ssl_session session;
  bool have_session = false;
  bool session_saved = false;  // from the open connection
  std::string session_origin;
  Watch* watch = nullptr;  // of the exchange in progress

  Impl() { mbedtls_ssl_session_init(&session); }
  ~Impl() {
    Close();
    mbedtls_ssl_session_free(&session);
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
    via.reset();
    buffer.clear();
  }

  // The proxy to reach `url` (with origin `target`) through, or null.
  absl::Status Route(const ParsedUrl& url, const std::string& target, const HttpProxy** proxy) {
    if (options.proxy) {
      *proxy = options.proxy->host.empty() ? nullptr : &*options.proxy;
      return absl::OkStatus();
    }
    if (target != route_origin) {
      ASSIGN_OR_RETURN(route, ProxyFromEnvironment(url));
      route_origin = target;
    }
    *proxy = route ? &*route : nullptr;
    return absl::OkStatus();
  }

  // Whether the open connection goes through `proxy` (null: direct).
  bool Via(const HttpProxy* proxy) const {
    if (proxy == nullptr || !via) return proxy == nullptr && !via;
    return via->host == proxy->host && via->port == proxy->port &&
           via->authorization == proxy->authorization;
  }

  // A kept connection with something to read while no request is out was
  // closed by the server (EOF, or a TLS close_notify) or is out of step:
  // not worth a write that would fail.
  bool StillUsable() {
    if (!IsOpen() || buffer.size() != 0) return false;
    if (tls && mbedtls_ssl_get_bytes_avail(tls->native_handle()) != 0) return false;
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

  absl::Status EnsureTlsConfig() {
    if (tls_config) return absl::OkStatus();
    auto config = std::make_unique<TlsConfig>();
    if (!options.ca_file.empty()) {
      absl::Status loaded = LoadCas(&config->ca, options.ca_file, /*directory=*/false);
      if (!loaded.ok()) {
        return absl::FailedPreconditionError(
            StrCat("cannot load the trusted CA file ", options.ca_file, ": ", loaded.message()));
      }
    } else {
      // The system store: SSL_CERT_FILE / SSL_CERT_DIR when set (the
      // overrides OpenSSL honours), else Debian's bundle, else its
      // directory of CAs.
      const char* env_file = std::getenv("SSL_CERT_FILE");
      const char* env_dir = std::getenv("SSL_CERT_DIR");
      const std::string file =
          env_file && *env_file ? env_file : "/etc/ssl/certs/ca-certificates.crt";
      const std::string dir = env_dir && *env_dir ? env_dir : "/etc/ssl/certs";
      absl::Status loaded = LoadCas(&config->ca, file, /*directory=*/false);
      if (!loaded.ok()) loaded = LoadCas(&config->ca, dir, /*directory=*/true);
      if (!loaded.ok()) {
        return absl::FailedPreconditionError(StrCat("cannot load the system's trusted CAs from ",
                                                    file, " or ", dir, ": ", loaded.message()));
      }
    }
    mbedtls_ssl_config* conf = &config->conf;
    int r = mbedtls_ssl_config_defaults(conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                        MBEDTLS_SSL_PRESET_DEFAULT);
    if (r != 0) {
      return absl::InternalError(
          StrCat("cannot set up TLS: ", error_code(r, TlsErrors()).message()));
    }
    // TLS 1.2 at least.
    mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_authmode(conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(conf, &config->ca, nullptr);
    mbedtls_ssl_conf_rng(conf, &RandomBytes, nullptr);
    tls_config = std::move(config);
    return absl::OkStatus();
  }

  // Connects to `url`'s server, directly or through `proxy` (a CONNECT
  // tunnel for https://), and does the TLS handshake.
  absl::Status Connect(const ParsedUrl& url, const HttpProxy* proxy) {
    Close();
    std::string where = StrCat(url.host, ":", url.port);
    if (url.tls) RETURN_IF_ERROR(EnsureTlsConfig());
    // What is connected to: the server, or the proxy.
    const std::string& peer_host = proxy ? proxy->host : url.host;
    const uint16_t peer_port = proxy ? proxy->port : url.port;
    std::string peer =
        proxy ? StrCat("the proxy ", proxy->Address(), " (from ", proxy->source, ")") : where;
    tcp::resolver resolver(ioc);
    error_code ec;
    auto endpoints =
        resolver.resolve(peer_host, std::to_string(peer_port), tcp::resolver::numeric_service, ec);
    if (ec) {
      return absl::UnavailableError(
          proxy ? StrCat("cannot resolve the host of ", peer, ": ", ec.message())
                : StrCat("cannot resolve ", url.host, ": ", ec.message()));
    }
    if (url.tls) {
      tls = std::make_unique<TlsStream>(ioc, &tls_config->conf);
    } else {
      plain.emplace(ioc);
    }
    const auto connect_deadline = Clock::now() + options.connect_timeout;
    const std::string timeout_what =
        StrCat("connecting to ", where, proxy ? StrCat(" through ", peer) : std::string(),
               " timed out after ", options.connect_timeout.count(), " ms");
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
      return absl::UnavailableError(
          proxy ? StrCat("cannot connect to ", peer, " to reach ", where, ": ", ec.message())
                : StrCat("cannot connect to ", where, ": ", ec.message()));
    }
    tcp::socket& socket = Lowest();
    socket.set_option(tcp::no_delay(true), ec);
    socket.set_option(asio::socket_base::keep_alive(true), ec);
    int idle = kKeepAliveIdleSeconds, interval = kKeepAliveIntervalSeconds;
    ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
    if (proxy && url.tls) {
      absl::Status tunnel = Tunnel(url, *proxy, peer, connect_deadline, timeout_what);
      if (!tunnel.ok()) {
        Close();
        return tunnel;
      }
    }
    if (url.tls) RETURN_IF_ERROR(Handshake(url, connect_deadline, timeout_what));
    origin = url.Origin();
    if (proxy) via = *proxy;
    return absl::OkStatus();
  }

  // Asks the proxy for a tunnel to `url`'s host and port (CONNECT): OK when
  // it answered 2xx; the TLS handshake with the server follows on the
  // socket. Closing on errors is the caller's.
  absl::Status Tunnel(const ParsedUrl& url, const HttpProxy& proxy, const std::string& peer,
                      Clock::time_point deadline, const std::string& timeout_what) {
    const std::string target = url.host.find(':') != std::string::npos
                                   ? StrCat("[", url.host, "]:", url.port)
                                   : StrCat(url.host, ":", url.port);
    std::string request = StrCat("CONNECT ", target, " HTTP/1.1\r\nHost: ", target, "\r\n");
    if (!proxy.authorization.empty()) {
      StrAppend(&request, "Proxy-Authorization: ", proxy.authorization, "\r\n");
    }
    request += "\r\n";
    tcp::socket& socket = Lowest();
    error_code ec;
    RETURN_IF_ERROR(
        Run([&](auto handler) { asio::async_write(socket, asio::buffer(request), handler); }, &ec,
            nullptr, deadline, timeout_what));
    if (ec) {
      return absl::UnavailableError(
          StrCat("sending CONNECT ", target, " to ", peer, " failed: ", ec.message()));
    }
    // A 2xx to a CONNECT has no body, whatever its headers say; any other
    // answer is not read past its head (the connection is dropped).
    bhttp::response_parser<bhttp::empty_body> parser;
    parser.skip(true);
    parser.header_limit(16 * 1024);
    RETURN_IF_ERROR(
        Run([&](auto handler) { bhttp::async_read_header(socket, buffer, parser, handler); }, &ec,
            nullptr, deadline, timeout_what));
    if (ec) {
      return absl::UnavailableError(StrCat("reading the answer of ", peer, " to CONNECT ", target,
                                           " failed: ", ec.message()));
    }
    const auto& answer = parser.get();
    const int status = static_cast<int>(answer.result_int());
    if (status >= 200 && status < 300) {
      if (buffer.size() != 0) {
        return absl::UnavailableError(
            StrCat(peer, " sent data before the TLS handshake with ", target));
      }
      return absl::OkStatus();
    }
    const std::string line =
        StrCat("HTTP/", answer.version() / 10, ".", answer.version() % 10, " ", status, " ",
               std::string_view(answer.reason().data(), answer.reason().size()));
    std::string message = StrCat(peer, " refused the tunnel to ", target, ": ", line);
    // 401 too: tinyproxy answers it when the credentials are wrong.
    if (status == 407 || status == 401) {
      StrAppend(&message, proxy.authorization.empty()
                              ? ": proxy authentication is required (put user:password@ in "
                                "the proxy URL)"
                              : ": proxy authentication failed (check the user and password "
                                "in the proxy URL)");
      return absl::PermissionDeniedError(message);
    }
    if (status == 403) return absl::PermissionDeniedError(message);
    return absl::UnavailableError(message);
  }

  absl::Status Handshake(const ParsedUrl& url, Clock::time_point deadline,
                         const std::string& timeout_what) {
    mbedtls_ssl_context* ssl = tls->native_handle();
    error_code ec;
    const bool ip = IsIpLiteral(url.host);
    if (ip) {
      // No SNI for an address (RFC 6066); its iPAddress SANs are checked.
      tls->VerifyIpAddress(asio::ip::make_address(url.host, ec));
    } else if (int r = mbedtls_ssl_set_hostname(ssl, url.host.c_str()); r != 0) {
      Close();
      return absl::InvalidArgumentError(StrCat("cannot use the host name ", url.host,
                                               " for TLS: ", error_code(r, TlsErrors()).message()));
    }
    if (have_session && session_origin == url.Origin()) mbedtls_ssl_set_session(ssl, &session);
    session_saved = false;
    absl::Status aborted = Run([&](auto handler) { tls->async_handshake(handler); }, &ec, nullptr,
                               deadline, timeout_what);
    if (!aborted.ok()) {
      Close();
      return aborted;
    }
    const std::string trust =
        options.ca_file.empty() ? "the system's CAs" : StrCat("the CA file ", options.ca_file);
    if (ec) {
      uint32_t flags = mbedtls_ssl_get_verify_result(ssl);
      const bool verify_failed = tls->last_error() == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED ||
                                 (flags != 0 && flags != static_cast<uint32_t>(-1));
      Close();
      if (verify_failed) {
        return absl::FailedPreconditionError(StrCat("TLS verification of ", url.host,
                                                    " failed: ", VerifyFailure(flags, url.host, ip),
                                                    " (trusting ", trust, ")"));
      }
      return absl::UnavailableError(
          StrCat("TLS handshake with ", url.host, ":", url.port, " failed: ", ec.message()));
    }
    if (!options.pinned_public_key.empty()) {
      std::string pin = KeyPin(mbedtls_ssl_get_peer_cert(ssl));
      if (pin.empty() || !PinMatches(options.pinned_public_key, pin)) {
        Close();
        return absl::FailedPreconditionError(StrCat("TLS verification of ", url.host,
                                                    " failed: its public key sha256//", pin,
                                                    " is not the pinned one"));
      }
    }
    return absl::OkStatus();
  }

  // Why verification failed, from mbedTLS's flags.
  static std::string VerifyFailure(uint32_t flags, const std::string& host, bool ip) {
    if (flags == static_cast<uint32_t>(-1) || flags == 0) return "the certificate was refused";
    std::string out;
    if (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH) {
      out = ip ? StrCat("the certificate does not name the IP address ", host)
               : StrCat("the certificate does not name the host ", host);
      flags &= ~static_cast<uint32_t>(MBEDTLS_X509_BADCERT_CN_MISMATCH);
    }
    if (flags != 0) {
      char text[512];
      int n = mbedtls_x509_crt_verify_info(text, sizeof(text), "", flags);
      std::string_view info(text, n > 0 ? static_cast<size_t>(n) : 0);
      while (!info.empty()) {  // one reason a line
        size_t newline = info.find('\n');
        std::string_view line = info.substr(0, newline);
        if (!line.empty()) StrAppend(&out, out.empty() ? "" : "; ", line);
        if (newline == std::string_view::npos) break;
        info.remove_prefix(newline + 1);
      }
    }
    return out;
  }

  // After a successful exchange: keep the TLS session for the next handshake.
  void RememberSession() {
    if (!tls || session_saved) return;
    session_saved = true;
    mbedtls_ssl_session_free(&session);
    mbedtls_ssl_session_init(&session);
    have_session = mbedtls_ssl_get_session(tls->native_handle(), &session) == 0;
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
    // The TLS session outlives the connection: a server that closes it
    // (Connection: close, idle timeout) is resumed with on the next one.
    RememberSession();
    if (write_error || !message.keep_alive() || buffer.size() != 0) Close();
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
  const std::string origin = url.Origin();
  const HttpProxy* proxy = nullptr;
  RETURN_IF_ERROR(impl_->Route(url, origin, &proxy));
  // Through a proxy, http:// requests name their whole URL (absolute form)
  // and carry the proxy's credentials; https:// ones go through a tunnel.
  const bool absolute = proxy != nullptr && !url.tls;
  std::string head =
      StrCat(exchange.method, " ", absolute ? "http://" : "", absolute ? url.Authority() : "",
             url.target, " HTTP/1.1\r\nHost: ", url.Authority(), "\r\n");
  if (absolute && !proxy->authorization.empty()) {
    StrAppend(&head, "Proxy-Authorization: ", proxy->authorization, "\r\n");
  }
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

  bool reused = impl_->origin == origin && impl_->Via(proxy) && impl_->StillUsable();
  if (!reused) RETURN_IF_ERROR(impl_->Connect(url, proxy));
  while (true) {
    watch.Reset();
    bool stale = false;
    absl::Status status = impl_->Transact(exchange, head, handler, &stale);
    if (status.ok()) return status;
    impl_->Close();
    if (!(reused && stale && absl::IsUnavailable(status))) return status;
    reused = false;
    RETURN_IF_ERROR(impl_->Connect(url, proxy));
  }
}

}  // namespace outpost
