#include "agent/fetcher.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <thread>

#include "common/atomic_file.h"
#include "common/http_server.h"

namespace outpost::agent {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

std::string MakeData(size_t size) {
  std::mt19937 rng(42);
  std::string data(size, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  return data;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(digest, reinterpret_cast<const unsigned char*>(data.data()), data.size());
  char hex[2 * sizeof(digest) + 1];
  sodium_bin2hex(hex, sizeof(hex), digest, sizeof(digest));
  return hex;
}

// A deliberately misbehaving HTTP/1.1 file server on raw sockets: it can cut
// or stall a body half-way (Content-Length larger than what it sends), ignore
// Range, corrupt a byte, send extra bytes, answer errors. One connection at a
// time, "Connection: close" on every response.
class RawServer {
 public:
  struct Behavior {
    bool honor_range = true;
    int cut_first = 0;  // the first N file responses stop after `cut_after` body bytes
    size_t cut_after = 0;
    bool stall = false;       // at the cut, hold the connection open instead of closing
    int status = 200;         // anything else: an error response
    std::string retry_after;  // with an error status
    size_t extra_bytes = 0;   // send (and announce) this many bytes past the file
    bool send_length = true;  // false: close-delimited body
    long corrupt_at = -1;     // flip this byte of the file
    std::string token;        // require "Authorization: Bearer <token>"
  };

  explicit RawServer(std::string data) : data_(std::move(data)) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    EXPECT_EQ(bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(listen_fd_, 16), 0);
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    EXPECT_EQ(pipe2(stop_pipe_, O_CLOEXEC), 0);
    thread_ = std::thread([this] { Loop(); });
  }

  ~RawServer() { Stop(); }

  void Stop() {
    if (!thread_.joinable()) return;
    char c = 'x';
    EXPECT_EQ(write(stop_pipe_[1], &c, 1), 1);
    thread_.join();
    close(listen_fd_);
    close(stop_pipe_[0]);
    close(stop_pipe_[1]);
  }

  // Replaces the behavior with the defaults as changed by `change`.
  void Set(const std::function<void(Behavior&)>& change) {
    std::lock_guard<std::mutex> lock(mu_);
    behavior_ = Behavior();
    change(behavior_);
  }
  std::string Url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/blob"; }
  uint16_t port() const { return port_; }
  // The Range header of each request so far ("" when absent).
  std::vector<std::string> Ranges() {
    std::lock_guard<std::mutex> lock(mu_);
    return ranges_;
  }

 private:
  void Loop() {
    while (true) {
      pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) continue;
      if (fds[1].revents) return;
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      Serve(fd);
      close(fd);
    }
  }

  static std::string Header(const std::string& request, const std::string& name) {
    std::string lower = request;
    std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
    size_t pos = lower.find("\r\n" + name + ":");
    if (pos == std::string::npos) return "";
    pos += name.size() + 3;
    size_t end = request.find("\r\n", pos);
    std::string value = request.substr(pos, end - pos);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    return value;
  }

