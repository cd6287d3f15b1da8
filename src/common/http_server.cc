#include "common/http_server.h"

#include <openssl/ssl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace outpost::http {

// Bodies at least this large go through the recycling pool (RecycleBody).
constexpr size_t kRecycleMinBytes = 64 * 1024;
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

using Strand = asio::strand<asio::io_context::executor_type>;
// Concrete executor types (no any_io_executor type erasure on the hot path).
using Socket = asio::basic_stream_socket<tcp, Strand>;
using Timer = asio::basic_waitable_timer<Clock, asio::wait_traits<Clock>, Strand>;
using TlsStream = asio::ssl::stream<Socket>;
using local = asio::local::stream_protocol;
using LocalSocket = asio::basic_stream_socket<local, Strand>;

constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
constexpr size_t kReadChunk = 64 * 1024;
// After the last response of a connection, unread client bytes are drained
// for a moment so closing does not reset the connection (and lose the
// response) while the client is still sending, e.g. a body we refused.
constexpr auto kMaxLinger = std::chrono::milliseconds(1000);
constexpr size_t kMaxLingerBytes = 4 * 1024 * 1024;
constexpr uint64_t kFileChunk = 256 * 1024;

// Sizes a body string for recv to fill without zero-filling it first: that
// memset was a third of the io thread's CPU for a 600 KB request. Before
// C++23's resize_and_overwrite, libstdc++'s private _M_set_length is reached
// through an explicit instantiation (which may name private members).
#if defined(__cpp_lib_string_resize_and_overwrite)
void ResizeForOverwrite(std::string& s, size_t n) {
  s.resize_and_overwrite(n, [](char*, size_t n) { return n; });
}
#elif defined(__GLIBCXX__) && _GLIBCXX_USE_CXX11_ABI
template <auto kSetLength>
struct StringSetLength {
  friend void SetLengthUnfilled(std::string& s, size_t n) { (s.*kSetLength)(n); }
};
void SetLengthUnfilled(std::string& s, size_t n);
template struct StringSetLength<&std::string::_M_set_length>;
void ResizeForOverwrite(std::string& s, size_t n) {
  if (n <= s.size()) return s.resize(n);
  s.reserve(n);
  SetLengthUnfilled(s, n);
}
#else
void ResizeForOverwrite(std::string& s, size_t n) { s.resize(n); }
#endif

Response MakeJson(unsigned version, bool keep_alive, Status status, std::string body) {
  Response response{status, version};
  response.set(bhttp::field::content_type, "application/json");
  response.keep_alive(keep_alive);
  response.body() = std::move(body);
  response.prepare_payload();
  return response;
}

