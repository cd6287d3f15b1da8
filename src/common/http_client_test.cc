#include "common/http_client.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/http_server.h"
#include "common/tls_pki.h"

namespace outpost {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A real server that echoes what it received as JSON headers of its answer.
class HttpClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/http_client_test_XXXXXX";
    dir_ = mkdtemp(dir_template);
  }
  void TearDown() override {
    if (server_) server_->Stop();
    for (std::thread& t : slow_) t.join();
    fs::remove_all(dir_);
  }

  void Start(bool tls) {
    http::ServerOptions options;
    if (tls) {
      auto pki = pki::EnsureServerPki(dir_ / "pki", {});
      ASSERT_TRUE(pki.ok()) << pki.status();
      options.tls_cert_file = pki->server_cert;
      options.tls_key_file = pki->server_key;
      ca_file_ = pki->ca_cert;
    }
    auto server =
        http::Server::Create(options, [this](http::Request&& request, http::Responder responder) {
          std::string target(request.target());
          if (target == "/slow") {
            std::lock_guard lock(mu_);
            slow_.emplace_back([r = std::move(responder), req = std::move(request)]() mutable {
              std::this_thread::sleep_for(1500ms);
              r.Send(http::JsonResponse(req, http::Status::ok, "{}"));
            });
            return;
          }
          if (target == "/missing") {
            responder.Send(http::ErrorResponse(request, http::Status::not_found, "no such thing"));
            return;
          }
          http::Response response = http::JsonResponse(request, http::Status::ok, request.body());
          response.set("X-Method", std::string(request.method_string()));
          response.set("X-Auth", std::string(request[boost::beast::http::field::authorization]));
          response.set("X-Type", std::string(request[boost::beast::http::field::content_type]));
          response.set("X-Custom", std::string(request["X-Custom"]));
          responder.Send(std::move(response));
        });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    server_->Start();
    base_ = StrCat(tls ? "https" : "http", "://127.0.0.1:", server_->port());
  }

  fs::path dir_;
  std::unique_ptr<http::Server> server_;
  std::string base_;
  std::string ca_file_;
  std::mutex mu_;
  std::vector<std::thread> slow_;
};

TEST_F(HttpClientTest, PostsBodyWithTokenHeadersAndReadsTheAnswer) {
  Start(/*tls=*/false);
  auto client = HttpClient::Create({.bearer_token = "secret-1"});
  ASSERT_TRUE(client.ok());
  HttpRequest request{.method = "POST",
                      .url = base_ + "/echo",
                      .body = R"({"a":1})",
                      .content_type = "application/json",
                      .headers = {{"X-Custom", "yes"}}};
  auto response = (*client)->Send(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, R"({"a":1})");
  EXPECT_EQ(response->Header("x-method"), "POST");
  EXPECT_EQ(response->Header("x-auth"), "Bearer secret-1");
  EXPECT_EQ(response->Header("x-type"), "application/json");
  EXPECT_EQ(response->Header("x-custom"), "yes");
  EXPECT_EQ(response->Header("absent"), "");

  // The same client again (kept-alive connection), another verb, new token.
  (*client)->set_bearer_token("secret-2");
  auto del = (*client)->Send({.method = "DELETE", .url = base_ + "/echo"});
  ASSERT_TRUE(del.ok()) << del.status();
  EXPECT_EQ(del->Header("x-method"), "DELETE");
  EXPECT_EQ(del->Header("x-auth"), "Bearer secret-2");
}

TEST_F(HttpClientTest, StreamsABodyFromAFileAndReportsUploadProgress) {
  Start(/*tls=*/false);
  auto client = HttpClient::Create({});
  ASSERT_TRUE(client.ok());
  std::string content(2 * 1024 * 1024 + 5, '\0');
  for (size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>('a' + i % 26);
  fs::path file = dir_ / "upload.bin";
  {
    std::FILE* f = std::fopen(file.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fwrite(content.data(), 1, content.size(), f), content.size());
    std::fclose(f);
  }
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  auto response = (*client)->Send(
      {.method = "POST",
       .url = base_ + "/echo",
       .content_type = "application/octet-stream",
       .body_file = file.string(),
       .upload_progress = [&](uint64_t sent, uint64_t total) { calls.emplace_back(sent, total); }});
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->Header("x-method"), "POST");
  EXPECT_TRUE(response->body == content);
  ASSERT_FALSE(calls.empty());
  EXPECT_EQ(calls.back().first, content.size());
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].second, content.size());
    if (i > 0) {
      EXPECT_GE(calls[i].first, calls[i - 1].first);
    }
  }

  auto missing = (*client)->Send(
      {.method = "POST", .url = base_ + "/echo", .body_file = (dir_ / "nope").string()});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
  EXPECT_NE(MessageOf(missing.status()).find("nope"), std::string_view::npos);
}

