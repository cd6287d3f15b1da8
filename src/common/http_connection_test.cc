#include "common/http_connection.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/http_client.h"
#include "common/http_proxy.h"
#include "common/http_server.h"
#include "common/scoped_proxy_environment.h"

namespace outpost {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Collects a response.
struct Collected : HttpResponseHandler {
  int status = 0;
  HttpHeaderList headers;
  std::string body;
  absl::Status OnHead(int s, const HttpHeaderList& h) override {
    status = s;
    headers = h;
    return absl::OkStatus();
  }
  absl::Status OnBody(std::string_view data) override {
    body.append(data);
    return absl::OkStatus();
  }
};

// A raw HTTP/1.1 server on 127.0.0.1 that answers requests on kept-alive
// connections from a script: `answer(connection index, request index on
// that connection, request)` returns the raw bytes to send; "" closes the
// connection without an answer, "STALL" holds it open silently.
class ScriptedServer {
 public:
  using Answer = std::function<std::string(int, int, const std::string&)>;
  explicit ScriptedServer(Answer answer) : answer_(std::move(answer)) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(listen_fd_, 16), 0);
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    EXPECT_EQ(pipe2(stop_, O_CLOEXEC), 0);
    thread_ = std::thread([this] { Loop(); });
  }
  ~ScriptedServer() {
    char c = 'x';
    EXPECT_EQ(write(stop_[1], &c, 1), 1);
    thread_.join();
    close(listen_fd_);
    close(stop_[0]);
    close(stop_[1]);
  }
  std::string Url(std::string_view path = "/x") const {
    return StrCat("http://127.0.0.1:", port_, path);
  }
  uint16_t port() const { return port_; }
  int connections() const { return connections_.load(); }
  std::vector<std::string> requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }

 private:
  void Loop() {
    while (true) {
      pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_[0], POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) continue;
      if (fds[1].revents) return;
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      Serve(fd, connections_++);
      close(fd);
    }
  }
  void Serve(int fd, int connection) {
    std::string pending;
    for (int index = 0;; ++index) {
      size_t end;
      while ((end = pending.find("\r\n\r\n")) == std::string::npos) {
        pollfd p[2] = {{fd, POLLIN, 0}, {stop_[0], POLLIN, 0}};
        if (poll(p, 2, 5000) <= 0 || p[1].revents) return;
        char buf[4096];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) return;
        pending.append(buf, static_cast<size_t>(n));
      }
      std::string request = pending.substr(0, end + 4);
      pending.erase(0, end + 4);
      {
        std::lock_guard lock(mu_);
        requests_.push_back(request);
      }
      std::string answer = answer_(connection, index, request);
      if (answer.empty()) return;
      if (answer == "STALL") {  // until the client gives up (or 10 s)
        pollfd p[2] = {{fd, POLLIN, 0}, {stop_[0], POLLIN, 0}};
        poll(p, 2, 10000);
        return;
      }
      if (send(fd, answer.data(), answer.size(), MSG_NOSIGNAL) !=
          static_cast<ssize_t>(answer.size())) {
        return;
      }
    }
  }

  Answer answer_;
  int listen_fd_ = -1;
  int stop_[2] = {-1, -1};
  uint16_t port_ = 0;
  std::atomic<int> connections_{0};
  std::mutex mu_;
  std::vector<std::string> requests_;
  std::thread thread_;
};

std::string Ok(std::string_view body) {
  return StrCat("HTTP/1.1 200 OK\r\nContent-Length: ", body.size(), "\r\n\r\n", body);
}

TEST(ParseHttpUrlTest, AcceptsHttpUrlsAndRefusesTheRest) {
  auto url = ParseHttpUrl("https://hub.example:8443/v1/state?x=1");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_TRUE(url->tls);
  EXPECT_EQ(url->host, "hub.example");
  EXPECT_EQ(url->port, 8443);
  EXPECT_EQ(url->target, "/v1/state?x=1");
  EXPECT_EQ(url->Authority(), "hub.example:8443");

  auto plain = ParseHttpUrl("http://127.0.0.1");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->port, 80);
  EXPECT_EQ(plain->target, "/");
  EXPECT_EQ(plain->Authority(), "127.0.0.1");

  auto v6 = ParseHttpUrl("http://[::1]:99/a#frag");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->target, "/a");
  EXPECT_EQ(v6->Authority(), "[::1]:99");

  for (const char* bad : {"ftp://h/x", "http://", "http://h:0/", "http://h:70000/", "http://h:x/",
                          "http://u@h/", "http://h/a b", "http://[::1/", "hub:80"}) {
    auto parsed = ParseHttpUrl(bad);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(HttpConnectionTest, ReusesOneConnectionAndDecodesChunkedBodies) {
  ScriptedServer server([](int, int index, const std::string&) {
    if (index == 1) {
      return std::string(
          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Thing:  padded  \r\n\r\n"
          "5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n");
    }
    return Ok(StrCat("answer ", index));
  });
  auto connection = HttpConnection::Create({});
  auto url = ParseHttpUrl(server.Url("/path?q=1"));
  ASSERT_TRUE(url.ok());
  std::vector<std::pair<std::string, std::string>> headers = {{"X-Custom", "yes"}};
  for (int i = 0; i < 3; ++i) {
    Collected got;
    ASSERT_TRUE(connection->Exchange({.url = &*url, .headers = &headers}, got).ok());
    EXPECT_EQ(got.status, 200);
    if (i == 1) {
      EXPECT_EQ(got.body, "hello, world");
      ASSERT_GE(got.headers.size(), 2u);
      EXPECT_EQ(got.headers[1], (std::pair<std::string, std::string>("x-thing", "padded")));
    } else {
      EXPECT_EQ(got.body, StrCat("answer ", i));
    }
  }
  EXPECT_EQ(server.connections(), 1);
  // The kept connection probes only after 15 idle minutes (ss shows the
  // keep-alive timer of the client's socket, whose peer port is the server's).
  std::string ss_cmd = StrCat("ss -tnoH state established dst 127.0.0.1:", url->port, " 2>&1");
  std::string ss_out;
  if (FILE* pipe = popen(ss_cmd.c_str(), "r")) {
    char line[512];
    while (fgets(line, sizeof(line), pipe) != nullptr) ss_out += line;
    pclose(pipe);
  }
  EXPECT_NE(ss_out.find("timer:(keepalive,1"), std::string::npos) << ss_out;
  EXPECT_TRUE(ss_out.find("14min") != std::string::npos ||
              ss_out.find("15min") != std::string::npos)
      << ss_out;
  auto requests = server.requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].substr(0, requests[0].find("\r\n")), "GET /path?q=1 HTTP/1.1");
  EXPECT_NE(requests[0].find(StrCat("\r\nHost: 127.0.0.1:", url->port, "\r\n")), std::string::npos);
  EXPECT_NE(requests[0].find("\r\nX-Custom: yes\r\n"), std::string::npos);
}

