// The dashboard's static files (web/, bundled at build time by esbuild into
// a `web` folder next to outpost-hub) served by the hub under /ui/.
//
// The folder is read once, at start, into memory (a few hundred KB): a
// request can only ever name a file that was there, so no path the client
// sends reaches the file system (no directory traversal by construction),
// and each file's ETag is computed once.
//
// Thread safety: immutable after Load(); Respond() may be called from any
// thread.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/http_server.h"
#include "common/status.h"

namespace outpost::hub {

class WebAssets {
 public:
  // Reads every regular file under `dir` (symbolic links and files over
  // 8 MB are skipped). Errors: NotFound (no such directory, or no
  // index.html in it), Internal (a file could not be read).
  static absl::StatusOr<std::unique_ptr<WebAssets>> Load(const std::filesystem::path& dir);

  // The folder the hub looks in when --web-dir is not given: `web` next to
  // the running executable, else ../share/outpost/web from it.
  static std::filesystem::path DefaultDir();

  // Answers GET/HEAD of `path` (no query string): "/" and "/ui" redirect to
  // "/ui/", "/ui/" is index.html, "/ui/<file>" a file. Every answer carries
  // the Content-Security-Policy and nosniff headers. index.html is
  // revalidated on every load (no-cache); files with a content hash in
  // their name are cached for a year. If-None-Match -> 304. Unknown files
  // -> 404 JSON; a path with "..", "//" or a backslash -> 400 JSON.
  // `assets` may be null (not installed): 404 saying how to build them.
  static http::Response Respond(const WebAssets* assets, const http::Request& request,
                                std::string_view path);

  // True for the paths Respond() owns ("/", "/ui", "/ui/...").
  static bool Owns(std::string_view path);

  size_t file_count() const { return files_.size(); }

 private:
  struct File {
    std::string body;
    std::string content_type;
    std::string etag;  // quoted
    bool immutable = false;
  };
  WebAssets() = default;
  std::unordered_map<std::string, File> files_;  // by path relative to the folder
};

// The Content-Security-Policy of every dashboard response: scripts, styles
// and API calls from the hub itself only; no framing, no plugins.
inline constexpr std::string_view kDashboardCsp =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'";

}  // namespace outpost::hub