TEST_F(HttpClientTest, HttpErrorsAreResponsesAndMapToStatusCodes) {
  Start(/*tls=*/false);
  auto client = HttpClient::Create({});
  ASSERT_TRUE(client.ok());
  auto response = (*client)->Send({.url = base_ + "/missing"});
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 404);
  EXPECT_EQ(response->ErrorMessage(), "no such thing");
  absl::Status status = HttpErrorStatus(*response, "get thing");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(MessageOf(status), "get thing: HTTP 404 no such thing");

  HttpResponse unauthorized{.status = 401, .body = "plain text"};
  EXPECT_EQ(HttpErrorStatus(unauthorized, "x").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(unauthorized.ErrorMessage(), "plain text");
  EXPECT_EQ(HttpErrorStatus({.status = 503}, "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(HttpErrorStatus({.status = 429}, "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(HttpErrorStatus({.status = 403}, "x").code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(HttpClientTest, TlsWithThePinnedCaWorksAndWithAnotherCaIsRefused) {
  Start(/*tls=*/true);
  auto client = HttpClient::Create({.ca_file = ca_file_});
  ASSERT_TRUE(client.ok());
  auto response = (*client)->Send({.url = base_ + "/echo"});
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);

  auto other = pki::EnsureServerPki(dir_ / "other", {});
  ASSERT_TRUE(other.ok());
  auto wrong = HttpClient::Create({.ca_file = other->ca_cert});
  ASSERT_TRUE(wrong.ok());
  auto refused = (*wrong)->Send({.url = base_ + "/echo"});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
}

TEST_F(HttpClientTest, TimeoutRefusedConnectionAndBadUrlAreDistinctErrors) {
  Start(/*tls=*/false);
  auto client = HttpClient::Create({.timeout = 300ms});
  ASSERT_TRUE(client.ok());
  auto slow = (*client)->Send({.url = base_ + "/slow"});
  ASSERT_FALSE(slow.ok());
  EXPECT_EQ(slow.status().code(), absl::StatusCode::kDeadlineExceeded) << slow.status();
  // A per-request timeout overrides the client's (long polls).
  auto patient = (*client)->Send({.url = base_ + "/slow", .timeout = 5000ms});
  ASSERT_TRUE(patient.ok()) << patient.status();
  EXPECT_EQ(patient->status, 200);

  uint16_t port = server_->port();
  server_->Stop();
  auto refused = (*client)->Send({.url = StrCat("http://127.0.0.1:", port, "/echo")});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();

  auto bad = (*client)->Send({.url = "ftp://127.0.0.1/x"});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

// The server side of artifact downloads: a file range streamed from disk.
TEST(HttpServerFileTest, SendFileStreamsTheRangeAndKeepsTheConnection) {
  char path_template[] = "/tmp/http_file_test_XXXXXX";
  int fd = mkstemp(path_template);
  ASSERT_GE(fd, 0);
  std::string content(3 * 1024 * 1024 + 17, '\0');
  for (size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>(i * 31 % 251);
  ASSERT_EQ(write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
  close(fd);
  const std::string path = path_template;
  auto server = http::Server::Create({}, [&](http::Request&& request, http::Responder responder) {
    int file = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    uint64_t offset = request.target() == "/range" ? 1000 : 0;
    uint64_t length = request.target() == "/range" ? 2 * 1024 * 1024 : content.size();
    http::Response header{http::Status::ok, request.version()};
    header.set(boost::beast::http::field::content_type, "application/octet-stream");
    responder.SendFile(std::move(header), http::FileBody(file, offset, length));
  });
  ASSERT_TRUE(server.ok()) << server.status();
  (*server)->Start();
  std::string base = StrCat("http://127.0.0.1:", (*server)->port());
  auto client = HttpClient::Create({});
  ASSERT_TRUE(client.ok());
  auto range = (*client)->Send({.url = base + "/range"});
  ASSERT_TRUE(range.ok()) << range.status();
  EXPECT_EQ(range->status, 200);
  EXPECT_EQ(range->Header("content-length"), StrCat(2 * 1024 * 1024));
  EXPECT_TRUE(range->body == content.substr(1000, 2 * 1024 * 1024));
  auto whole = (*client)->Send({.url = base + "/whole"});
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_TRUE(whole->body == content);
  (*server)->Stop();
  unlink(path.c_str());
}

}  // namespace
}  // namespace outpost