TEST(HttpConnectionTest, AKeptConnectionTheServerClosedIsReplaced) {
  // Connection 0 answers once, then closes at the next request without an
  // answer (the race a keep-alive timeout makes); connection 1 answers.
  ScriptedServer server([](int connection, int index, const std::string&) {
    if (connection == 0 && index == 1) return std::string();
    return Ok(StrCat("c", connection, "r", index));
  });
  auto connection = HttpConnection::Create({});
  auto url = ParseHttpUrl(server.Url());
  ASSERT_TRUE(url.ok());
  Collected first, second;
  ASSERT_TRUE(connection->Exchange({.url = &*url}, first).ok());
  EXPECT_EQ(first.body, "c0r0");
  absl::Status status = connection->Exchange({.method = "POST", .url = &*url, .body = "b"}, second);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(second.body, "c1r0");
  EXPECT_EQ(server.connections(), 2);

  // "Connection: close" is honoured: the next exchange connects again.
  ScriptedServer closing([](int connection, int, const std::string&) {
    return StrCat("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", connection);
  });
  auto closing_url = ParseHttpUrl(closing.Url());
  for (int i = 0; i < 2; ++i) {
    Collected got;
    ASSERT_TRUE(connection->Exchange({.url = &*closing_url}, got).ok());
    EXPECT_EQ(got.body, StrCat(i));
  }
  EXPECT_EQ(closing.connections(), 2);
}

TEST(HttpConnectionTest, DeadlineStallCancelAndBadHeadersAreDistinct) {
  ScriptedServer server([](int, int, const std::string& request) {
    if (request.starts_with("GET /trickle")) {  // three bytes, then silence
      return std::string("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nxyz");
    }
    return std::string("STALL");
  });
  auto connection = HttpConnection::Create({});
  auto url = ParseHttpUrl(server.Url("/silent"));
  auto start = std::chrono::steady_clock::now();
  Collected a;
  absl::Status timed_out =
      connection->Exchange({.url = &*url, .deadline = std::chrono::steady_clock::now() + 300ms}, a);
  EXPECT_EQ(timed_out.code(), absl::StatusCode::kDeadlineExceeded) << timed_out;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);

  auto trickle = ParseHttpUrl(server.Url("/trickle"));
  Collected b;
  absl::Status stalled = connection->Exchange(
      {.url = &*trickle, .low_speed_bytes_per_second = 1000, .low_speed_time = 1s}, b);
  EXPECT_EQ(stalled.code(), absl::StatusCode::kDeadlineExceeded) << stalled;
  EXPECT_NE(MessageOf(stalled).find("stalled"), std::string_view::npos) << stalled;
  EXPECT_EQ(b.body, "xyz");

  std::atomic<bool> stop{false};
  std::function<bool()> cancelled = [&] { return stop.load(); };
  std::thread canceller([&] {
    std::this_thread::sleep_for(200ms);
    stop = true;
  });
  Collected c;
  start = std::chrono::steady_clock::now();
  absl::Status cancel = connection->Exchange({.url = &*url, .cancelled = &cancelled}, c);
  canceller.join();
  EXPECT_EQ(cancel.code(), absl::StatusCode::kCancelled) << cancel;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);

  std::vector<std::pair<std::string, std::string>> injected = {{"X-A", "b\r\nX-Evil: 1"}};
  Collected d;
  EXPECT_EQ(connection->Exchange({.url = &*url, .headers = &injected}, d).code(),
            absl::StatusCode::kInvalidArgument);

  // Nothing listens on a port just closed.
  uint16_t port = 0;
  {
    ScriptedServer gone([](int, int, const std::string&) { return std::string(); });
    port = ParseHttpUrl(gone.Url())->port;
  }
  auto refused_url = ParseHttpUrl(StrCat("http://127.0.0.1:", port, "/"));
  Collected e;
  EXPECT_EQ(connection->Exchange({.url = &*refused_url}, e).code(), absl::StatusCode::kUnavailable);
}