Response MakeError(unsigned version, bool keep_alive, Status status, std::string_view message) {
  nlohmann::json body = {{"error", message}};
  // replace: a message quoting client bytes may not be valid UTF-8.
  return MakeJson(version, keep_alive, status,
                  body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

// Lets Stop() know that no Responder is touching a session any more: a Send
// registers in `inflight` and gives up once `stopped` is set.
struct SendGate {
  std::atomic<bool> stopped{false};
  std::atomic<int> inflight{0};
};

class SessionBase : public std::enable_shared_from_this<SessionBase> {
 public:
  virtual ~SessionBase() = default;
  // Starts serving, on the connection's strand.
  virtual void Start() = 0;
  // Any thread: hands the response (nullopt = dropped Responder) to the
  // connection's strand.
  virtual void Deliver(std::optional<Response> response, std::shared_ptr<FileBody> file) = 0;
  // Any thread: closes the connection once its request in flight is answered.
  virtual void BeginShutdown() = 0;
  // Only once the io threads are joined: closes the socket now.
  virtual void ForceClose() = 0;
};

// What sessions share with the server. Outlives every session callback:
// Stop() joins the io threads before it goes away.
struct Core {
  ServerOptions options;
  Handler handler;
  std::shared_ptr<SendGate> gate = std::make_shared<SendGate>();

  absl::Mutex sessions_mu;
  // Owns every open connection (a connection waiting for its handler has no
  // pending I/O to keep it alive; Responders only hold weak references).
  std::unordered_map<SessionBase*, std::shared_ptr<SessionBase>> sessions
      ABSL_GUARDED_BY(sessions_mu);
  bool accepting ABSL_GUARDED_BY(sessions_mu) = true;

  void Unregister(SessionBase* session) {
    std::shared_ptr<SessionBase> last;  // destroyed outside the lock
    absl::MutexLock lock(&sessions_mu);
    auto it = sessions.find(session);
    if (it == sessions.end()) return;
    last = std::move(it->second);
    sessions.erase(it);
  }
};

}  // namespace

struct Responder::Target {
  std::weak_ptr<SessionBase> session;
  std::shared_ptr<SendGate> gate;

  void Deliver(std::optional<Response> response, std::shared_ptr<FileBody> file = nullptr) {
    SendGate& g = *gate;
    // seq_cst pairs with Stop(): either Stop sees us in flight and waits, or
    // we see `stopped` and never touch the (maybe destroyed) io_context.
    g.inflight.fetch_add(1);
    if (!g.stopped.load()) {
      if (auto s = session.lock()) s->Deliver(std::move(response), std::move(file));
    }
    g.inflight.fetch_sub(1);
  }
};

namespace {

template <class Stream>
class Session final : public SessionBase {
 public:
  static constexpr bool kTls = std::is_same_v<Stream, TlsStream>;
  // The socket under the stream: TCP, or a Unix domain socket (never TLS).
  using RawSocket = std::conditional_t<kTls, Socket, Stream>;

  Session(Core& core, RawSocket&& socket) requires(!kTls)
      : core_(core), stream_(std::move(socket)), timer_(stream_.get_executor()) {}
  Session(Core& core, Socket&& socket, asio::ssl::context& ssl) requires(kTls)
      : core_(core), stream_(std::move(socket), ssl), timer_(stream_.get_executor()) {}

  void Start() override {
    asio::dispatch(stream_.get_executor(), [self = Self()] { self->Run(); });
  }

  void Deliver(std::optional<Response> response, std::shared_ptr<FileBody> file) override {
    asio::dispatch(stream_.get_executor(), [self = Self(), response = std::move(response),
                                            file = std::move(file)]() mutable {
      self->file_ = std::move(file);
      self->OnResponse(std::move(response));
    });
  }

  void BeginShutdown() override {
    asio::post(stream_.get_executor(), [self = Self()] {
      self->draining_ = true;
      switch (self->state_) {
        case State::kIdle:
        case State::kReading:
          // A request whose bytes had arrived when the server began to stop
          // (in the socket, in the read buffer, or partly parsed: its io
          // thread was busy, say with an inline inference) is read and
          // answered like one in flight; the grace period bounds a client
          // that stalls half-way.
          if (self->RequestArrived()) break;
          // Asked again after whatever the strand already holds: a read the
          // reactor has completed but whose handler has not run yet moved
          // the bytes out of the socket without committing them.
          asio::post(self->stream_.get_executor(), [self] {
            if ((self->state_ == State::kIdle || self->state_ == State::kReading) &&
                !self->RequestArrived()) {
              self->CloseSocket();  // no request in flight; pending ops abort
            }
          });
          break;
        case State::kHandshake:
          self->CloseSocket();
          break;
        default:
          break;  // answer, then close (keep-alive is off from now on)
      }
    });
  }

  void ForceClose() override {
    state_ = State::kClosed;
    CloseSocket();
  }

 private:
  enum class State { kHandshake, kIdle, kReading, kHandling, kWriting, kLingering, kClosed };

  void Run() {
    target_ = std::make_shared<Responder::Target>(Responder::Target{weak_from_this(), core_.gate});
    // The first request's deadline (and the TLS handshake's) starts at accept.
    SetDeadline(core_.options.request_timeout);
    if constexpr (kTls) {
      state_ = State::kHandshake;
      stream_.async_handshake(asio::ssl::stream_base::server,
                              [self = Self()](error_code ec) { self->OnHandshake(ec); });
    } else {
      ReadHeader();
    }
  }

  std::shared_ptr<Session> Self() { return std::static_pointer_cast<Session>(shared_from_this()); }

  RawSocket& socket() {
    if constexpr (kTls) {
      return stream_.next_layer();
    } else {
      return stream_;
    }
  }

  // ---- deadlines: one long-lived timer wait per session; moving the
  // deadline later is a plain store, so a request costs no timer syscalls.
  void SetDeadline(Clock::duration d) {
    deadline_ = Clock::now() + d;
    if (!timer_waiting_) {
      ArmTimer();
    } else if (deadline_ < timer_.expiry()) {
      timer_.expires_at(deadline_);  // aborts the wait; OnTimer re-arms
    }
  }
  void ClearDeadline() { deadline_ = Clock::time_point::max(); }

  void ArmTimer() {
    timer_.expires_at(deadline_);
    timer_waiting_ = true;
    timer_.async_wait([self = Self()](error_code) { self->OnTimer(); });
  }

  void OnTimer() {
    timer_waiting_ = false;
    if (state_ == State::kClosed || deadline_ == Clock::time_point::max()) return;
    if (Clock::now() >= deadline_) {
      // Slow or stalled client (or idle keep-alive): the pending op aborts.
      CloseSocket();
      return;
    }
    ArmTimer();
  }

  // Whether any byte of a next request has been received.
  bool RequestArrived() {
    if (buffer_.size() > 0 || (parser_ && parser_->got_some())) return true;
    error_code ec;
    return socket().available(ec) > 0 && !ec;
  }

  // ---- reading a request
  void OnHandshake(error_code ec) {
    if (ec) return Finish();
    ReadHeader();
  }

  // Between requests: wait for the next request's first byte under the idle
  // timeout; the request deadline starts when it arrives.
  void ReadNext() {
    if (draining_) return Linger();
    if (buffer_.size() > 0) {  // pipelined request already buffered
      SetDeadline(core_.options.request_timeout);
      return ReadHeader();
    }
    state_ = State::kIdle;
    SetDeadline(core_.options.idle_timeout);
    stream_.async_read_some(buffer_.prepare(kReadChunk),
                            [self = Self()](error_code ec, size_t n) { self->OnIdleRead(ec, n); });
  }

  void OnIdleRead(error_code ec, size_t n) {
    if (ec) return Finish();  // client closed, idle timeout, or Stop()
    buffer_.commit(n);
    SetDeadline(core_.options.request_timeout);
    ReadHeader();
  }

  void ReadHeader() {
    state_ = State::kReading;
    parser_.emplace();
    parser_->header_limit(
        static_cast<std::uint32_t>(std::min<size_t>(core_.options.max_header_bytes, UINT32_MAX)));
    parser_->body_limit(core_.options.max_body_bytes);
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             [self = Self()](error_code ec, size_t) { self->OnHeader(ec); });
  }

  void OnHeader(error_code ec) {
    if (ec) return OnReadError(ec);
    const auto& header = parser_->get();
    if (core_.options.header_check) {
      uint64_t limit = core_.options.max_body_bytes;
      absl::Status verdict = core_.options.header_check(header, &limit);
      if (!verdict.ok()) {
        return WriteError(static_cast<Status>(HttpStatusFor(verdict)), MessageOf(verdict));
      }
      if (parser_->content_length() && *parser_->content_length() > limit) {
        return WriteError(
            Status::payload_too_large,
            absl::StrCat("request body larger than ", limit, " bytes (this route's limit)"));
      }
      parser_->body_limit(limit);
    }
    if (!parser_->is_done() && header.version() >= 11 &&
        beast::iequals(header[bhttp::field::expect], "100-continue")) {
      asio::async_write(stream_, asio::buffer(kContinue.data(), kContinue.size()),
                        [self = Self()](error_code ec, size_t) {
                          if (ec) return self->Finish();
                          self->ReadBody();
                        });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    if (parser_->is_done()) {
      request_ = parser_->release();
      return Dispatch();
    }
    if (parser_->chunked() || !parser_->content_length()) {
      // Chunked: Beast's parser decodes it (and enforces body_limit).
      bhttp::async_read(stream_, buffer_, *parser_, [self = Self()](error_code ec, size_t) {
        if (ec) return self->OnReadError(ec);
        self->request_ = self->parser_->release();
        self->Dispatch();
      });
      return;
    }
    // Content-Length body (already checked against body_limit): sized once,
    // then read straight from the socket into the request's string, in reads
    // as large as the kernel has. Saves Beast's copy through the read buffer.
    const size_t length = static_cast<size_t>(*parser_->content_length());
    request_ = parser_->release();
    std::string& body = request_.body();
    if (length >= kRecycleMinBytes) body = AcquireBody(length);
    ResizeForOverwrite(body, length);
    const size_t have = std::min(length, buffer_.size());
    if (have > 0) {
      std::memcpy(body.data(), buffer_.data().data(), have);
      buffer_.consume(have);
    }
    if (have == length) return Dispatch();
    const size_t rest = length - have;
    asio::async_read(
        stream_, asio::buffer(body.data() + have, rest),
        [rest](const error_code& ec, size_t n) -> size_t { return ec ? 0 : rest - n; },
        [self = Self()](error_code ec, size_t) {
          if (ec) return self->Finish();  // client gone or request deadline hit
          self->Dispatch();
        });
  }

  void OnReadError(error_code ec) {
    if (ec.category() != bhttp::make_error_code(bhttp::error::end_of_stream).category() ||
        ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message) {
      return Finish();  // network error, timeout, Stop(), or the client left
    }
    if (ec == bhttp::error::header_limit) {
      return WriteError(
          Status::request_header_fields_too_large,
          absl::StrCat("request header larger than ", core_.options.max_header_bytes, " bytes"));
    }
    if (ec == bhttp::error::body_limit) {
      return WriteError(Status::payload_too_large,
                        absl::StrCat("request body larger than ", core_.options.max_body_bytes,
                                     " bytes (server limit)"));
    }
    WriteError(Status::bad_request, absl::StrCat("malformed HTTP request: ", ec.message()));
  }

  // ---- handling
  void Dispatch() {
    state_ = State::kHandling;
    ClearDeadline();  // the handler may take as long as it needs
    req_version_ = request_.version();
    req_keep_alive_ = request_.keep_alive();
    parser_.reset();
    try {
      // Last statement: the handler may answer inline, re-entering this strand.
      core_.handler(std::move(request_), Responder(target_));
    } catch (const std::exception& e) {
      // The Responder was destroyed during unwinding: the client gets a 500.
      spdlog::error("http: handler threw: {}", e.what());
    } catch (...) {
      spdlog::error("http: handler threw a non-standard exception");
    }
  }

  void OnResponse(std::optional<Response> response) {
    if (state_ != State::kHandling) return;  // connection closed meanwhile
    if (!response) {
      response = MakeError(req_version_, req_keep_alive_, Status::internal_server_error,
                           "the request was dropped without an answer (server bug)");
    }
    response_ = std::move(*response);
    const bool handler_close =
        bhttp::token_list(response_[bhttp::field::connection]).exists("close");
    response_.version(req_version_);
    response_.keep_alive(req_keep_alive_ && !draining_ && !handler_close);
    response_.set(bhttp::field::server, core_.options.server_name);
    if (file_) return WriteFile();
    try {
      response_.prepare_payload();
    } catch (const std::exception& e) {  // e.g. a body on a 204
      spdlog::error("http: handler produced an invalid response: {}", e.what());
      response_ = MakeError(req_version_, false, Status::internal_server_error,
                            absl::StrCat("invalid response from handler: ", e.what()));
      response_.set(bhttp::field::server, core_.options.server_name);
    }
    Write();
  }

  void WriteError(Status status, std::string_view message) {
    const unsigned version = parser_ && parser_->is_header_done() ? parser_->get().version() : 11;
    response_ = MakeError(version, false, status, message);
    response_.set(bhttp::field::server, core_.options.server_name);
    Write();
  }

  void Write() {
    state_ = State::kWriting;
    SetDeadline(core_.options.request_timeout);
    bhttp::async_write(stream_, response_,
                       [self = Self()](error_code ec, size_t) { self->OnWrite(ec); });
  }

  // A file response: the header, then the range in chunks read with pread
  // on this strand (a chunk at a time, so memory stays bounded).
  void WriteFile() {
    state_ = State::kWriting;
    SetDeadline(core_.options.request_timeout);
    file_header_.emplace(response_.base());
    file_header_->content_length(file_->length());
    response_.body().clear();
    file_serializer_.emplace(*file_header_);
    file_sent_ = 0;
    bhttp::async_write_header(stream_, *file_serializer_, [self = Self()](error_code ec, size_t) {
      if (ec) return self->Finish();
      self->WriteFileChunk();
    });
  }

  void WriteFileChunk() {
    const uint64_t left = file_->length() - file_sent_;
    if (left == 0) {
      file_.reset();
      file_serializer_.reset();
      const bool keep_alive = file_header_->keep_alive();
      file_header_.reset();
      std::vector<char>().swap(file_chunk_);
      return AfterWrite(keep_alive);
    }
    file_chunk_.resize(static_cast<size_t>(std::min<uint64_t>(left, kFileChunk)));
    ssize_t n = ::pread(file_->fd(), file_chunk_.data(), file_chunk_.size(),
                        static_cast<off_t>(file_->offset() + file_sent_));
    if (n <= 0) {
      // The file shrank or failed under us: the length is already promised,
      // so the only honest signal left is closing the connection.
      spdlog::error("http: reading a file response failed after {} bytes: {}", file_sent_,
                    n < 0 ? std::strerror(errno) : "unexpected end of file");
      return Finish();
    }
    SetDeadline(core_.options.request_timeout);  // per chunk: slow links may take long
    asio::async_write(stream_, asio::buffer(file_chunk_.data(), static_cast<size_t>(n)),
                      [self = Self()](error_code ec, size_t written) {
                        if (ec) return self->Finish();
                        self->file_sent_ += written;
                        self->WriteFileChunk();
                      });
  }

  void OnWrite(error_code ec) {
    if (ec) return Finish();
    AfterWrite(response_.keep_alive());
  }

  void AfterWrite(bool keep_alive) {
    response_ = Response();  // a large body is not kept around while idle
    if (!keep_alive) return Linger();
    ReadNext();
  }

  // ---- closing
  void Linger() {
    state_ = State::kLingering;
    SetDeadline(std::min<Clock::duration>(kMaxLinger, core_.options.request_timeout));
    if constexpr (kTls) {
      stream_.async_shutdown([self = Self()](error_code) { self->Finish(); });
    } else {
      error_code ignored;
      socket().shutdown(asio::socket_base::shutdown_send, ignored);
      buffer_.clear();
      Drain();
    }
  }

  void Drain() {
    socket().async_read_some(buffer_.prepare(kReadChunk), [self = Self()](error_code ec, size_t n) {
      self->drained_ += n;
      if (ec || self->drained_ > kMaxLingerBytes) return self->Finish();
      self->Drain();
    });
  }

  void CloseSocket() {
    error_code ignored;
    socket().close(ignored);
  }

  void Finish() {
    if (state_ == State::kClosed) return;
    state_ = State::kClosed;
    CloseSocket();
    timer_.cancel();
    core_.Unregister(this);
  }

  Core& core_;
  Stream stream_;
  Timer timer_;
  Clock::time_point deadline_ = Clock::time_point::max();
  bool timer_waiting_ = false;
  State state_ = State::kReading;
  bool draining_ = false;
  unsigned req_version_ = 11;
  bool req_keep_alive_ = false;
  size_t drained_ = 0;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  Request request_;
  Response response_;
  std::shared_ptr<FileBody> file_;
  std::optional<bhttp::response<bhttp::empty_body>> file_header_;
  std::optional<bhttp::response_serializer<bhttp::empty_body>> file_serializer_;
  std::vector<char> file_chunk_;
  uint64_t file_sent_ = 0;
  std::shared_ptr<Responder::Target> target_;  // shared by this session's Responders
};

}  // namespace

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

// ---- Responder

Responder::Responder(std::shared_ptr<Target> target) : target_(std::move(target)) {}

Responder& Responder::operator=(Responder&& other) noexcept {
  if (this != &other) {
    if (target_) target_->Deliver(std::nullopt);
    target_ = std::move(other.target_);
  }
  return *this;
}

Responder::~Responder() {
  if (target_) target_->Deliver(std::nullopt);
}

void Responder::Send(Response&& response) {
  if (!target_) return;
  std::shared_ptr<Target> target = std::move(target_);
  target->Deliver(std::move(response));
}

void Responder::SendFile(Response&& header, FileBody&& file) {
  if (!target_) return;
  std::shared_ptr<Target> target = std::move(target_);
  target->Deliver(std::move(header), std::make_shared<FileBody>(std::move(file)));
}

FileBody& FileBody::operator=(FileBody&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    offset_ = other.offset_;
    length_ = other.length_;
  }
  return *this;
}

