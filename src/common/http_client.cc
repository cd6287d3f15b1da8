#include "common/http_client.h"

#include <curl/curl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>

namespace outpost {
namespace {

void GlobalInitOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  static_cast<HttpResponse*>(user)->body.append(data, size * count);
  return size * count;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* response = static_cast<HttpResponse*>(user);
  std::string_view line(data, size * count);
  // A new status line (after 100 Continue or a redirect) starts over.
  if (line.starts_with("HTTP/")) {
    response->headers.clear();
    return size * count;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return size * count;
  std::string name(Trim(line.substr(0, colon)));
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  response->headers.emplace_back(std::move(name), std::string(Trim(line.substr(colon + 1))));
  return size * count;
}

size_t OnRead(char* buffer, size_t size, size_t count, void* user) {
  std::FILE* file = static_cast<std::FILE*>(user);
  size_t n = std::fread(buffer, 1, size * count, file);
  // A read error mid-upload aborts the transfer rather than sending a short body.
  if (n == 0 && std::ferror(file)) return CURL_READFUNC_ABORT;
  return n;
}

struct UploadProgress {
  const std::function<void(uint64_t, uint64_t)>* hook;
  uint64_t total;
  uint64_t last_reported = UINT64_MAX;
};

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t ulnow) {
  auto* progress = static_cast<UploadProgress*>(user);
  const uint64_t sent = static_cast<uint64_t>(ulnow);
  // curl calls this many times a second even when nothing moved.
  if (sent != progress->last_reported) {
    progress->last_reported = sent;
    (*progress->hook)(sent, progress->total);
  }
  return 0;
}

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

}  // namespace

struct HttpClient::Curl {
  CURL* handle = nullptr;
  ~Curl() {
    if (handle != nullptr) curl_easy_cleanup(handle);
  }
};

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
  GlobalInitOnce();
  auto curl = std::make_unique<Curl>();
  curl->handle = curl_easy_init();
  if (curl->handle == nullptr) return absl::InternalError("curl_easy_init failed");
  return std::unique_ptr<HttpClient>(new HttpClient(std::move(options), std::move(curl)));
}

HttpClient::HttpClient(HttpClientOptions options, std::unique_ptr<Curl> curl)
    : options_(std::move(options)), curl_(std::move(curl)) {}

HttpClient::~HttpClient() = default;

absl::StatusOr<HttpResponse> HttpClient::Send(const HttpRequest& request) {
  if (!request.url.starts_with("http://") && !request.url.starts_with("https://")) {
    return absl::InvalidArgumentError(
        StrCat("'", request.url, "' is not an http:// or https:// URL"));
  }
  CURL* curl = curl_->handle;
  // Options are reset per request; the connection cache survives the reset.
  curl_easy_reset(curl);
  HttpResponse response;
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, options_.user_agent.c_str());
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(options_.connect_timeout.count()));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(request.timeout.value_or(options_.timeout).count()));
  // Keep-alive probes only after 15 idle minutes: a long poll or a
  // connection waiting for the next heartbeat is idle by design, and probes
  // every minute were a third of an idle device's packets.
  curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(curl, CURLOPT_TCP_KEEPIDLE, 900L);
  curl_easy_setopt(curl, CURLOPT_TCP_KEEPINTVL, 60L);
  if (!options_.ca_file.empty()) {
    curl_easy_setopt(curl, CURLOPT_CAINFO, options_.ca_file.c_str());
    curl_easy_setopt(curl, CURLOPT_CAPATH, nullptr);
  }
  if (!options_.bearer_token.empty()) {
    curl_easy_setopt(curl, CURLOPT_HTTPAUTH, CURLAUTH_BEARER);
    curl_easy_setopt(curl, CURLOPT_XOAUTH2_BEARER, options_.bearer_token.c_str());
  }
  curl_slist* headers = nullptr;
  for (const auto& [name, value] : request.headers) {
    headers = curl_slist_append(headers, StrCat(name, ": ", value).c_str());
  }
  std::unique_ptr<std::FILE, FileCloser> body_file;
  uint64_t body_size = request.body.size();
  if (!request.body_file.empty()) {
    body_file.reset(std::fopen(request.body_file.c_str(), "rb"));
    struct stat st;
    if (body_file == nullptr || ::fstat(::fileno(body_file.get()), &st) != 0) {
      int err = errno;
      curl_slist_free_all(headers);
      return absl::ErrnoToStatus(err, StrCat("cannot read ", request.body_file));
    }
    body_size = static_cast<uint64_t>(st.st_size);
  }
  if (!request.body.empty() || body_file || request.method == "POST" || request.method == "PUT") {
    if (!request.content_type.empty()) {
      headers = curl_slist_append(headers, StrCat("Content-Type: ", request.content_type).c_str());
    }
    // No "Expect: 100-continue" round trip on small control-plane bodies.
    headers = curl_slist_append(headers, "Expect:");
    if (body_file) {
      curl_easy_setopt(curl, CURLOPT_POST, 1L);
      curl_easy_setopt(curl, CURLOPT_READFUNCTION, &OnRead);
      curl_easy_setopt(curl, CURLOPT_READDATA, body_file.get());
    } else {
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, request.body.data());
    }
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body_size));
  }
  UploadProgress progress{&request.upload_progress, body_size};
  if (request.upload_progress) {
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &OnProgress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &progress);
  }
  if (request.method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (request.method != "GET" && request.method != "POST") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &response);

  CURLcode code = curl_easy_perform(curl);
  curl_slist_free_all(headers);
  if (code != CURLE_OK) {
    std::string detail = error[0] != '\0' ? std::string(error) : curl_easy_strerror(code);
    std::string message = StrCat(request.method, " ", request.url, ": ", detail);
    switch (code) {
      case CURLE_URL_MALFORMAT:
      case CURLE_UNSUPPORTED_PROTOCOL:
        return absl::InvalidArgumentError(message);
      case CURLE_PEER_FAILED_VERIFICATION:
      case CURLE_SSL_CACERT_BADFILE:
      case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        return absl::FailedPreconditionError(StrCat(message, " (is the hub's CA the pinned one?)"));
      case CURLE_OPERATION_TIMEDOUT:
        return absl::DeadlineExceededError(message);
      default:
        return absl::UnavailableError(message);
    }
  }
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  if (request.upload_progress) {
    curl_off_t uploaded = 0;
    curl_easy_getinfo(curl, CURLINFO_SIZE_UPLOAD_T, &uploaded);
    if (static_cast<uint64_t>(uploaded) != progress.last_reported) {
      request.upload_progress(static_cast<uint64_t>(uploaded), body_size);
    }
  }
  return response;
}

}  // namespace outpost
