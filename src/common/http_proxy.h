// Outbound HTTP proxies for HttpConnection: which proxy, if any, a URL goes
// through, chosen from the environment the way curl chooses (docs/agent.md,
// "Proxies").
//
//   https:// URLs  https_proxy, else HTTPS_PROXY
//   http:// URLs   http_proxy, else HTTP_PROXY
//   exceptions     no_proxy, else NO_PROXY: comma-separated entries, each a
//                  host name (matching itself and its subdomains, with or
//                  without a leading dot), an IP address, an IP range in
//                  CIDR form (10.0.0.0/8), or "*" (no proxy at all)
//
// The lowercase name wins when both are set; an empty value counts as unset.
// Loopback targets (localhost, 127.0.0.0/8, ::1) are always reached directly,
// whatever the variables say: the device's own runtime, and tests on
// 127.0.0.1, never go through a proxy.
//
// A proxy URL is "http://[user:password@]host[:port][/]" (scheme-less
// "host:port" is taken as http://, as curl does); the port defaults to 80.
// User and password may be percent-encoded; they are sent as
// "Proxy-Authorization: Basic ...". Other schemes (https://, socks5://) are
// refused.
//
// All functions are pure except ProxyFromEnvironment, which reads the
// environment; thread-safe as long as nobody calls setenv meanwhile.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/http_connection.h"
#include "common/status.h"

namespace outpost {

// The proxy variables, as read from the environment (or given by a test).
struct ProxyEnvironment {
  std::string http_proxy;
  std::string http_proxy_name = "http_proxy";  // the variable it came from
  std::string https_proxy;
  std::string https_proxy_name = "https_proxy";
  std::string no_proxy;

  // Reads the variables, lowercase first (see above).
  static ProxyEnvironment Read();
};

// Parses a proxy URL (see above). InvalidArgument naming `variable` and the
// URL (with the password hidden) for another scheme, a bad port, a path, or
// no host.
absl::StatusOr<HttpProxy> ParseProxyUrl(std::string_view url, std::string_view variable);

// True when `host` (a host name, or an IP address without brackets) matches
// an entry of the no_proxy list `no_proxy`. Host names compare
// case-insensitively and ignore one trailing dot.
bool NoProxyMatches(std::string_view no_proxy, std::string_view host);

// True for localhost, 127.0.0.0/8 and ::1 (IPv4-mapped included).
bool IsLoopbackHost(std::string_view host);

// The proxy `url` goes through under `env`, or nullopt for a direct
// connection. InvalidArgument when the variable that applies is malformed.
absl::StatusOr<std::optional<HttpProxy>> SelectProxy(const ParsedUrl& url,
                                                     const ProxyEnvironment& env);

// SelectProxy with ProxyEnvironment::Read().
absl::StatusOr<std::optional<HttpProxy>> ProxyFromEnvironment(const ParsedUrl& url);

}  // namespace outpost
