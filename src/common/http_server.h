// A small HTTP/1.1 server on Boost.Beast for every Outpost listener
// (outpost-serve's API, the hub's APIs, the agent's local status).
//
// Threads: one io_context run by `threads` named threads (or, with
// `loop_per_thread`, one io_context per thread). A handler is called on an
// io thread and must not block: it answers through the Responder, from any
// thread, exactly once (long work is handed to other threads, and the
// Responder posted back to the connection's strand).
//
// Protection: header size limit, body size limit (413 before the body is
// read), a deadline for reading a whole request (slow clients get closed),
// an idle keep-alive timeout, pipelined requests answered in order, Expect:
// 100-continue. Errors the server produces itself are JSON: {"error": "..."}.
//
// TLS: when `tls_cert_file`/`tls_key_file` are set, every connection is TLS.
// Create() refuses to listen on a non-loopback address without TLS unless
// `allow_insecure` is set (security by default).
#pragma once

#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"

namespace outpost::http {

using Request = boost::beast::http::request<boost::beast::http::string_body>;
using Response = boost::beast::http::response<boost::beast::http::string_body>;
using Status = boost::beast::http::status;

// A byte range of an open file, sent as a response body straight from the
// file in chunks (release bundles of hundreds of MB are never held in
// memory). Owns the descriptor. The write deadline restarts with every
// chunk, so a slow but moving download is not cut off.
class FileBody {
 public:
  FileBody() = default;
  FileBody(int fd, uint64_t offset, uint64_t length) : fd_(fd), offset_(offset), length_(length) {}
  FileBody(FileBody&& other) noexcept { *this = std::move(other); }
  FileBody& operator=(FileBody&& other) noexcept;
  ~FileBody();

  int fd() const { return fd_; }
  uint64_t offset() const { return offset_; }
  uint64_t length() const { return length_; }
  void set_range(uint64_t offset, uint64_t length) {
    offset_ = offset;
    length_ = length;
  }

 private:
  int fd_ = -1;
  uint64_t offset_ = 0;
  uint64_t length_ = 0;
};

// Completes one request. Movable, thread-safe to call from any thread,
// exactly once; if destroyed without Send(), answers 500 so no client hangs.
// A Send() after the connection closed or the server stopped is dropped
// silently; a second Send() is a no-op. A Responder may outlive its Server.
// The server sets Server, Content-Length and keep-alive (from the request,
// off while stopping or when the response says "Connection: close").
class Responder {
 public:
  struct Target;  // the connection side; opaque
  Responder() = default;
  explicit Responder(std::shared_ptr<Target> target);
  Responder(Responder&&) noexcept = default;
  Responder& operator=(Responder&&) noexcept;
  ~Responder();

  void Send(Response&& response);
  // Sends `header` (its body is ignored; Content-Length is the file
  // range's length) followed by the file range.
  void SendFile(Response&& header, FileBody&& file);

 private:
  std::shared_ptr<Target> target_;
};

using Handler = std::function<void(Request&& request, Responder responder)>;

struct ServerOptions {
  std::string address = "127.0.0.1";
  uint16_t port = 0;  // 0 = a free port, see Server::port()
  int threads = 2;
  // Each io thread runs its own event loop, and a connection stays on the
  // one that accepted it (round robin): an io thread never wakes another
  // for a connection's next step, which saves a futex wake-up per request.
  // The price: a handler that holds its thread (outpost-serve's inline
  // inference) delays that thread's other connections, which the other
  // threads cannot pick up.
  bool loop_per_thread = false;
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 64 * 1024 * 1024;
  // A request (TLS handshake, headers and body) must arrive whole within
  // this, counted from its first byte; also bounds writing a response.
  std::chrono::milliseconds request_timeout{30000};
  std::chrono::milliseconds idle_timeout{60000};  // keep-alive between requests
  // Stop() lets requests in flight finish for up to this long.
  std::chrono::milliseconds shutdown_grace{5000};
  std::string server_name = "outpost";
  // Also listen on this Unix domain socket (mode 0660, removed on Stop),
  // plain HTTP whatever the TLS settings: for clients on the same machine,
  // which skip the TCP/IP stack (half the cost of moving a 600 KB tensor).
  std::string unix_socket_path;
  std::string tls_cert_file;  // PEM chain
  std::string tls_key_file;   // PEM private key
  bool allow_insecure = false;
  // Optional, called on an io thread once a request's headers are in and
  // before its body is read (must be quick: no blocking I/O). It may lower
  // `*body_limit` for this request (e.g. per route) or refuse the request
  // with an error status (mapped by HttpStatusFor, answered as JSON, the
  // connection then closed), so a client cannot make the server buffer a
  // large body it would refuse anyway.
  std::function<absl::Status(const Request& header, uint64_t* body_limit)> header_check;
};

class Server {
 public:
  // Binds and listens (so port() is known), but serves only after Start().
  // Errors: InvalidArgument (bad address, TLS files unreadable/invalid, or
  // non-loopback without TLS), Unavailable (bind failed: message has the errno text).
  static absl::StatusOr<std::unique_ptr<Server>> Create(ServerOptions options, Handler handler);
  ~Server();  // Stop()

  uint16_t port() const;
  bool tls() const;
  // Starts the io threads and accepting. Once; no-op after Stop().
  void Start();
  // Stops accepting, closes idle connections, lets requests in flight answer
  // (with "Connection: close") for up to `shutdown_grace` - a request counts
  // as in flight once any of its bytes has reached the server, read yet or
  // not - then closes the
  // rest, stops the io threads and joins them; later Sends are dropped.
  // Idempotent. Never call it from a handler (an io thread): it joins them.
  void Stop();

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Helpers for handlers. Keep-alive and version follow `request`.
Response JsonResponse(const Request& request, Status status, std::string body);
// {"error": message} with the given status.
Response ErrorResponse(const Request& request, Status status, std::string_view message);

bool IsLoopbackAddress(std::string_view address);

// Large request bodies (tensors) are read into buffers recycled through a
// small process-wide pool, so a steady stream of 600 KB requests costs no
// mmap/munmap and no page faults per request. A handler that is done with a
// request may hand its body back; bodies under 64 KiB are simply freed.
// Thread-safe.
void RecycleBody(std::string&& body);
// A buffer with capacity for at least `size` bytes (contents unspecified).
std::string AcquireBody(size_t size);

}  // namespace outpost::http
