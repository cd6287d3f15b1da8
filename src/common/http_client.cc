#include "common/http_client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <nlohmann/json.hpp>

namespace outpost {
namespace {

// Collects the response into an HttpResponse.
class Collect : public HttpResponseHandler {
 public:
  explicit Collect(HttpResponse* response) : response_(response) {}
  absl::Status OnHead(int status, const HttpHeaderList& headers) override {
    response_->status = status;
    response_->headers = headers;
    return absl::OkStatus();
  }
  absl::Status OnBody(std::string_view data) override {
    response_->body.append(data);
    return absl::OkStatus();
  }

 private:
  HttpResponse* response_;
};

struct FdCloser {
  int fd = -1;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::string_view HttpResponse::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (key == name) return value;
  }
  return {};
}

std::string HttpResponse::ErrorMessage() const {
  auto parsed = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_object() && parsed.contains("error") && parsed["error"].is_string()) {
    return parsed["error"].get<std::string>();
  }
  constexpr size_t kClip = 200;
  return body.size() <= kClip ? body : StrCat(body.substr(0, kClip), "...");
}

absl::Status HttpErrorStatus(const HttpResponse& response, std::string_view context) {
  std::string message = StrCat(context, ": HTTP ", response.status, " ", response.ErrorMessage());
  switch (response.status) {
    case 400:
    case 413:
    case 422:
      return absl::InvalidArgumentError(message);
    case 401:
      return absl::UnauthenticatedError(message);
    case 403:
      return absl::PermissionDeniedError(message);
    case 404:
    case 410:
      return absl::NotFoundError(message);
    case 409:
      return absl::AlreadyExistsError(message);
    case 412:
      return absl::FailedPreconditionError(message);
    case 408:
    case 429:
      return absl::UnavailableError(message);
    default:
      if (response.status >= 500) return absl::UnavailableError(message);
      return absl::UnknownError(message);
  }
}

absl::StatusOr<std::unique_ptr<HttpClient>> HttpClient::Create(HttpClientOptions options) {
  auto connection = HttpConnection::Create({.ca_file = options.ca_file,
                                            .connect_timeout = options.connect_timeout,
                                            .proxy = options.proxy});
  return std::unique_ptr<HttpClient>(new HttpClient(std::move(options), std::move(connection)));
}

HttpClient::HttpClient(HttpClientOptions options, std::unique_ptr<HttpConnection> connection)
    : options_(std::move(options)), connection_(std::move(connection)) {}

HttpClient::~HttpClient() = default;

absl::StatusOr<HttpResponse> HttpClient::Send(const HttpRequest& request) {
  ASSIGN_OR_RETURN(ParsedUrl url, ParseHttpUrl(request.url));
  std::vector<std::pair<std::string, std::string>> headers;
  headers.reserve(request.headers.size() + 3);
  headers.emplace_back("User-Agent", options_.user_agent);
  if (!options_.bearer_token.empty()) {
    headers.emplace_back("Authorization", StrCat("Bearer ", options_.bearer_token));
  }
  headers.insert(headers.end(), request.headers.begin(), request.headers.end());
  FdCloser body_file;
  uint64_t body_size = request.body.size();
  if (!request.body_file.empty()) {
    body_file.fd = ::open(request.body_file.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (body_file.fd < 0 || ::fstat(body_file.fd, &st) != 0) {
      return absl::ErrnoToStatus(errno, StrCat("cannot read ", request.body_file));
    }
    body_size = static_cast<uint64_t>(st.st_size);
  }
  const bool has_body = !request.body.empty() || body_file.fd >= 0 || request.method == "POST" ||
                        request.method == "PUT";
  if (has_body && !request.content_type.empty()) {
    headers.emplace_back("Content-Type", request.content_type);
  }
  HttpExchange exchange{
      .method = request.method,
      .url = &url,
      .headers = &headers,
      .body = request.body,
      .body_fd = body_file.fd,
      .body_fd_size = body_size,
      .upload_progress = request.upload_progress ? &request.upload_progress : nullptr,
      .deadline = std::chrono::steady_clock::now() + request.timeout.value_or(options_.timeout),
  };
  HttpResponse response;
  Collect collect(&response);
  absl::Status status = connection_->Exchange(exchange, collect);
  if (!status.ok()) {
    std::string message = StrCat(request.method, " ", request.url, ": ", MessageOf(status));
    switch (status.code()) {
      case absl::StatusCode::kFailedPrecondition:
        return absl::FailedPreconditionError(StrCat(message, " (is the hub's CA the pinned one?)"));
      case absl::StatusCode::kInvalidArgument:
      case absl::StatusCode::kDeadlineExceeded:
      case absl::StatusCode::kNotFound:
      case absl::StatusCode::kPermissionDenied:
        return absl::Status(status.code(), message);
      default:
        return absl::UnavailableError(message);
    }
  }
  return response;
}

}  // namespace outpost
