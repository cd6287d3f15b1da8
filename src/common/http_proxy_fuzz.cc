// libFuzzer target for the proxy settings (common/http_proxy.h): the first
// line of the input is a proxy URL, the second a no_proxy list, the third a
// host. Local configuration rather than network input, but it must never
// crash the agent. A proxy that parses has a host and a nonzero port.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "common/http_proxy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  std::string_view lines[3];
  for (auto& line : lines) {
    size_t end = text.find('\n');
    line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
  }
  absl::StatusOr<outpost::HttpProxy> proxy = outpost::ParseProxyUrl(lines[0], "https_proxy");
  if (proxy.ok() && (proxy->host.empty() || proxy->port == 0)) std::abort();
  (void)outpost::NoProxyMatches(lines[1], lines[2]);
  (void)outpost::NoProxyMatches(lines[1], "hub.example.com");
  (void)outpost::NoProxyMatches(lines[1], "10.1.2.3");
  (void)outpost::IsLoopbackHost(lines[2]);
  return 0;
}