TEST(HttpConnectionTest, StreamsAFileBodyWithProgress) {
  std::string received_body;
  auto real = http::Server::Create({}, [&](http::Request&& request, http::Responder responder) {
    received_body = request.body();
    responder.Send(http::JsonResponse(request, http::Status::ok, "{}"));
  });
  ASSERT_TRUE(real.ok());
  (*real)->Start();
  char path[] = "/tmp/http_connection_test_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::string content(300 * 1024 + 7, 'q');
  ASSERT_EQ(write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
  auto url = ParseHttpUrl(StrCat("http://127.0.0.1:", (*real)->port(), "/upload"));
  std::vector<uint64_t> sent;
  std::function<void(uint64_t, uint64_t)> progress = [&](uint64_t done, uint64_t total) {
    EXPECT_EQ(total, content.size());
    sent.push_back(done);
  };
  auto connection = HttpConnection::Create({});
  Collected got;
  absl::Status status = connection->Exchange({.method = "PUT",
                                              .url = &*url,
                                              .body_fd = fd,
                                              .body_fd_size = content.size(),
                                              .upload_progress = &progress},
                                             got);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(got.status, 200);
  EXPECT_TRUE(received_body == content);
  ASSERT_FALSE(sent.empty());
  EXPECT_EQ(sent.back(), content.size());
  close(fd);
  unlink(path);
  (*real)->Stop();
}

// TLS: the host name is verified, and public-key pins are enforced.
TEST(HttpConnectionTest, TlsVerifiesTheHostNameAndThePinnedKey) {
  char dir_template[] = "/tmp/http_connection_tls_XXXXXX";
  fs::path dir = mkdtemp(dir_template);
  std::string cmd = StrCat(
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
      "-subj /CN=localhost -addext subjectAltName=DNS:localhost -keyout ",
      (dir / "key.pem").string(), " -out ", (dir / "cert.pem").string(), " 2>/dev/null");
  ASSERT_EQ(system(cmd.c_str()), 0);
  std::string pin_cmd = StrCat("openssl x509 -in ", (dir / "cert.pem").string(),
                               " -pubkey -noout | openssl pkey -pubin -outform der | "
                               "openssl dgst -sha256 -binary | base64");
  std::string pin;
  {
    FILE* pipe = popen(pin_cmd.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    char line[256] = {};
    ASSERT_NE(fgets(line, sizeof(line), pipe), nullptr);
    pclose(pipe);
    pin = line;
    while (!pin.empty() && (pin.back() == '\n' || pin.back() == '\r')) pin.pop_back();
  }
  http::ServerOptions options;
  options.tls_cert_file = (dir / "cert.pem").string();
  options.tls_key_file = (dir / "key.pem").string();
  auto server = http::Server::Create(options, [](http::Request&& request, http::Responder r) {
    r.Send(http::JsonResponse(request, http::Status::ok, "{\"tls\":true}"));
  });
  ASSERT_TRUE(server.ok()) << server.status();
  (*server)->Start();
  uint16_t port = (*server)->port();
  auto by_name = ParseHttpUrl(StrCat("https://localhost:", port, "/"));
  auto by_ip = ParseHttpUrl(StrCat("https://127.0.0.1:", port, "/"));

  auto trusting = HttpConnection::Create({.ca_file = (dir / "cert.pem").string()});
  for (int i = 0; i < 2; ++i) {  // the second one on the kept connection
    Collected ok;
    absl::Status status = trusting->Exchange({.url = &*by_name}, ok);
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(ok.body, "{\"tls\":true}");
  }
  Collected wrong_name;
  absl::Status mismatch = trusting->Exchange({.url = &*by_ip}, wrong_name);
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kFailedPrecondition) << mismatch;

  auto pinned = HttpConnection::Create(
      {.ca_file = (dir / "cert.pem").string(), .pinned_public_key = "sha256//" + pin});
  Collected pinned_ok;
  absl::Status status = pinned->Exchange({.url = &*by_name}, pinned_ok);
  EXPECT_TRUE(status.ok()) << status << " pin " << pin;

  auto wrong_pin = HttpConnection::Create(
      {.ca_file = (dir / "cert.pem").string(),
       .pinned_public_key = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=;sha256//x"});
  Collected refused;
  absl::Status pin_refused = wrong_pin->Exchange({.url = &*by_name}, refused);
  EXPECT_EQ(pin_refused.code(), absl::StatusCode::kFailedPrecondition) << pin_refused;

  auto missing_ca = HttpConnection::Create({.ca_file = (dir / "nope.pem").string()});
  Collected no_ca;
  EXPECT_EQ(missing_ca->Exchange({.url = &*by_name}, no_ca).code(),
            absl::StatusCode::kFailedPrecondition);
  (*server)->Stop();
  fs::remove_all(dir);
}

// A self-signed P-256 certificate (and key) in `dir`/`name`-{cert,key}.pem
// with the given subjectAltName, made by the openssl tool.
std::string MakeCert(const fs::path& dir, const std::string& name, const std::string& san) {
  std::string cert = (dir / (name + "-cert.pem")).string();
  std::string cmd =
      StrCat("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 ",
             "-subj /CN=", name, " -addext subjectAltName=", san, " -keyout ",
             (dir / (name + "-key.pem")).string(), " -out ", cert, " 2>/dev/null");
  EXPECT_EQ(system(cmd.c_str()), 0) << cmd;
  return cert;
}

std::string Key(const fs::path& dir, const std::string& name) {
  return (dir / (name + "-key.pem")).string();
}

class TlsVerificationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/http_connection_tls_XXXXXX";
    dir_ = mkdtemp(dir_template);
  }
  void TearDown() override {
    if (server_) server_->Stop();
    fs::remove_all(dir_);
  }
  // An HttpServer on 127.0.0.1 with the certificate `name`.
  void Serve(const std::string& name) {
    http::ServerOptions options;
    options.tls_cert_file = (dir_ / (name + "-cert.pem")).string();
    options.tls_key_file = Key(dir_, name);
    auto server = http::Server::Create(options, [](http::Request&& request, http::Responder r) {
      r.Send(http::JsonResponse(request, http::Status::ok, "{}"));
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    server_->Start();
  }
  absl::Status Get(const HttpConnectionOptions& options, const std::string& host) {
    auto url = ParseHttpUrl(StrCat("https://", host, ":", server_->port(), "/"));
    EXPECT_TRUE(url.ok());
    Collected got;
    absl::Status status = HttpConnection::Create(options)->Exchange({.url = &*url}, got);
    if (status.ok()) {
      EXPECT_EQ(got.status, 200);
    }
    return status;
  }

  fs::path dir_;
  std::unique_ptr<http::Server> server_;
};

// mbedTLS matches host names only against dNSName entries: addresses are
// checked against the iPAddress entries by the client itself.
TEST_F(TlsVerificationTest, AnIpAddressHostMustBeAnIpAddressSan) {
  std::string ca = MakeCert(dir_, "hub", "IP:127.0.0.1,DNS:hub.test");
  MakeCert(dir_, "other-ip", "IP:127.0.0.2,DNS:localhost,DNS:127.0.0.1");
  Serve("hub");
  EXPECT_TRUE(Get({.ca_file = ca}, "127.0.0.1").ok());
  server_->Stop();
  Serve("other-ip");
  // A dNSName spelled like the address does not count either.
  absl::Status status = Get({.ca_file = (dir_ / "other-ip-cert.pem").string()}, "127.0.0.1");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_NE(status.message().find("does not name the IP address 127.0.0.1"),
            absl::string_view::npos)
      << status;
  // The name is still good.
  EXPECT_TRUE(Get({.ca_file = (dir_ / "other-ip-cert.pem").string()}, "localhost").ok());
}

TEST_F(TlsVerificationTest, AHostNameMustBeADnsNameSan) {
  std::string ca = MakeCert(dir_, "hub", "IP:127.0.0.1,DNS:hub.test");
  Serve("hub");
  absl::Status status = Get({.ca_file = ca}, "localhost");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_NE(status.message().find("TLS verification of localhost failed: the certificate does "
                                  "not name the host localhost"),
            absl::string_view::npos)
      << status;
}

TEST_F(TlsVerificationTest, AnUnknownCaAndAWrongPinAreRefusedWithTheReason) {
  std::string ca = MakeCert(dir_, "hub", "IP:127.0.0.1");
  std::string other = MakeCert(dir_, "other", "IP:127.0.0.1");
  Serve("hub");
  absl::Status unknown = Get({.ca_file = other}, "127.0.0.1");
  EXPECT_EQ(unknown.code(), absl::StatusCode::kFailedPrecondition) << unknown;
  EXPECT_NE(unknown.message().find("not correctly signed by the trusted CA"),
            absl::string_view::npos)
      << unknown;
  EXPECT_NE(unknown.message().find(StrCat("trusting the CA file ", other)), absl::string_view::npos)
      << unknown;

  absl::Status pin =
      Get({.ca_file = ca, .pinned_public_key = "sha256//bm90IHRoZSBrZXk="}, "127.0.0.1");
  EXPECT_EQ(pin.code(), absl::StatusCode::kFailedPrecondition) << pin;
  EXPECT_NE(pin.message().find("is not the pinned one"), absl::string_view::npos) << pin;

  // Without a CA file the system store is loaded, and does not know ours.
  absl::Status system = Get({}, "127.0.0.1");
  EXPECT_EQ(system.code(), absl::StatusCode::kFailedPrecondition) << system;
  EXPECT_NE(system.message().find("not correctly signed by the trusted CA (trusting the "
                                  "system's CAs)"),
            absl::string_view::npos)
      << system;
  // SSL_CERT_FILE replaces the system store, as it does for OpenSSL.
  setenv("SSL_CERT_FILE", ca.c_str(), 1);
  absl::Status env_store = Get({}, "127.0.0.1");
  unsetenv("SSL_CERT_FILE");
  EXPECT_TRUE(env_store.ok()) << env_store;

  // A CA file that is not PEM.
  std::string junk = (dir_ / "junk.pem").string();
  {
    FILE* f = fopen(junk.c_str(), "w");
    ASSERT_NE(f, nullptr);
    fputs("not a certificate\n", f);
    fclose(f);
  }
  absl::Status bad_ca = Get({.ca_file = junk}, "127.0.0.1");
  EXPECT_EQ(bad_ca.code(), absl::StatusCode::kFailedPrecondition) << bad_ca;
  EXPECT_NE(bad_ca.message().find("cannot load the trusted CA file " + junk),
            absl::string_view::npos)
      << bad_ca;
}

// A TLS server on OpenSSL that answers each request with Connection: close
// and records, for each connection, whether the client resumed a session.
class ResumptionServer {
 public:
  ResumptionServer(const std::string& cert, const std::string& key) {
    ctx_ = SSL_CTX_new(TLS_server_method());
    EXPECT_EQ(SSL_CTX_use_certificate_chain_file(ctx_, cert.c_str()), 1);
    EXPECT_EQ(SSL_CTX_use_PrivateKey_file(ctx_, key.c_str(), SSL_FILETYPE_PEM), 1);
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(listen_fd_, 16), 0);
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Loop(); });
  }
  ~ResumptionServer() {
    shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    close(listen_fd_);
    SSL_CTX_free(ctx_);
  }
  uint16_t port() const { return port_; }
  std::vector<bool> resumed() {
    std::lock_guard lock(mu_);
    return resumed_;
  }

 private:
  void Loop() {
    while (true) {
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      SSL* ssl = SSL_new(ctx_);
      SSL_set_fd(ssl, fd);
      if (SSL_accept(ssl) == 1) {
        std::string request;
        char buf[1024];
        while (request.find("\r\n\r\n") == std::string::npos) {
          int n = SSL_read(ssl, buf, sizeof(buf));
          if (n <= 0) break;
          request.append(buf, static_cast<size_t>(n));
        }
        {
          std::lock_guard lock(mu_);
          resumed_.push_back(SSL_session_reused(ssl) == 1);
        }
        static constexpr char kAnswer[] =
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
        SSL_write(ssl, kAnswer, sizeof(kAnswer) - 1);
        SSL_shutdown(ssl);
      }
      SSL_free(ssl);
      close(fd);
    }
  }

  SSL_CTX* ctx_ = nullptr;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<bool> resumed_;
};