FileBody::~FileBody() {
  if (fd_ >= 0) ::close(fd_);
}

// ---- Server

// Members destroyed in reverse: the io_contexts (and any session their
// pending handlers own) go before Core and the TLS context.
struct Server::Impl : Core {
  std::optional<asio::ssl::context> ssl;
  // One, run by every io thread; or one per io thread (loop_per_thread).
  std::vector<std::unique_ptr<asio::io_context>> contexts;
  tcp::acceptor acceptor{asio::make_strand(*contexts[0])};
  // The optional Unix domain socket listener (options.unix_socket_path).
  local::acceptor local_acceptor{asio::make_strand(*contexts[0])};
  asio::steady_timer local_accept_retry{local_acceptor.get_executor()};
  asio::steady_timer accept_retry{acceptor.get_executor()};
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::vector<std::thread> threads;
  std::atomic<unsigned> next_context{0};  // round robin of new connections
  uint16_t port = 0;

  absl::Mutex lifecycle_mu;
  bool started ABSL_GUARDED_BY(lifecycle_mu) = false;
  bool stopped ABSL_GUARDED_BY(lifecycle_mu) = false;

  Impl(int threads, bool loop_per_thread) : contexts(MakeContexts(threads, loop_per_thread)) {}

  static std::vector<std::unique_ptr<asio::io_context>> MakeContexts(int threads,
                                                                     bool loop_per_thread) {
    std::vector<std::unique_ptr<asio::io_context>> out;
    const int loops = loop_per_thread ? std::max(1, threads) : 1;
    for (int i = 0; i < loops; ++i) {
      out.push_back(std::make_unique<asio::io_context>(loop_per_thread ? 1 : threads));
    }
    return out;
  }