  bool SendAll(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  void Serve(int fd) {
    std::string request;
    char buf[4096];
    while (request.find("\r\n\r\n") == std::string::npos) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 5000) <= 0) return;
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return;
      request.append(buf, static_cast<size_t>(n));
    }
    Behavior b;
    bool cut = false;
    std::string range = Header(request, "range");
    {
      std::lock_guard<std::mutex> lock(mu_);
      b = behavior_;
      ranges_.push_back(range);
      if (b.status == 200 && behavior_.cut_first > 0) {
        behavior_.cut_first--;
        cut = true;
      }
    }
    if (!b.token.empty() && Header(request, "authorization") != "Bearer " + b.token) {
      SendAll(fd,
              "HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\nConnection: close\r\n\r\n"
              "bad token :(");
      return;
    }
    if (b.status != 200) {
      std::string body = "status " + std::to_string(b.status);
      std::string head = "HTTP/1.1 " + std::to_string(b.status) +
                         " Error\r\nContent-Length: " + std::to_string(body.size()) +
                         "\r\nConnection: close\r\n";
      if (!b.retry_after.empty()) head += "Retry-After: " + b.retry_after + "\r\n";
      SendAll(fd, head + "\r\n" + body);
      return;
    }
    std::string file = data_ + std::string(b.extra_bytes, 'X');
    if (b.corrupt_at >= 0) file[static_cast<size_t>(b.corrupt_at)] ^= 0x5a;
    size_t start = 0;
    std::string head;
    if (b.honor_range && range.rfind("bytes=", 0) == 0) {
      start = std::stoull(range.substr(6));
      head = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes " + std::to_string(start) + "-" +
             std::to_string(file.size() - 1) + "/" + std::to_string(file.size()) + "\r\n";
    } else {
      head = "HTTP/1.1 200 OK\r\n";
    }
    if (b.send_length) head += "Content-Length: " + std::to_string(file.size() - start) + "\r\n";
    head += "Connection: close\r\n\r\n";
    std::string_view body = std::string_view(file).substr(start);
    if (cut) body = body.substr(0, b.cut_after);
    if (!SendAll(fd, head)) return;
    // Small writes so the client sees many chunks.
    while (!body.empty()) {
      size_t n = std::min<size_t>(body.size(), 16384);
      if (!SendAll(fd, body.substr(0, n))) return;
      body.remove_prefix(n);
    }
    if (cut && b.stall) {
      // Hold the connection until the client gives up (or 10 s).
      pollfd p{fd, POLLIN, 0};
      poll(&p, 1, 10000);
    }
  }

  const std::string data_;
  int listen_fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  uint16_t port_ = 0;
  std::mutex mu_;
  Behavior behavior_;
  std::vector<std::string> ranges_;
  std::thread thread_;
};

class FetcherTest : public ::testing::Test {
 protected:
  static constexpr size_t kSize = 1 << 20;

  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "fetcher_test-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    dest_ = dir_ / "bundle.tar.zst";
    part_ = dir_ / "bundle.tar.zst.part";
    data_ = MakeData(kSize);
    sha_ = Sha256Hex(data_);
    server_ = std::make_unique<RawServer>(data_);
    options_.backoff_base = milliseconds(1);
    options_.backoff_max = milliseconds(20);
    options_.max_retries = 3;
    options_.progress = [this](const FetchProgress& p) {
      if (p.bytes_done < last_done_) progress_went_back_ = true;
      last_done_ = p.bytes_done;
      EXPECT_EQ(p.bytes_total, kSize);
      ++progress_calls_;
    };
  }
  void TearDown() override {
    unsetenv("OUTPOST_FAIL_WRITE_AT");
    fs::remove_all(dir_);
  }

  absl::StatusOr<FetchResult> FetchIt() {
    return Fetch(server_->Url(), dest_, sha_, kSize, options_);
  }
  std::string Read(const fs::path& p) {
    auto content = ReadFile(p);
    return content.ok() ? *content : "<" + std::string(MessageOf(content.status())) + ">";
  }
  void WritePart(std::string_view bytes) { ASSERT_TRUE(WriteFileAtomic(part_, bytes).ok()); }

  fs::path dir_, dest_, part_;
  std::string data_, sha_;
  std::unique_ptr<RawServer> server_;
  FetchOptions options_;
  uint64_t last_done_ = 0;
  bool progress_went_back_ = false;
  int progress_calls_ = 0;
};

TEST_F(FetcherTest, FullDownload) {
  auto result = FetchIt();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(Read(dest_), data_);
  EXPECT_FALSE(fs::exists(part_));
  EXPECT_EQ(result->attempts, 1);
  EXPECT_EQ(result->resumed_from, 0u);
  EXPECT_EQ(result->bytes_received, kSize);
  EXPECT_FALSE(progress_went_back_);
  EXPECT_EQ(last_done_, kSize);
  EXPECT_GT(progress_calls_, 10);
  EXPECT_EQ(server_->Ranges(), std::vector<std::string>{""});
  EXPECT_EQ(*Sha256File(dest_), sha_);
}

TEST_F(FetcherTest, CutTransfersAreRetriedWithRange) {
  server_->Set([](RawServer::Behavior& b) {
    b.cut_first = 2;
    b.cut_after = 300000;
  });
  auto result = FetchIt();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(Read(dest_), data_);
  EXPECT_EQ(result->attempts, 3);
  EXPECT_EQ(result->bytes_received, kSize);  // nothing fetched twice
  EXPECT_EQ(server_->Ranges(), (std::vector<std::string>{"", "bytes=300000-", "bytes=600000-"}));
  EXPECT_FALSE(progress_went_back_);
  EXPECT_EQ(last_done_, kSize);
}