TEST_F(TlsVerificationTest, ASessionIsResumedOnTheNextConnectionToTheSameOrigin) {
  std::string ca = MakeCert(dir_, "hub", "IP:127.0.0.1,DNS:localhost");
  ResumptionServer server(ca, Key(dir_, "hub"));
  auto by_ip = ParseHttpUrl(StrCat("https://127.0.0.1:", server.port(), "/"));
  auto by_name = ParseHttpUrl(StrCat("https://localhost:", server.port(), "/"));
  auto connection = HttpConnection::Create({.ca_file = ca});
  for (const ParsedUrl* url : {&*by_ip, &*by_ip, &*by_ip, &*by_name}) {
    Collected got;
    absl::Status status = connection->Exchange({.url = url}, got);
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(got.body, "ok");
  }
  // Another connection object has no session to offer.
  Collected got;
  ASSERT_TRUE(HttpConnection::Create({.ca_file = ca})->Exchange({.url = &*by_ip}, got).ok());
  // Full handshake, two resumed ones, a full one for the other origin, and
  // a full one for the new object.
  EXPECT_EQ(server.resumed(), (std::vector<bool>{false, true, true, false, false}));
}

// ---- Proxies (common/http_proxy.h) ----

// Debian's tinyproxy on 127.0.0.1 in the foreground, logging each request
// line it receives. Tests skip when it is not installed (scripts/deps.sh
// installs it).
// A loopback port nothing listens on (bound, then released).
uint16_t FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