  // The io_context of a new connection.
  asio::io_context& NextContext() {
    if (contexts.size() == 1) return *contexts[0];
    return *contexts[next_context.fetch_add(1, std::memory_order_relaxed) % contexts.size()];
  }

  void Accept() {
    acceptor.async_accept(asio::make_strand(NextContext()), [this](error_code ec, Socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!acceptor.is_open()) {
        // Accepted just before Stop closed the listener: served like the rest.
        if (!ec) OnAccept(std::move(socket));
        return;
      }
      if (ec) {
        // EMFILE and friends: retry shortly rather than spin.
        spdlog::warn("http: accept on port {} failed: {}", port, ec.message());
        accept_retry.expires_after(std::chrono::milliseconds(50));
        accept_retry.async_wait([this](error_code ec) {
          if (!ec) Accept();
        });
        return;
      }
      OnAccept(std::move(socket));
      Accept();
    });
  }

  void AcceptLocal() {
    local_acceptor.async_accept(
        asio::make_strand(NextContext()), [this](error_code ec, LocalSocket socket) {
          if (ec == asio::error::operation_aborted) return;
          if (!local_acceptor.is_open()) {
            if (!ec) Register(std::make_shared<Session<LocalSocket>>(*this, std::move(socket)));
            return;
          }
          if (ec) {
            spdlog::warn("http: accept on {} failed: {}", options.unix_socket_path, ec.message());
            local_accept_retry.expires_after(std::chrono::milliseconds(50));
            local_accept_retry.async_wait([this](error_code ec) {
              if (!ec) AcceptLocal();
            });
            return;
          }
          Register(std::make_shared<Session<LocalSocket>>(*this, std::move(socket)));
          AcceptLocal();
        });
  }

  void OnAccept(Socket socket) {
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    if (ssl) {
      Register(std::make_shared<Session<TlsStream>>(*this, std::move(socket), *ssl));
    } else {
      Register(std::make_shared<Session<Socket>>(*this, std::move(socket)));
    }
  }

  // A connection accepted once Stop has begun still has its request
  // answered if it already sent one (BeginShutdown decides).
  void Register(std::shared_ptr<SessionBase> session) {
    bool stopping = false;
    {
      absl::MutexLock lock(&sessions_mu);
      stopping = !accepting;
      sessions.emplace(session.get(), session);
    }
    session->Start();
    if (stopping) session->BeginShutdown();
  }

  // On the acceptor's strand, when stopping: accepts every connection the
  // kernel has already completed (clients that connected and may have sent
  // a request before the server began to stop; closing the listener would
  // reset them), then closes the listener.
  template <typename Acceptor, typename Accepted>
  void CloseListener(Acceptor& listener, asio::steady_timer& retry, Accepted accepted) {
    error_code ec;
    if (listener.is_open()) {
      listener.non_blocking(true, ec);
      while (!ec) {
        typename Acceptor::protocol_type::socket::template rebind_executor<Strand>::other socket(
            asio::make_strand(NextContext()));
        listener.accept(socket, ec);
        if (!ec) accepted(std::move(socket));
      }
    }
    listener.close(ec);
    retry.cancel();
  }

  void RunThread(int index) {
    std::string name = absl::StrCat("http-io-", index);
    pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
    asio::io_context& ioc = *contexts[index % contexts.size()];
    for (;;) {
      try {
        ioc.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("http: io thread caught an exception: {}", e.what());
      }
    }
  }

  void Start() {
    absl::MutexLock lock(&lifecycle_mu);
    if (started || stopped) return;
    started = true;
    for (auto& ioc : contexts) work.emplace_back(ioc->get_executor());
    Accept();
    if (local_acceptor.is_open()) AcceptLocal();
    const int n = std::max(1, options.threads);
    threads.reserve(n);
    for (int i = 0; i < n; ++i) threads.emplace_back([this, i] { RunThread(i); });
  }

  void Stop() {
    absl::MutexLock lock(&lifecycle_mu);
    if (stopped) return;
    stopped = true;
    if (started) {
      // The listeners close first, on their strands (the backlog is
      // accepted, not reset); then every connection learns the server is
      // stopping.
      absl::Notification tcp_closed, local_closed;
      asio::post(acceptor.get_executor(), [this, &tcp_closed] {
        CloseListener(acceptor, accept_retry,
                      [this](Socket socket) { OnAccept(std::move(socket)); });
        tcp_closed.Notify();
      });
      asio::post(local_acceptor.get_executor(), [this, &local_closed] {
        CloseListener(local_acceptor, local_accept_retry, [this](LocalSocket socket) {
          Register(std::make_shared<Session<LocalSocket>>(*this, std::move(socket)));
        });
        local_closed.Notify();
      });
      tcp_closed.WaitForNotification();
      local_closed.WaitForNotification();
    }
    std::vector<std::shared_ptr<SessionBase>> open;
    {
      absl::MutexLock sessions_lock(&sessions_mu);
      accepting = false;
      open.reserve(sessions.size());
      for (auto& [ptr, session] : sessions) open.push_back(session);
    }
    if (started) {
      for (auto& session : open) session->BeginShutdown();
      open.clear();
      // Graceful part: requests in flight answer, idle connections close.
      absl::MutexLock sessions_lock(&sessions_mu);
      sessions_mu.AwaitWithTimeout(
          absl::Condition(
              +[](std::unordered_map<SessionBase*, std::shared_ptr<SessionBase>>* s) {
                return s->empty();
              },
              &sessions),
          absl::FromChrono(options.shutdown_grace));
    }
    // From here on Responders drop their answers; wait out any Send that is
    // already posting to a strand, so nothing touches the io_context later.
    gate->stopped.store(true);
    while (gate->inflight.load() != 0) std::this_thread::yield();
    work.clear();
    for (auto& ioc : contexts) ioc->stop();
    for (std::thread& t : threads) t.join();
    threads.clear();
    error_code ignored;
    acceptor.close(ignored);
    if (local_acceptor.is_open() || !options.unix_socket_path.empty()) {
      local_acceptor.close(ignored);
      if (!options.unix_socket_path.empty()) ::unlink(options.unix_socket_path.c_str());
    }
    // Connections still open (a handler kept its Responder past the grace
    // period) are closed here; ones owned by pending handlers go with the
    // io_contexts.
    std::unordered_map<SessionBase*, std::shared_ptr<SessionBase>> rest;
    {
      absl::MutexLock sessions_lock(&sessions_mu);
      rest.swap(sessions);
    }
    for (auto& [ptr, session] : rest) session->ForceClose();
    rest.clear();
    // Release what the handler captured now, on the caller's thread.
    Handler().swap(handler);
  }
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
  if (impl_) impl_->Stop();
}