TEST_F(FetcherTest, ResumesInALaterCall) {
  server_->Set([](RawServer::Behavior& b) {
    b.cut_first = 1;
    b.cut_after = 300000;
  });
  options_.max_retries = 0;
  auto first = FetchIt();
  EXPECT_EQ(first.status().code(), absl::StatusCode::kUnavailable) << first.status();
  EXPECT_NE(MessageOf(first.status()).find("gave up after 1 attempts"), std::string_view::npos)
      << first.status();
  EXPECT_FALSE(fs::exists(dest_));
  EXPECT_EQ(fs::file_size(part_), 300000u);

  last_done_ = 0;
  auto second = FetchIt();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->resumed_from, 300000u);
  EXPECT_EQ(second->bytes_received, kSize - 300000);
  EXPECT_EQ(Read(dest_), data_);
  EXPECT_EQ(server_->Ranges().back(), "bytes=300000-");
  EXPECT_FALSE(progress_went_back_);
}

TEST_F(FetcherTest, ResumesAfterTheProcessIsKilledMidDownload) {
  GTEST_FLAG_SET(death_test_style, "fast");  // the child must share this server and directory
  EXPECT_EXIT(
      {
        setenv("OUTPOST_CRASH_AT", "fetch.part_written:5", 1);
        auto ignored = FetchIt();
        _exit(0);
      },
      ::testing::KilledBySignal(SIGKILL), "");
  ASSERT_TRUE(fs::exists(part_));
  uint64_t kept = fs::file_size(part_);
  EXPECT_GT(kept, 0u);
  EXPECT_LT(kept, kSize);
  EXPECT_FALSE(fs::exists(dest_));
  auto result = FetchIt();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->resumed_from, kept);
  EXPECT_EQ(Read(dest_), data_);
}

TEST_F(FetcherTest, ServerIgnoringRangeRestartsFromZero) {
  WritePart(std::string(1000, 'z'));  // even a wrong prefix is simply replaced
  server_->Set([](RawServer::Behavior& b) { b.honor_range = false; });
  auto result = FetchIt();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(Read(dest_), data_);
  EXPECT_EQ(result->attempts, 1);
  EXPECT_EQ(result->bytes_received, kSize);
  EXPECT_EQ(result->resumed_from, 0u);  // the kept prefix was discarded
  EXPECT_EQ(server_->Ranges(), std::vector<std::string>{"bytes=1000-"});
}

TEST_F(FetcherTest, CorruptedByteIsDataLossAndThePartIsRemoved) {
  server_->Set([](RawServer::Behavior& b) { b.corrupt_at = 12345; });
  auto result = FetchIt();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss) << result.status();
  EXPECT_NE(MessageOf(result.status()).find(sha_), std::string_view::npos);
  EXPECT_FALSE(fs::exists(part_));
  EXPECT_FALSE(fs::exists(dest_));
  EXPECT_EQ(server_->Ranges().size(), 1u);
}

TEST_F(FetcherTest, DamagedResumedPrefixIsDownloadedAgainOnce) {
  WritePart(std::string(1000, '\0'));  // a power cut's zero-filled tail
  auto result = FetchIt();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(Read(dest_), data_);
  EXPECT_EQ(server_->Ranges(), (std::vector<std::string>{"bytes=1000-", ""}));
  EXPECT_EQ(result->resumed_from, 0u);
}

TEST_F(FetcherTest, CompletePartIsVerifiedWithoutARequest) {
  WritePart(data_);
  auto result = FetchIt();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->attempts, 0);
  EXPECT_EQ(Read(dest_), data_);
  EXPECT_TRUE(server_->Ranges().empty());
}

TEST_F(FetcherTest, OversizedArtifactIsRefused) {
  server_->Set([](RawServer::Behavior& b) { b.extra_bytes = 100; });
  auto announced = FetchIt();
  EXPECT_EQ(announced.status().code(), absl::StatusCode::kResourceExhausted) << announced.status();
  EXPECT_FALSE(fs::exists(part_));
  EXPECT_FALSE(fs::exists(dest_));

  server_->Set([](RawServer::Behavior& b) {
    b.extra_bytes = 100;
    b.send_length = false;
  });  // only the bytes tell
  auto sent = FetchIt();
  EXPECT_EQ(sent.status().code(), absl::StatusCode::kResourceExhausted) << sent.status();
  EXPECT_NE(MessageOf(sent.status()).find("sent more than"), std::string_view::npos);
  EXPECT_FALSE(fs::exists(part_));
  EXPECT_EQ(server_->Ranges().size(), 2u);  // neither retried
}

