#include "common/http_proxy.h"

#include <mbedtls/base64.h>

#include <algorithm>
#include <boost/asio/ip/address.hpp>
#include <cctype>
#include <charconv>
#include <cstdlib>

namespace outpost {
namespace {

namespace ip = boost::asio::ip;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::optional<ip::address> AddressOf(std::string_view text) {
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']') {
    text = text.substr(1, text.size() - 2);
  }
  boost::system::error_code ec;
  ip::address address = ip::make_address(std::string(text), ec);
  if (ec) return std::nullopt;
  // ::ffff:10.1.2.3 is 10.1.2.3.
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    return ip::make_address_v4(ip::v4_mapped, address.to_v6());
  }
  return address;
}

// True when the first `bits` bits of `a` and `b` (same family) are equal.
bool SamePrefix(const ip::address& a, const ip::address& b, unsigned bits) {
  if (a.is_v4() != b.is_v4()) return false;
  auto compare = [bits](const auto& x, const auto& y) {
    if (bits > x.size() * 8) return false;
    for (size_t i = 0; i < x.size(); ++i) {
      unsigned left = bits > i * 8 ? std::min(8u, bits - static_cast<unsigned>(i * 8)) : 0;
      if (left == 0) return true;
      unsigned mask = (0xFFu << (8 - left)) & 0xFFu;
      if ((x[i] & mask) != (y[i] & mask)) return false;
    }
    return true;
  };
  return a.is_v4() ? compare(a.to_v4().to_bytes(), b.to_v4().to_bytes())
                   : compare(a.to_v6().to_bytes(), b.to_v6().to_bytes());
}

// One no_proxy entry against a host (name lowercased later) or address.
bool EntryMatches(std::string_view entry, std::string_view host,
                  const std::optional<ip::address>& host_address) {
  if (entry == "*") return true;
  if (host_address) {
    std::string_view network = entry;
    unsigned bits = host_address->is_v4() ? 32 : 128;
    if (size_t slash = entry.find('/'); slash != std::string_view::npos) {
      network = entry.substr(0, slash);
      std::string_view digits = entry.substr(slash + 1);
      auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), bits);
      if (ec != std::errc() || end != digits.data() + digits.size()) return false;
    }
    std::optional<ip::address> address = AddressOf(network);
    return address && SamePrefix(*address, *host_address, bits);
  }
  // An address or range never matches a host name ("1.2.3.4" is no suffix
  // of "host.1.2.3.4").
  if (entry.find('/') != std::string_view::npos || AddressOf(entry)) return false;
  if (entry.starts_with(".")) entry.remove_prefix(1);
  if (entry.ends_with(".")) entry.remove_suffix(1);
  if (entry.empty()) return false;
  if (EqualsIgnoreCase(entry, host)) return true;
  return host.size() > entry.size() && host[host.size() - entry.size() - 1] == '.' &&
         EqualsIgnoreCase(host.substr(host.size() - entry.size()), entry);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> PercentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    int high = HexValue(s[i + 1]), low = HexValue(s[i + 2]);
    if (high < 0 || low < 0) return std::nullopt;
    out += static_cast<char>(high * 16 + low);
    i += 2;
  }
  return out;
}

// The first of `lower`, `upper` set to a non-empty value.
void ReadVariable(const char* lower, const char* upper, std::string* value, std::string* name) {
  for (const char* variable : {lower, upper}) {
    const char* text = std::getenv(variable);
    if (text != nullptr && *text != '\0') {
      *value = text;
      *name = variable;
      return;
    }
  }
}

}  // namespace

std::string HttpProxy::Address() const {
  if (host.find(':') != std::string::npos) return StrCat("[", host, "]:", port);
  return StrCat(host, ":", port);
}

ProxyEnvironment ProxyEnvironment::Read() {
  ProxyEnvironment env;
  ReadVariable("http_proxy", "HTTP_PROXY", &env.http_proxy, &env.http_proxy_name);
  ReadVariable("https_proxy", "HTTPS_PROXY", &env.https_proxy, &env.https_proxy_name);
  std::string no_proxy_name;
  ReadVariable("no_proxy", "NO_PROXY", &env.no_proxy, &no_proxy_name);
  return env;
}