uint16_t Server::port() const { return impl_->port; }
bool Server::tls() const { return impl_->ssl.has_value(); }
void Server::Start() { impl_->Start(); }
void Server::Stop() { impl_->Stop(); }

namespace {

absl::Status LoadTls(const ServerOptions& options, std::optional<asio::ssl::context>& ssl) {
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both a certificate file and a key file; only one was given");
  }
  if (options.tls_cert_file.empty()) return absl::OkStatus();
  ssl.emplace(asio::ssl::context::tls_server);
  error_code ec;
  ssl->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                       asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                       asio::ssl::context::no_tlsv1_1 | asio::ssl::context::single_dh_use,
                   ec);
  if (ec || SSL_CTX_set_min_proto_version(ssl->native_handle(), TLS1_2_VERSION) != 1) {
    return absl::InternalError("cannot restrict the TLS context to TLS 1.2+");
  }
  ssl->use_certificate_chain_file(options.tls_cert_file, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat("cannot load TLS certificate chain '",
                                                   options.tls_cert_file, "': ", ec.message(),
                                                   " (expected a readable PEM file)"));
  }
  ssl->use_private_key_file(options.tls_key_file, asio::ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat("cannot load TLS private key '",
                                                   options.tls_key_file, "': ", ec.message(),
                                                   " (expected a readable PEM file)"));
  }
  if (SSL_CTX_check_private_key(ssl->native_handle()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("TLS private key '", options.tls_key_file,
                                                   "' does not match certificate '",
                                                   options.tls_cert_file, "'"));
  }
  return absl::OkStatus();
}