TEST_F(FetcherTest, SmallerArtifactIsDataLoss) {
  auto result = Fetch(server_->Url(), dest_, sha_, kSize + 10, FetchOptions{});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss) << result.status();
  EXPECT_FALSE(fs::exists(part_));
}

TEST_F(FetcherTest, HttpErrorsMapToDistinctCodesWithoutRetry) {
  server_->Set([](RawServer::Behavior& b) { b.status = 404; });
  EXPECT_EQ(FetchIt().status().code(), absl::StatusCode::kNotFound);
  server_->Set([](RawServer::Behavior& b) { b.status = 403; });
  EXPECT_EQ(FetchIt().status().code(), absl::StatusCode::kPermissionDenied);
  server_->Set([](RawServer::Behavior& b) { b.token = "s3cret"; });
  auto unauthenticated = FetchIt();
  EXPECT_EQ(unauthenticated.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(MessageOf(unauthenticated.status()).find("HTTP 401"), std::string_view::npos)
      << unauthenticated.status();
  EXPECT_EQ(server_->Ranges().size(), 3u);
  options_.bearer_token = "s3cret";
  auto result = FetchIt();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(Read(dest_), data_);
}

TEST_F(FetcherTest, ServerErrorsAreRetriedThenUnavailable) {
  server_->Set([](RawServer::Behavior& b) {
    b.status = 503;
    b.retry_after = "0";
  });
  options_.max_retries = 2;
  auto result = FetchIt();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  EXPECT_NE(MessageOf(result.status()).find("HTTP 503"), std::string_view::npos);
  EXPECT_EQ(server_->Ranges().size(), 3u);
}

TEST_F(FetcherTest, UnreachableServerIsUnavailableAfterRetries) {
  std::string url = server_->Url();
  server_->Stop();
  server_.reset();  // port closed: connection refused
  options_.max_retries = 2;
  auto start = std::chrono::steady_clock::now();
  auto result = Fetch(url, dest_, sha_, kSize, options_);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  EXPECT_NE(MessageOf(result.status()).find("gave up after 3 attempts"), std::string_view::npos)
      << result.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST_F(FetcherTest, NotEnoughDiskSpaceIsRefusedBeforeDownloading) {
  options_.free_space_fn = [](const fs::path&) -> absl::StatusOr<uint64_t> { return 1000; };
  auto result = FetchIt();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
  EXPECT_NE(MessageOf(result.status()).find("1048576 more bytes"), std::string_view::npos)
      << result.status();
  EXPECT_TRUE(server_->Ranges().empty());

  // Only the remaining bytes must fit.
  WritePart(data_.substr(0, kSize - 500));
  options_.free_space_fn = [](const fs::path&) -> absl::StatusOr<uint64_t> { return 600; };
  auto resumed = FetchIt();
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(Read(dest_), data_);

  // The default asks the real filesystem, which has room for 1 MiB.
  fs::remove(dest_);
  options_.free_space_fn = nullptr;
  options_.reserve_bytes = std::numeric_limits<uint64_t>::max() / 2;
  auto reserved = FetchIt();
  EXPECT_EQ(reserved.status().code(), absl::StatusCode::kResourceExhausted);
  options_.reserve_bytes = 0;
  EXPECT_TRUE(FetchIt().ok());
}

TEST_F(FetcherTest, DiskFullDuringWriteKeepsThePartForLater) {
  setenv("OUTPOST_FAIL_WRITE_AT", "fetch.part_write:3", 1);
  auto result = FetchIt();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
  EXPECT_EQ(server_->Ranges().size(), 1u);  // not retried
  ASSERT_TRUE(fs::exists(part_));
  uint64_t kept = fs::file_size(part_);
  EXPECT_GT(kept, 0u);
  unsetenv("OUTPOST_FAIL_WRITE_AT");
  auto resumed = FetchIt();
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->resumed_from, kept);
  EXPECT_EQ(Read(dest_), data_);
}

TEST_F(FetcherTest, StalledTransferIsAbandonedAndResumed) {
  // curl averages speed over the last ~5 s, so the burst before the stall
  // stays below the limit to keep the test short.
  server_->Set([](RawServer::Behavior& b) {
    b.cut_first = 1;
    b.cut_after = 16384;
    b.stall = true;
  });
  options_.low_speed_bytes_per_second = 20000;
  options_.low_speed_time = std::chrono::seconds(1);
  auto start = std::chrono::steady_clock::now();
  auto result = FetchIt();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(6));
  EXPECT_EQ(result->attempts, 2);
  EXPECT_EQ(server_->Ranges().back(), "bytes=16384-");
  EXPECT_EQ(Read(dest_), data_);
}