class Tinyproxy {
 public:
  static constexpr const char* kBinary = "/usr/bin/tinyproxy";
  static bool Installed() { return access(kBinary, X_OK) == 0; }

  // `basic_auth`: "user password" to require those credentials.
  explicit Tinyproxy(const std::string& basic_auth = "") {
    char dir_template[] = "/tmp/tinyproxy_test_XXXXXX";
    dir_ = mkdtemp(dir_template);
    chmod(dir_.c_str(), 0777);  // tinyproxy may drop to nobody to write its log
    for (int attempt = 0; attempt < 5 && pid_ < 0; ++attempt) Start(basic_auth);
  }
  ~Tinyproxy() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    fs::remove_all(dir_);
  }
  bool running() const { return pid_ > 0; }
  uint16_t port() const { return port_; }
  HttpProxy Proxy(const std::string& authorization = "") const {
    return {.host = "127.0.0.1", .port = port_, .authorization = authorization};
  }
  std::string Log() const {
    std::ifstream in(dir_ / "tinyproxy.log");
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  // How often `needle` occurs in the log.
  int Count(const std::string& needle) const {
    std::string log = Log();
    int n = 0;
    for (size_t at = log.find(needle); at != std::string::npos; at = log.find(needle, at + 1)) ++n;
    return n;
  }

 private:
  static bool Accepts(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    close(fd);
    return ok;
  }
  void Start(const std::string& basic_auth) {
    port_ = FreePort();
    std::string conf = (dir_ / "tinyproxy.conf").string();
    {
      std::ofstream out(conf);
      out << "Port " << port_ << "\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\n"
          << "LogFile \"" << (dir_ / "tinyproxy.log").string() << "\"\nLogLevel Info\n";
      if (!basic_auth.empty()) out << "BasicAuth " << basic_auth << "\n";
    }
    pid_t pid = fork();
    if (pid == 0) {
      int devnull = open("/dev/null", O_WRONLY);
      dup2(devnull, 1);
      dup2(devnull, 2);
      execl(kBinary, kBinary, "-d", "-c", conf.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 100; ++i) {  // up to 5 s
      if (Accepts(port_)) {
        pid_ = pid;
        return;
      }
      if (waitpid(pid, nullptr, WNOHANG) == pid) return;  // port taken meanwhile: retry
      std::this_thread::sleep_for(50ms);
    }
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
  }

  fs::path dir_;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

#define REQUIRE_TINYPROXY()                                                              \
  if (!Tinyproxy::Installed()) {                                                         \
    GTEST_SKIP() << Tinyproxy::kBinary << " is not installed (scripts/deps.sh does it)"; \
  }

class ProxyTest : public TlsVerificationTest {
 protected:
  // A TLS server on 127.0.0.1 that records the targets it was asked for.
  void ServeRecording() {
    ca_ = MakeCert(dir_, "hub", "IP:127.0.0.1");
    http::ServerOptions options;
    options.tls_cert_file = ca_;
    options.tls_key_file = Key(dir_, "hub");
    auto server = http::Server::Create(options, [this](http::Request&& request, http::Responder r) {
      {
        std::lock_guard lock(mu_);
        auto target = request.target();
        auto via = request[boost::beast::http::field::via];
        targets_.emplace_back(target.data(), target.size());
        vias_.emplace_back(via.data(), via.size());
      }
      r.Send(http::JsonResponse(request, http::Status::ok, "{\"through\":\"tunnel\"}"));
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    server_->Start();
  }
  std::string ca_;
  std::mutex mu_;
  std::vector<std::string> targets_;
  std::vector<std::string> vias_;
};

// https:// through a proxy: one CONNECT per connection (kept alive across
// exchanges), TLS with the target end to end (the proxy never sees the
// request), the target's certificate checked as without a proxy.
TEST_F(ProxyTest, HttpsGoesThroughAConnectTunnelThatIsKeptAlive) {
  REQUIRE_TINYPROXY();
  Tinyproxy proxy;
  ASSERT_TRUE(proxy.running());
  ServeRecording();
  auto url = ParseHttpUrl(StrCat("https://127.0.0.1:", server_->port(), "/secret-path?x=1"));
  auto connection = HttpConnection::Create({.ca_file = ca_, .proxy = proxy.Proxy()});
  for (int i = 0; i < 3; ++i) {
    Collected got;
    absl::Status status = connection->Exchange({.url = &*url}, got);
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(got.status, 200);
    EXPECT_EQ(got.body, "{\"through\":\"tunnel\"}");
  }
  EXPECT_EQ(proxy.Count(StrCat("CONNECT 127.0.0.1:", server_->port())), 1) << proxy.Log();
  EXPECT_EQ(proxy.Count("secret-path"), 0) << proxy.Log();
  {
    std::lock_guard lock(mu_);
    EXPECT_EQ(targets_, std::vector<std::string>(3, "/secret-path?x=1"));
    // The proxy could not add its Via header inside the tunnel.
    EXPECT_EQ(vias_, std::vector<std::string>(3, ""));
  }
  // The target's name is still verified through the tunnel.
  auto by_name = ParseHttpUrl(StrCat("https://localhost:", server_->port(), "/"));
  Collected refused;
  absl::Status mismatch = connection->Exchange({.url = &*by_name}, refused);
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kFailedPrecondition) << mismatch;
}

TEST_F(ProxyTest, TlsSessionsAreResumedThroughTheTunnel) {
  REQUIRE_TINYPROXY();
  Tinyproxy proxy;
  ASSERT_TRUE(proxy.running());
  std::string ca = MakeCert(dir_, "hub", "IP:127.0.0.1");
  ResumptionServer server(ca, Key(dir_, "hub"));
  auto url = ParseHttpUrl(StrCat("https://127.0.0.1:", server.port(), "/"));
  auto connection = HttpConnection::Create({.ca_file = ca, .proxy = proxy.Proxy()});
  for (int i = 0; i < 3; ++i) {
    Collected got;
    absl::Status status = connection->Exchange({.url = &*url}, got);
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(got.body, "ok");
  }
  EXPECT_EQ(server.resumed(), (std::vector<bool>{false, true, true}));
  // The server closes each connection: a tunnel each time.
  EXPECT_EQ(proxy.Count(StrCat("CONNECT 127.0.0.1:", server.port())), 3) << proxy.Log();
}

// http:// through a proxy: absolute-form request targets, which the proxy
// forwards (adding its Via header).
TEST_F(ProxyTest, HttpGoesThroughTheProxyInAbsoluteForm) {
  REQUIRE_TINYPROXY();
  Tinyproxy proxy;
  ASSERT_TRUE(proxy.running());
  std::vector<std::string> vias;
  auto server = http::Server::Create({}, [&](http::Request&& request, http::Responder r) {
    auto via = request[boost::beast::http::field::via];
    vias.emplace_back(via.data(), via.size());
    std::string target(request.target().data(), request.target().size());
    r.Send(http::JsonResponse(request, http::Status::ok, StrCat("\"", target, "\"")));
  });
  ASSERT_TRUE(server.ok());
  (*server)->Start();
  auto client = HttpClient::Create({.proxy = proxy.Proxy()});
  ASSERT_TRUE(client.ok());
  std::string url = StrCat("http://127.0.0.1:", (*server)->port(), "/v1/state?etag=7");
  for (int i = 0; i < 2; ++i) {
    auto response = (*client)->Send({.url = url});
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->status, 200);
    EXPECT_EQ(response->body, "\"/v1/state?etag=7\"");
  }
  (*server)->Stop();
  ASSERT_EQ(vias.size(), 2u);
  EXPECT_NE(vias[0].find("tinyproxy"), std::string::npos) << vias[0];
  EXPECT_EQ(proxy.Count(StrCat("GET ", url, " HTTP/1.1")), 2) << proxy.Log();
}

// The exact bytes sent to a proxy, and what its refusals become.
TEST(ProxyRequestTest, ConnectAndAbsoluteFormCarryTheCredentials) {
  ScriptedServer proxy([](int, int, const std::string& request) {
    if (request.starts_with("CONNECT ")) {
      return std::string("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n");
    }
    return Ok("via proxy");
  });
  auto parsed =
      ParseProxyUrl(StrCat("http://Aladdin:open%20sesame@127.0.0.1:", proxy.port()), "https_proxy");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto connection = HttpConnection::Create({.proxy = *parsed});

  auto plain = ParseHttpUrl("http://hub.example:8080/v1/x?y=1");
  Collected got;
  ASSERT_TRUE(connection->Exchange({.url = &*plain}, got).ok());
  EXPECT_EQ(got.body, "via proxy");

  auto tls = ParseHttpUrl("https://[fd00::7]:8443/v1/x");
  Collected refused;
  absl::Status status = connection->Exchange({.url = &*tls}, refused);
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_NE(MessageOf(status).find("refused the tunnel to [fd00::7]:8443: HTTP/1.1 407 Proxy "
                                   "Authentication Required: proxy authentication failed"),
            std::string::npos)
      << status;
  EXPECT_NE(MessageOf(status).find("(from https_proxy)"), std::string::npos) << status;

  auto requests = proxy.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0],
            "GET http://hub.example:8080/v1/x?y=1 HTTP/1.1\r\nHost: hub.example:8080\r\n"
            "Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n");
  EXPECT_EQ(requests[1],
            "CONNECT [fd00::7]:8443 HTTP/1.1\r\nHost: [fd00::7]:8443\r\n"
            "Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n");
}