// Listens on a Unix domain socket at `path`, mode 0660 (the owner's group
// may connect: file permissions are its access control). A socket file
// left by a server that died is replaced; anything else at `path`, or a
// socket another server still answers on, is an error.
absl::Status ListenLocal(const std::string& path, local::acceptor& acceptor) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("unix socket path '", path, "' is longer than ",
                                                   sizeof(sockaddr_un::sun_path) - 1, " bytes"));
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unix socket path '", path, "' exists and is not a socket"));
    }
    local::socket probe(acceptor.get_executor());
    error_code probe_ec;
    probe.connect(local::endpoint(path), probe_ec);
    if (!probe_ec) {
      return absl::UnavailableError(
          absl::StrCat("another server is listening on unix socket '", path, "'"));
    }
    ::unlink(path.c_str());  // stale: its server is gone
  }
  error_code ec;
  acceptor.open(local(), ec);
  if (!ec) acceptor.bind(local::endpoint(path), ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot bind unix socket '", path, "': ", ec.message()));
  }
  if (::chmod(path.c_str(), 0660) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return absl::UnavailableError(
        absl::StrCat("cannot set permissions on unix socket '", path, "': ", std::strerror(err)));
  }
  acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    ::unlink(path.c_str());
    return absl::UnavailableError(
        absl::StrCat("cannot listen on unix socket '", path, "': ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Create(ServerOptions options, Handler handler) {
  if (!handler) return absl::InvalidArgumentError("HTTP server needs a handler");
  if (options.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP server needs at least 1 io thread, got ", options.threads));
  }
  error_code ec;
  asio::ip::address address = asio::ip::make_address(
      options.address == "localhost" ? std::string("127.0.0.1") : options.address, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat("HTTP listen address '", options.address,
                                                   "' is not an IPv4/IPv6 address or localhost"));
  }
  auto impl = std::make_unique<Impl>(options.threads, options.loop_per_thread);
  RETURN_IF_ERROR(LoadTls(options, impl->ssl));
  if (!impl->ssl && !options.allow_insecure && !IsLoopbackAddress(options.address)) {
    return absl::InvalidArgumentError(
        absl::StrCat("refusing to serve plain HTTP on non-loopback address ", options.address,
                     ": pass TLS files (--tls-cert/--tls-key) or --allow-insecure-http"));
  }

  tcp::endpoint endpoint(address, options.port);
  tcp::acceptor& acceptor = impl->acceptor;
  const std::string where = absl::StrCat(options.address, ":", options.port);
  acceptor.open(endpoint.protocol(), ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot open a socket for ", where, ": ", ec.message()));
  }
  acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  // Accepted sockets inherit this: a whole tensor request (hundreds of KB)
  // lands in the kernel in one go instead of the sender stalling on a
  // small window. Capped by net.core.rmem_max; failure only costs speed.
  error_code buffer_ec;
  acceptor.set_option(asio::socket_base::receive_buffer_size(4 << 20), buffer_ec);
  acceptor.bind(endpoint, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("cannot bind HTTP listener to ", where, ": ",
                                               ec.message(),
                                               " (is another server using the port?)"));
  }
  acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", where, ": ", ec.message()));
  }
  impl->port = acceptor.local_endpoint(ec).port();
  if (!options.unix_socket_path.empty()) {
    RETURN_IF_ERROR(ListenLocal(options.unix_socket_path, impl->local_acceptor));
  }
  impl->options = std::move(options);
  impl->handler = std::move(handler);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

