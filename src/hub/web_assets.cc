#include "hub/web_assets.h"

#include <limits.h>
#include <unistd.h>

#include "common/atomic_file.h"
#include "common/sha256.h"
#include "hub/router.h"

namespace outpost::hub {
namespace {

namespace fs = std::filesystem;
namespace bhttp = boost::beast::http;

constexpr uintmax_t kMaxAssetBytes = 8 << 20;
constexpr std::string_view kPrefix = "/ui/";
// esbuild names every bundled file by its content hash (web/build.mjs), so
// a changed file has a new name and the old one may be cached for ever.
constexpr std::string_view kHashedDir = "assets/";

std::string_view ContentTypeOf(std::string_view name) {
  static constexpr std::pair<std::string_view, std::string_view> kTypes[] = {
      {".html", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".json", "application/json"},
      {".map", "application/json"},
      {".svg", "image/svg+xml"},
      {".png", "image/png"},
      {".ico", "image/x-icon"},
      {".txt", "text/plain; charset=utf-8"},
      {".woff2", "font/woff2"},
  };
  for (const auto& [ext, type] : kTypes) {
    if (name.ends_with(ext)) return type;
  }
  return "application/octet-stream";
}

void SetCommonHeaders(http::Response& response) {
  response.set("Content-Security-Policy",
               boost::beast::string_view(kDashboardCsp.data(), kDashboardCsp.size()));
  response.set("X-Content-Type-Options", "nosniff");
  response.set("Referrer-Policy", "no-referrer");
  response.set("X-Frame-Options", "DENY");
}

http::Response Error(const http::Request& request, http::Status status, std::string_view message) {
  http::Response response = http::ErrorResponse(request, status, message);
  SetCommonHeaders(response);
  response.set(bhttp::field::cache_control, "no-store");
  return response;
}

http::Response Redirect(const http::Request& request, std::string_view location) {
  http::Response response{http::Status::found, request.version()};
  response.keep_alive(request.keep_alive());
  response.set(bhttp::field::location, boost::beast::string_view(location.data(), location.size()));
  response.set(bhttp::field::cache_control, "no-cache");
  SetCommonHeaders(response);
  return response;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WebAssets>> WebAssets::Load(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(StrCat("dashboard folder ", dir.string(), " does not exist"));
  }
  auto assets = std::unique_ptr<WebAssets>(new WebAssets());
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    // Only regular files that are really inside the folder: a symbolic
    // link could point anywhere.
    if (it->is_symlink(ec) || !it->is_regular_file(ec)) continue;
    if (it->file_size(ec) > kMaxAssetBytes) continue;
    std::string relative = it->path().lexically_relative(dir).generic_string();
    ASSIGN_OR_RETURN(std::string body, ReadFile(it->path()));
    File file;
    file.content_type = std::string(ContentTypeOf(relative));
    file.etag = StrCat("\"", Sha256::HexOf(body).substr(0, 32), "\"");
    file.immutable = relative.starts_with(kHashedDir);
    file.body = std::move(body);
    assets->files_.emplace(std::move(relative), std::move(file));
  }
  if (ec) {
    return absl::InternalError(StrCat("cannot list ", dir.string(), ": ", ec.message()));
  }
  if (!assets->files_.count("index.html")) {
    return absl::NotFoundError(StrCat("no index.html in ", dir.string()));
  }
  return assets;
}

fs::path WebAssets::DefaultDir() {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return "web";
  fs::path bin = fs::path(std::string(self, n)).parent_path();
  std::error_code ec;
  if (fs::is_directory(bin / "web", ec)) return bin / "web";
  return (bin / ".." / "share" / "outpost" / "web").lexically_normal();
}

bool WebAssets::Owns(std::string_view path) {
  return path == "/" || path == "/ui" || path.starts_with(kPrefix);
}

http::Response WebAssets::Respond(const WebAssets* assets, const http::Request& request,
                                  std::string_view path) {
  if (request.method() != bhttp::verb::get && request.method() != bhttp::verb::head) {
    http::Response response = Error(request, http::Status::method_not_allowed,
                                    StrCat("method ", SV(request.method_string()),
                                           " is not allowed on ", path, " (GET or HEAD)"));
    response.set(bhttp::field::allow, "GET, HEAD");
    return response;
  }
  if (path == "/" || path == "/ui") return Redirect(request, kPrefix);
  std::string_view name = path.substr(kPrefix.size());
  if (name.empty()) name = "index.html";
  if (name.find("..") != std::string_view::npos || name.find("//") != std::string_view::npos ||
      name.find('\\') != std::string_view::npos || name.find('%') != std::string_view::npos ||
      name.front() == '/') {
    return Error(request, http::Status::bad_request, StrCat("bad dashboard path: ", path));
  }
  if (assets == nullptr) {
    return Error(request, http::Status::not_found,
                 "the dashboard is not installed next to outpost-hub: build the `dashboard` "
                 "target (needs node and npm) or start the hub with --web-dir");
  }
  auto it = assets->files_.find(std::string(name));
  if (it == assets->files_.end()) {
    return Error(request, http::Status::not_found, StrCat("no such dashboard file: ", path));
  }
  const File& file = it->second;
  const bool fresh = SV(request[bhttp::field::if_none_match]) == file.etag;
  http::Response response{fresh ? http::Status::not_modified : http::Status::ok, request.version()};
  response.keep_alive(request.keep_alive());
  response.set(bhttp::field::etag, file.etag);
  response.set(bhttp::field::cache_control,
               file.immutable ? "public, max-age=31536000, immutable" : "no-cache");
  SetCommonHeaders(response);
  if (fresh) return response;
  response.set(bhttp::field::content_type, file.content_type);
  if (request.method() != bhttp::verb::head) response.body() = file.body;
  return response;
}

}  // namespace outpost::hub