TEST(ProxyRequestTest, RefusalsUnreachableAndSilentProxiesEndClearlyAndInTime) {
  auto tls = ParseHttpUrl("https://hub.example:8443/");
  {
    ScriptedServer gateway([](int, int, const std::string&) {
      return std::string("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad");
    });
    auto connection =
        HttpConnection::Create({.proxy = HttpProxy{.host = "127.0.0.1", .port = gateway.port()}});
    Collected got;
    absl::Status status = connection->Exchange({.url = &*tls}, got);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
    EXPECT_NE(MessageOf(status).find("refused the tunnel to hub.example:8443: HTTP/1.1 502 Bad "
                                     "Gateway"),
              std::string::npos)
        << status;
    ScriptedServer needs_auth([](int, int, const std::string&) {
      return std::string("HTTP/1.0 407 Proxy Authentication Required\r\n\r\n");
    });
    status =
        HttpConnection::Create({.proxy = HttpProxy{.host = "127.0.0.1", .port = needs_auth.port()}})
            ->Exchange({.url = &*tls}, got);
    EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
    EXPECT_NE(MessageOf(status).find("proxy authentication is required"), std::string::npos)
        << status;
  }
  {
    // Nothing listens there: refused at once.
    HttpProxy nobody{.host = "127.0.0.1", .port = FreePort(), .source = "HTTPS_PROXY"};
    Collected got;
    absl::Status status = HttpConnection::Create({.proxy = nobody})->Exchange({.url = &*tls}, got);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
    EXPECT_NE(MessageOf(status).find(StrCat("cannot connect to the proxy 127.0.0.1:", nobody.port,
                                            " (from HTTPS_PROXY) to reach hub.example:8443")),
              std::string::npos)
        << status;
  }
  {
    // A proxy that takes the CONNECT and never answers: the connect timeout
    // covers the exchange.
    ScriptedServer silent([](int, int, const std::string&) { return std::string("STALL"); });
    auto connection = HttpConnection::Create(
        {.connect_timeout = 300ms, .proxy = HttpProxy{.host = "127.0.0.1", .port = silent.port()}});
    Collected got;
    auto start = std::chrono::steady_clock::now();
    absl::Status status = connection->Exchange({.url = &*tls}, got);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
    EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
    EXPECT_NE(MessageOf(status).find("through the proxy 127.0.0.1:"), std::string::npos) << status;
  }
}