// ---- helpers

Response JsonResponse(const Request& request, Status status, std::string body) {
  return MakeJson(request.version(), request.keep_alive(), status, std::move(body));
}

Response ErrorResponse(const Request& request, Status status, std::string_view message) {
  return MakeError(request.version(), request.keep_alive(), status, message);
}

namespace {
// Enough for the bodies in flight on a small device (io threads + queued
// requests); bounded in bytes so an odd huge request is not kept forever.
constexpr size_t kPoolMaxBuffers = 32;
constexpr size_t kPoolMaxBytes = 64u << 20;

struct BodyPool {
  std::mutex mu;
  std::vector<std::string> buffers;  // guarded by mu
  size_t bytes = 0;                  // guarded by mu
};

BodyPool& Pool() {
  static BodyPool* pool = new BodyPool();  // never destroyed: used until exit
  return *pool;
}
}  // namespace

void RecycleBody(std::string&& body) {
  if (body.capacity() < kRecycleMinBytes) return;
  std::string buffer = std::move(body);
  BodyPool& pool = Pool();
  std::lock_guard<std::mutex> lock(pool.mu);
  if (pool.buffers.size() >= kPoolMaxBuffers || pool.bytes + buffer.capacity() > kPoolMaxBytes) {
    return;  // freed outside the pool's accounting
  }
  pool.bytes += buffer.capacity();
  pool.buffers.push_back(std::move(buffer));
}

std::string AcquireBody(size_t size) {
  BodyPool& pool = Pool();
  {
    std::lock_guard<std::mutex> lock(pool.mu);
    // Newest first: its pages are most likely still resident.
    for (size_t i = pool.buffers.size(); i-- > 0;) {
      if (pool.buffers[i].capacity() >= size) {
        std::string buffer = std::move(pool.buffers[i]);
        pool.buffers.erase(pool.buffers.begin() + static_cast<ptrdiff_t>(i));
        pool.bytes -= buffer.capacity();
        buffer.clear();
        return buffer;
      }
    }
  }
  std::string buffer;
  buffer.reserve(size);
  return buffer;
}

bool IsLoopbackAddress(std::string_view address) {
  if (address == "localhost") return true;
  error_code ec;
  asio::ip::address parsed = asio::ip::make_address(std::string(address), ec);
  if (ec) return false;
  if (parsed.is_v6() && parsed.to_v6().is_v4_mapped()) {
    return asio::ip::make_address_v4(asio::ip::v4_mapped, parsed.to_v6()).is_loopback();
  }
  return parsed.is_loopback();
}

}  // namespace outpost::http
