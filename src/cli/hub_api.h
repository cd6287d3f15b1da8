// The hub's admin API (/api/v1/admin/..., docs/openapi.yaml) as the
// `outpost` CLI calls it: one HubApi per command, over one kept-alive
// HttpClient, authenticated with an admin API token.
//
// Errors are split by where they came from, because the exit code says
// which (docs/cli.md):
//   - the hub answered with an HTTP error: the status carries the HTTP code
//     (HubHttpStatusOf) and the hub's own "error" text; exit 1
//   - the hub could not be reached (connection refused, timeout, TLS
//     verification failed): Unavailable / DeadlineExceeded; exit 3
//   - a malformed hub URL: InvalidArgument; exit 2
//
// Thread safety: one thread at a time (like HttpClient).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/http_client.h"
#include "common/status.h"

namespace outpost::cli {

struct HubConnection {
  std::string url;      // "https://hub.example:7443" (a trailing '/' is ignored)
  std::string token;    // an admin API token ("oat_...")
  std::string ca_file;  // PEM of the hub's own CA; empty: the system store
};

// The HTTP status of an error the hub answered (>= 400), 0 for any other
// status (transport errors, local errors, OK).
int HubHttpStatusOf(const absl::Status& status);

// "a b/c" -> "a%20b%2Fc": one path segment or query value.
std::string UrlEscape(std::string_view text);
// "?k=v&k2=v2" of the pairs whose value is not empty ("" when none are).
std::string QueryString(const std::vector<std::pair<std::string, std::string>>& pairs);

class HubApi {
 public:
  // Errors: InvalidArgument (url is not http:// or https://, token empty),
  // Internal (libcurl).
  static absl::StatusOr<std::unique_ptr<HubApi>> Create(HubConnection connection);

  // One request to <url>/api/v1/admin<path> (path starts with '/', its
  // segments already escaped). A 2xx answer's JSON body is returned; an
  // empty 2xx body is {}.
  absl::StatusOr<nlohmann::json> Get(std::string_view path);
  absl::StatusOr<nlohmann::json> Post(std::string_view path,
                                      const nlohmann::json& body = nlohmann::json::object());
  absl::StatusOr<nlohmann::json> Put(std::string_view path, const nlohmann::json& body);
  absl::StatusOr<nlohmann::json> Patch(std::string_view path, const nlohmann::json& body);
  absl::StatusOr<nlohmann::json> Delete(std::string_view path);
  // A GET whose answer is not JSON (the CSV export): the body as is.
  absl::StatusOr<std::string> GetText(std::string_view path);
  // POSTs the file `file` as application/octet-stream (streamed, never held
  // in memory), calling `progress(sent, total)` as it goes. Errors also
  // those of reading the file (NotFound, PermissionDenied).
  absl::StatusOr<nlohmann::json> Upload(std::string_view path, const std::string& file,
                                        std::function<void(uint64_t, uint64_t)> progress);
  // GET /api/v1/health (public): {"status": "ok", "version": ...}.
  absl::StatusOr<nlohmann::json> Health();

  // The hub's clock (unix ms) as of its last answer (X-Outpost-Hub-Time),
  // so "last seen 5s ago" does not depend on this machine's clock; the
  // local clock before any answer.
  int64_t HubNowMs() const;
  const std::string& url() const { return connection_.url; }

 private:
  HubApi(HubConnection connection, std::unique_ptr<HttpClient> client)
      : connection_(std::move(connection)), client_(std::move(client)) {}
  absl::StatusOr<HttpResponse> Send(HttpRequest request);
  absl::StatusOr<nlohmann::json> SendJson(std::string method, std::string_view path,
                                          const nlohmann::json* body);

  HubConnection connection_;
  std::unique_ptr<HttpClient> client_;
  int64_t hub_time_ms_ = 0;
  int64_t hub_time_at_local_ms_ = 0;
};

}  // namespace outpost::cli