TEST_F(FetcherTest, CancelKeepsThePart) {
  options_.cancelled = [this] { return last_done_ >= 100000; };
  auto result = FetchIt();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
  EXPECT_TRUE(fs::exists(part_));
  EXPECT_FALSE(fs::exists(dest_));
}

TEST_F(FetcherTest, ConcurrentFetchOfTheSameDestIsRefused) {
  int fd = open(part_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(flock(fd, LOCK_EX), 0);
  auto result = FetchIt();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();
  close(fd);
  EXPECT_TRUE(FetchIt().ok());
}

TEST_F(FetcherTest, ArgumentsAreValidated) {
  EXPECT_EQ(Fetch(server_->Url(), dest_, "abc", kSize, options_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Fetch(server_->Url(), dest_, std::string(64, 'g'), kSize, options_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Fetch("", dest_, sha_, kSize, options_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Fetch("ftp://127.0.0.1/x", dest_, sha_, kSize, options_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The same protocol through Outpost's own HTTP server (what the hub runs),
// with TLS and a pinned CA.
class HttpServerFetchTest : public FetcherTest {
 protected:
  void SetUp() override {
    FetcherTest::SetUp();
    for (const char* name : {"hub", "other"}) {
      std::string cmd =
          "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
          "-nodes -days 1 -subj /CN=localhost "
          "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
          (dir_ / (std::string(name) + "-key.pem")).string() + " -out " +
          (dir_ / (std::string(name) + "-cert.pem")).string() + " 2>/dev/null";
      ASSERT_EQ(system(cmd.c_str()), 0) << cmd;
    }
    http::ServerOptions server_options;
    server_options.tls_cert_file = (dir_ / "hub-cert.pem").string();
    server_options.tls_key_file = (dir_ / "hub-key.pem").string();
    auto server = http::Server::Create(
        server_options, [this](http::Request&& request, http::Responder responder) {
          namespace bhttp = boost::beast::http;
          http::Response response{bhttp::status::ok, request.version()};
          std::string_view range(request[bhttp::field::range].data(),
                                 request[bhttp::field::range].size());
          size_t start = 0;
          if (range.starts_with("bytes=")) {
            start = std::stoull(std::string(range.substr(6)));
            response.result(bhttp::status::partial_content);
            response.set(bhttp::field::content_range, "bytes " + std::to_string(start) + "-" +
                                                          std::to_string(data_.size() - 1) + "/" +
                                                          std::to_string(data_.size()));
          }
          response.body() = data_.substr(start);
          responder.Send(std::move(response));
        });
    ASSERT_TRUE(server.ok()) << server.status();
    https_ = std::move(*server);
    https_->Start();
    url_ = "https://localhost:" + std::to_string(https_->port()) + "/v1/artifacts/" + sha_;
  }

  std::unique_ptr<http::Server> https_;
  std::string url_;
};

TEST_F(HttpServerFetchTest, DownloadsAndResumesOverTlsWithThePinnedCa) {
  WritePart(data_.substr(0, 4321));
  options_.ca_file = (dir_ / "hub-cert.pem").string();
  auto result = Fetch(url_, dest_, sha_, kSize, options_);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->resumed_from, 4321u);
  EXPECT_EQ(result->bytes_received, kSize - 4321);
  EXPECT_EQ(Read(dest_), data_);
}

TEST_F(HttpServerFetchTest, AnotherCaIsRefusedWithoutRetry) {
  options_.ca_file = (dir_ / "other-cert.pem").string();
  auto result = Fetch(url_, dest_, sha_, kSize, options_);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();
  EXPECT_EQ(result.status().message().find("gave up"), absl::string_view::npos);
  EXPECT_FALSE(fs::exists(dest_));
}

}  // namespace
}  // namespace outpost::agent