// An IPv4 address of this machine that is not loopback, or "".
std::string NonLoopbackIpv4() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string found;
  for (ifaddrs* it = list; it != nullptr && found.empty(); it = it->ifa_next) {
    if (it->ifa_addr == nullptr || it->ifa_addr->sa_family != AF_INET) continue;
    char text[INET_ADDRSTRLEN];
    auto* in = reinterpret_cast<sockaddr_in*>(it->ifa_addr);
    if (inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text)) && !IsLoopbackHost(text)) {
      found = text;
    }
  }
  freeifaddrs(list);
  return found;
}

// Tests of the default path (the proxy variables); restores them after.
class ProxyEnvironmentConnectionTest : public ::testing::Test {
 protected:
  ScopedProxyEnvironment environment_;
  // GET `url` on a new connection (the variables are read per target).
  static absl::StatusOr<std::string> Get(const std::string& url) {
    auto parsed = ParseHttpUrl(url);
    if (!parsed.ok()) return parsed.status();
    Collected got;
    RETURN_IF_ERROR(HttpConnection::Create({})->Exchange({.url = &*parsed}, got));
    return got.body;
  }
};

TEST_F(ProxyEnvironmentConnectionTest, NoProxyAndLoopbackGoDirectEverythingElseThroughTheProxy) {
  const std::string ip = NonLoopbackIpv4();
  if (ip.empty()) GTEST_SKIP() << "this machine has no non-loopback IPv4 address";
  auto remote = http::Server::Create(
      {.address = ip, .allow_insecure = true}, [](http::Request&& request, http::Responder r) {
        r.Send(http::JsonResponse(request, http::Status::ok, "\"direct\""));
      });
  ASSERT_TRUE(remote.ok()) << remote.status();
  (*remote)->Start();
  auto local = http::Server::Create({}, [](http::Request&& request, http::Responder r) {
    r.Send(http::JsonResponse(request, http::Status::ok, "\"local\""));
  });
  ASSERT_TRUE(local.ok());
  (*local)->Start();
  // A proxy that answers every request itself.
  ScriptedServer proxy([](int, int, const std::string&) { return Ok("\"proxied\""); });
  const std::string remote_url = StrCat("http://", ip, ":", (*remote)->port(), "/");
  const std::string local_url = StrCat("http://127.0.0.1:", (*local)->port(), "/");

  EXPECT_EQ(Get(remote_url).value_or("error"), "\"direct\"");  // no variables
  setenv("HTTP_PROXY", StrCat("http://127.0.0.1:", proxy.port()).c_str(), 1);
  EXPECT_EQ(Get(remote_url).value_or("error"), "\"proxied\"");
  EXPECT_EQ(Get(local_url).value_or("error"), "\"local\"");  // loopback: always direct
  {
    // An explicit proxy with no host: direct, whatever the environment says.
    auto url = ParseHttpUrl(remote_url);
    Collected got;
    ASSERT_TRUE(HttpConnection::Create({.proxy = HttpProxy{}})->Exchange({.url = &*url}, got).ok());
    EXPECT_EQ(got.body, "\"direct\"");
  }
  EXPECT_EQ(Get(StrCat("http://localhost:", (*local)->port(), "/")).value_or("error"), "\"local\"");
  setenv("NO_PROXY", StrCat("example.org, ", ip).c_str(), 1);
  EXPECT_EQ(Get(remote_url).value_or("error"), "\"direct\"");
  setenv("no_proxy", "example.org", 1);  // lowercase wins
  EXPECT_EQ(Get(remote_url).value_or("error"), "\"proxied\"");
  setenv("no_proxy", StrCat(ip, "/24").c_str(), 1);
  EXPECT_EQ(Get(remote_url).value_or("error"), "\"direct\"");
  EXPECT_EQ(proxy.requests().size(), 2u);

  // A malformed variable fails the requests it applies to, naming it.
  unsetenv("no_proxy");
  unsetenv("NO_PROXY");
  setenv("http_proxy", "socks5://127.0.0.1:1080", 1);
  auto bad = Get(remote_url);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_NE(MessageOf(bad.status()).find("http_proxy='socks5://127.0.0.1:1080'"), std::string::npos)
      << bad.status();
  auto client = HttpClient::Create({});
  ASSERT_TRUE(client.ok());
  auto via_client = (*client)->Send({.url = remote_url});
  EXPECT_EQ(via_client.status().code(), absl::StatusCode::kInvalidArgument) << via_client.status();
  EXPECT_EQ(Get(local_url).value_or("error"), "\"local\"");
  (*remote)->Stop();
  (*local)->Stop();
}

