#include "cli/hub_api.h"

#include <cctype>
#include <charconv>
#include <chrono>

#include "absl/strings/cord.h"

namespace outpost::cli {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

constexpr std::string_view kAdminBase = "/api/v1/admin";
// Marks an error the hub answered; the payload is its HTTP status.
constexpr char kHubStatusUrl[] = "outpost.dev/cli/hub-http-status";

int64_t LocalNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string_view ReasonPhrase(long status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 409:
      return "Conflict";
    case 410:
      return "Gone";
    case 412:
      return "Precondition Failed";
    case 413:
      return "Payload Too Large";
    case 422:
      return "Unprocessable Entity";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "";
  }
}

// An HTTP error answer as a status carrying the hub's own message.
absl::Status HubRefusal(const HttpResponse& response) {
  absl::Status base = HttpErrorStatus(response, "hub");
  std::string phrase(ReasonPhrase(response.status));
  std::string message = StrCat("the hub answered ", response.status, phrase.empty() ? "" : " ",
                               phrase, ": ", response.ErrorMessage());
  if (response.status == 401) {
    StrAppend(&message, " (check --token or OUTPOST_HUB_TOKEN)");
  }
  absl::Status status(
      response.status >= 300 && response.status < 400 ? absl::StatusCode::kUnknown : base.code(),
      message);
  std::string code = StrCat(response.status);
  status.SetPayload(kHubStatusUrl, absl::Cord(absl::string_view(code.data(), code.size())));
  return status;
}

// A transport error: the hub was not reached (or not trusted).
absl::Status Unreachable(const absl::Status& status, const std::string& url) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kFailedPrecondition:  // TLS verification
      break;
    default:
      return status;  // a malformed URL, an unreadable upload file
  }
  std::string message = StrCat("cannot reach the hub at ", url, ": ", MessageOf(status));
  if (status.code() == absl::StatusCode::kFailedPrecondition) {
    StrAppend(&message, " (pass the hub's CA with --ca-file or OUTPOST_HUB_CA)");
  }
  if (status.code() == absl::StatusCode::kDeadlineExceeded) {
    return absl::DeadlineExceededError(message);
  }
  return absl::UnavailableError(message);
}

absl::StatusOr<json> ParseAnswer(const HttpResponse& response, std::string_view what) {
  if (response.body.empty()) return json::object();
  json parsed = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InternalError(
        StrCat(what, ": the hub's answer is not JSON: ", response.body.substr(0, 200)));
  }
  return parsed;
}

}  // namespace

int HubHttpStatusOf(const absl::Status& status) {
  if (status.ok()) return 0;
  auto payload = status.GetPayload(kHubStatusUrl);
  if (!payload.has_value()) return 0;
  std::string text(*payload);
  int code = 0;
  std::from_chars(text.data(), text.data() + text.size(), code);
  return code;
}

std::string UrlEscape(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string QueryString(const std::vector<std::pair<std::string, std::string>>& pairs) {
  std::string out;
  for (const auto& [key, value] : pairs) {
    if (value.empty()) continue;
    StrAppend(&out, out.empty() ? "?" : "&", UrlEscape(key), "=", UrlEscape(value));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<HubApi>> HubApi::Create(HubConnection connection) {
  while (!connection.url.empty() && connection.url.back() == '/') connection.url.pop_back();
  if (!connection.url.starts_with("https://") && !connection.url.starts_with("http://")) {
    return absl::InvalidArgumentError(
        StrCat("hub URL '", connection.url, "' is not an https:// (or http://) URL"));
  }
  if (connection.token.empty()) return absl::InvalidArgumentError("the API token is empty");
  ASSIGN_OR_RETURN(std::unique_ptr<HttpClient> client,
                   HttpClient::Create({.ca_file = connection.ca_file,
                                       .bearer_token = connection.token,
                                       .user_agent = "outpost-cli/" OUTPOST_VERSION}));
  return std::unique_ptr<HubApi>(new HubApi(std::move(connection), std::move(client)));
}

absl::StatusOr<HttpResponse> HubApi::Send(HttpRequest request) {
  std::string target = request.url;
  request.url = StrCat(connection_.url, request.url);
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  if (!response.ok()) return Unreachable(response.status(), connection_.url);
  std::string_view hub_time = response->Header("x-outpost-hub-time");
  int64_t ms = 0;
  if (!hub_time.empty() &&
      std::from_chars(hub_time.data(), hub_time.data() + hub_time.size(), ms).ec == std::errc()) {
    hub_time_ms_ = ms;
    hub_time_at_local_ms_ = LocalNowMs();
  }
  if (response->status < 200 || response->status >= 300) return HubRefusal(*response);
  return response;
}

absl::StatusOr<json> HubApi::SendJson(std::string method, std::string_view path, const json* body) {
  HttpRequest request{.method = std::move(method), .url = StrCat(kAdminBase, path)};
  if (body != nullptr) {
    request.body = body->dump();
    request.content_type = "application/json";
  }
  std::string what = StrCat(request.method, " ", request.url);
  ASSIGN_OR_RETURN(HttpResponse response, Send(std::move(request)));
  return ParseAnswer(response, what);
}

absl::StatusOr<json> HubApi::Get(std::string_view path) { return SendJson("GET", path, nullptr); }
absl::StatusOr<json> HubApi::Post(std::string_view path, const json& body) {
  return SendJson("POST", path, &body);
}
absl::StatusOr<json> HubApi::Put(std::string_view path, const json& body) {
  return SendJson("PUT", path, &body);
}
absl::StatusOr<json> HubApi::Patch(std::string_view path, const json& body) {
  return SendJson("PATCH", path, &body);
}
absl::StatusOr<json> HubApi::Delete(std::string_view path) {
  return SendJson("DELETE", path, nullptr);
}

absl::StatusOr<std::string> HubApi::GetText(std::string_view path) {
  ASSIGN_OR_RETURN(HttpResponse response, Send({.url = StrCat(kAdminBase, path)}));
  return std::move(response.body);
}

absl::StatusOr<json> HubApi::Upload(std::string_view path, const std::string& file,
                                    std::function<void(uint64_t, uint64_t)> progress) {
  HttpRequest request{.method = "POST",
                      .url = StrCat(kAdminBase, path),
                      .content_type = "application/octet-stream",
                      // The hub verifies the whole bundle before it answers.
                      .timeout = std::chrono::milliseconds(1h),
                      .body_file = file,
                      .upload_progress = std::move(progress)};
  std::string what = StrCat("POST ", request.url);
  ASSIGN_OR_RETURN(HttpResponse response, Send(std::move(request)));
  return ParseAnswer(response, what);
}

absl::StatusOr<json> HubApi::Health() {
  ASSIGN_OR_RETURN(HttpResponse response, Send({.url = "/api/v1/health"}));
  return ParseAnswer(response, "GET /api/v1/health");
}

int64_t HubApi::HubNowMs() const {
  if (hub_time_ms_ == 0) return LocalNowMs();
  return hub_time_ms_ + (LocalNowMs() - hub_time_at_local_ms_);
}

}  // namespace outpost::cli