absl::StatusOr<HttpProxy> ParseProxyUrl(std::string_view url, std::string_view variable) {
  std::string_view rest = Trim(url);
  // The URL as shown in messages: never the password.
  std::string shown(rest);
  if (size_t at = shown.rfind('@'); at != std::string::npos) {
    size_t start = shown.find("://");
    start = start == std::string::npos ? 0 : start + 3;
    if (at > start) shown.replace(start, at - start, "***");
  }
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(StrCat(variable, "='", shown,
                                             "' is not a usable proxy URL: ", why,
                                             " (expected http://[user:password@]host[:port])"));
  };
  if (size_t scheme_end = rest.find("://"); scheme_end != std::string_view::npos) {
    std::string_view scheme = rest.substr(0, scheme_end);
    if (!EqualsIgnoreCase(scheme, "http")) {
      return bad(StrCat("the scheme ", scheme, ":// is not supported, only http:// proxies"));
    }
    rest.remove_prefix(scheme_end + 3);
  }
  if (rest.find_first_of(std::string_view(" \t\r\n\0", 5)) != std::string_view::npos) {
    return bad("it holds spaces or control characters");
  }
  if (size_t slash = rest.find('/'); slash != std::string_view::npos) {
    if (rest.substr(slash) != "/") return bad("a proxy URL has no path");
    rest = rest.substr(0, slash);
  }
  HttpProxy proxy;
  proxy.source = std::string(variable);
  if (size_t at = rest.rfind('@'); at != std::string_view::npos) {
    std::string_view userinfo = rest.substr(0, at);
    rest.remove_prefix(at + 1);
    std::optional<std::string> credentials = PercentDecode(userinfo);
    if (!credentials) return bad("bad percent-encoding in the user or password");
    if (credentials->find(':') == std::string::npos) credentials->push_back(':');
    std::string encoded(4 * ((credentials->size() + 2) / 3) + 1, '\0');
    size_t length = 0;
    if (mbedtls_base64_encode(reinterpret_cast<unsigned char*>(encoded.data()), encoded.size(),
                              &length, reinterpret_cast<const unsigned char*>(credentials->data()),
                              credentials->size()) != 0) {
      return bad("cannot encode the credentials");
    }
    encoded.resize(length);
    proxy.authorization = StrCat("Basic ", encoded);
  }
  absl::StatusOr<HostPort> host_port = ParseAuthority(rest, 80);
  if (!host_port.ok()) return bad(MessageOf(host_port.status()));
  proxy.host = std::move(host_port->host);
  proxy.port = host_port->port;
  return proxy;
}

bool NoProxyMatches(std::string_view no_proxy, std::string_view host) {
  if (host.ends_with(".")) host.remove_suffix(1);
  if (host.empty()) return false;
  const std::optional<ip::address> host_address = AddressOf(host);
  while (!no_proxy.empty()) {
    size_t comma = no_proxy.find(',');
    std::string_view entry = Trim(no_proxy.substr(0, comma));
    if (!entry.empty() && EntryMatches(entry, host, host_address)) return true;
    if (comma == std::string_view::npos) break;
    no_proxy.remove_prefix(comma + 1);
  }
  return false;
}

bool IsLoopbackHost(std::string_view host) {
  if (host.ends_with(".")) host.remove_suffix(1);
  if (EqualsIgnoreCase(host, "localhost")) return true;
  std::optional<ip::address> address = AddressOf(host);
  return address && address->is_loopback();
}

absl::StatusOr<std::optional<HttpProxy>> SelectProxy(const ParsedUrl& url,
                                                     const ProxyEnvironment& env) {
  const std::string& proxy_url = url.tls ? env.https_proxy : env.http_proxy;
  if (proxy_url.empty() || IsLoopbackHost(url.host) || NoProxyMatches(env.no_proxy, url.host)) {
    return std::nullopt;
  }
  ASSIGN_OR_RETURN(HttpProxy proxy,
                   ParseProxyUrl(proxy_url, url.tls ? env.https_proxy_name : env.http_proxy_name));
  return proxy;
}

absl::StatusOr<std::optional<HttpProxy>> ProxyFromEnvironment(const ParsedUrl& url) {
  return SelectProxy(url, ProxyEnvironment::Read());
}

}  // namespace outpost