// The default path end to end: HttpClient reads https_proxy and reaches a
// TLS server on this machine's own address through tinyproxy's tunnel.
TEST_F(ProxyEnvironmentConnectionTest, HttpClientUsesHttpsProxyFromTheEnvironment) {
  REQUIRE_TINYPROXY();
  const std::string ip = NonLoopbackIpv4();
  if (ip.empty()) GTEST_SKIP() << "this machine has no non-loopback IPv4 address";
  char dir_template[] = "/tmp/http_proxy_env_XXXXXX";
  fs::path dir = mkdtemp(dir_template);
  std::string ca = MakeCert(dir, "hub", StrCat("IP:", ip));
  http::ServerOptions options;
  options.address = ip;
  options.tls_cert_file = ca;
  options.tls_key_file = Key(dir, "hub");
  auto server = http::Server::Create(options, [](http::Request&& request, http::Responder r) {
    r.Send(http::JsonResponse(request, http::Status::ok, "{\"hub\":true}"));
  });
  ASSERT_TRUE(server.ok()) << server.status();
  (*server)->Start();
  Tinyproxy proxy("device s3cret");
  ASSERT_TRUE(proxy.running());
  const std::string url = StrCat("https://", ip, ":", (*server)->port(), "/v1/devices/state");

  setenv("https_proxy", StrCat("http://127.0.0.1:", proxy.port()).c_str(), 1);
  auto client = HttpClient::Create({.ca_file = ca});
  ASSERT_TRUE(client.ok());
  auto refused = (*client)->Send({.url = url});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << refused.status();
  EXPECT_NE(MessageOf(refused.status()).find("407"), std::string::npos) << refused.status();
  EXPECT_NE(MessageOf(refused.status()).find("proxy authentication is required"), std::string::npos)
      << refused.status();

  setenv("https_proxy", StrCat("http://device:wrong@127.0.0.1:", proxy.port()).c_str(), 1);
  client = HttpClient::Create({.ca_file = ca});
  ASSERT_TRUE(client.ok());
  auto wrong = (*client)->Send({.url = url});
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kPermissionDenied) << wrong.status();
  EXPECT_NE(MessageOf(wrong.status()).find("proxy authentication failed"), std::string::npos)
      << wrong.status();
  EXPECT_EQ(MessageOf(wrong.status()).find("wrong"), std::string::npos) << wrong.status();

  setenv("https_proxy", StrCat("http://device:s3cret@127.0.0.1:", proxy.port()).c_str(), 1);
  client = HttpClient::Create({.ca_file = ca});
  ASSERT_TRUE(client.ok());
  for (int i = 0; i < 2; ++i) {
    auto response = (*client)->Send({.url = url});
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->status, 200);
    EXPECT_EQ(response->body, "{\"hub\":true}");
  }
  EXPECT_EQ(proxy.Count(StrCat("CONNECT ", ip, ":", (*server)->port())), 3) << proxy.Log();
  (*server)->Stop();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace outpost
