#include "common/http_proxy.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>

#include "common/scoped_proxy_environment.h"

namespace outpost {
namespace {

ParsedUrl Url(const std::string& text) {
  auto url = ParseHttpUrl(text);
  EXPECT_TRUE(url.ok()) << url.status();
  return url.ok() ? *url : ParsedUrl{};
}

TEST(ParseProxyUrlTest, AcceptsHttpProxiesWithOrWithoutCredentials) {
  auto plain = ParseProxyUrl("http://proxy.corp:3128", "https_proxy");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->host, "proxy.corp");
  EXPECT_EQ(plain->port, 3128);
  EXPECT_EQ(plain->authorization, "");
  EXPECT_EQ(plain->source, "https_proxy");
  EXPECT_EQ(plain->Address(), "proxy.corp:3128");

  // The port defaults to 80; no scheme means http://, a trailing / is fine.
  auto bare = ParseProxyUrl("proxy.corp/", "HTTP_PROXY");
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->host, "proxy.corp");
  EXPECT_EQ(bare->port, 80);

  auto v6 = ParseProxyUrl("HTTP://[fd00::1]:8080", "http_proxy");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->host, "fd00::1");
  EXPECT_EQ(v6->Address(), "[fd00::1]:8080");

  // "Aladdin:open sesame" is RFC 7617's example; the space percent-encoded.
  auto credentials = ParseProxyUrl("http://Aladdin:open%20sesame@10.0.0.1:3128", "https_proxy");
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  EXPECT_EQ(credentials->host, "10.0.0.1");
  EXPECT_EQ(credentials->authorization, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
  auto user_only = ParseProxyUrl("http://bob@proxy:1", "https_proxy");
  ASSERT_TRUE(user_only.ok());
  EXPECT_EQ(user_only->authorization, "Basic Ym9iOg==");  // "bob:"
}

TEST(ParseProxyUrlTest, RefusesOtherSchemesAndMalformedUrlsNamingTheVariable) {
  for (const char* bad :
       {"socks5://proxy:1080", "https://proxy:443", "http://", "http://:3128", "http://proxy:0",
        "http://proxy:70000", "http://proxy:12ab", "http://proxy:3128/path", "http://[fd00::1",
        "http://a b:1", "http://u:p%zz@proxy:1"}) {
    auto parsed = ParseProxyUrl(bad, "HTTPS_PROXY");
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(MessageOf(parsed.status()).find("HTTPS_PROXY="), std::string::npos)
        << parsed.status();
  }
  auto socks = ParseProxyUrl("socks5://proxy:1080", "https_proxy");
  EXPECT_NE(MessageOf(socks.status()).find("only http:// proxies"), std::string::npos)
      << socks.status();
  // The password never appears in a message.
  auto secret = ParseProxyUrl("http://user:hunter2@proxy:bad", "https_proxy");
  ASSERT_FALSE(secret.ok());
  EXPECT_EQ(MessageOf(secret.status()).find("hunter2"), std::string::npos) << secret.status();
  EXPECT_NE(MessageOf(secret.status()).find("http://***@proxy:bad"), std::string::npos)
      << secret.status();
}

TEST(NoProxyTest, MatchesHostsTheirSubdomainsAddressesAndRanges) {
  const std::string list = " example.com, .corp.internal ,10.1.0.0/16, 192.168.1.7,[fd00::5],";
  EXPECT_TRUE(NoProxyMatches(list, "example.com"));
  EXPECT_TRUE(NoProxyMatches(list, "EXAMPLE.com."));
  EXPECT_TRUE(NoProxyMatches(list, "hub.example.com"));
  EXPECT_FALSE(NoProxyMatches(list, "badexample.com"));
  EXPECT_FALSE(NoProxyMatches(list, "example.com.evil"));
  EXPECT_TRUE(NoProxyMatches(list, "corp.internal"));
  EXPECT_TRUE(NoProxyMatches(list, "a.b.corp.internal"));
  EXPECT_FALSE(NoProxyMatches(list, "xcorp.internal"));
  EXPECT_TRUE(NoProxyMatches(list, "10.1.200.3"));
  EXPECT_FALSE(NoProxyMatches(list, "10.2.0.1"));
  EXPECT_TRUE(NoProxyMatches(list, "192.168.1.7"));
  EXPECT_FALSE(NoProxyMatches(list, "192.168.1.70"));
  EXPECT_TRUE(NoProxyMatches(list, "fd00::5"));
  EXPECT_TRUE(NoProxyMatches(list, "fd00:0::5"));  // compared as addresses
  EXPECT_FALSE(NoProxyMatches(list, "fd00::6"));
  EXPECT_TRUE(NoProxyMatches("fd00::/8", "fd12::1"));
  EXPECT_TRUE(NoProxyMatches("10.0.0.0/8", "::ffff:10.9.9.9"));
  // A name entry never matches an address, nor the other way round.
  EXPECT_FALSE(NoProxyMatches("1.2.3.4", "host.1.2.3.4"));
  EXPECT_FALSE(NoProxyMatches("10.0.0.0/33", "10.0.0.1"));
  EXPECT_TRUE(NoProxyMatches("*", "anything.at.all"));
  EXPECT_FALSE(NoProxyMatches("", "example.com"));
  EXPECT_FALSE(NoProxyMatches(",,", "example.com"));
}

TEST(IsLoopbackHostTest, LocalhostAndLoopbackAddresses) {
  for (const char* host :
       {"localhost", "LOCALHOST.", "127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"}) {
    EXPECT_TRUE(IsLoopbackHost(host)) << host;
  }
  for (const char* host : {"localhost.example.com", "128.0.0.1", "10.0.0.1", "::2", "hub"}) {
    EXPECT_FALSE(IsLoopbackHost(host)) << host;
  }
}

TEST(SelectProxyTest, PicksTheVariableOfTheSchemeAndHonoursExceptions) {
  ProxyEnvironment env;
  env.http_proxy = "http://plain-proxy:3128";
  env.https_proxy = "http://tls-proxy:8080";
  env.https_proxy_name = "HTTPS_PROXY";
  env.no_proxy = "internal.example";

  auto tls = SelectProxy(Url("https://hub.example.com/v1"), env);
  ASSERT_TRUE(tls.ok()) << tls.status();
  ASSERT_TRUE(tls->has_value());
  EXPECT_EQ((*tls)->Address(), "tls-proxy:8080");
  EXPECT_EQ((*tls)->source, "HTTPS_PROXY");

  auto plain = SelectProxy(Url("http://hub.example.com/v1"), env);
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_TRUE(plain->has_value());
  EXPECT_EQ((*plain)->Address(), "plain-proxy:3128");

  for (const char* direct : {"https://hub.internal.example/", "https://127.0.0.1:8443/",
                             "http://localhost:8000/", "https://[::1]:1/"}) {
    auto chosen = SelectProxy(Url(direct), env);
    ASSERT_TRUE(chosen.ok()) << direct;
    EXPECT_FALSE(chosen->has_value()) << direct;
  }

  // No variable for the scheme: direct, even when the other one is set.
  env.http_proxy.clear();
  auto none = SelectProxy(Url("http://hub.example.com/"), env);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());

  // A malformed variable is an error only for the URLs it applies to.
  env.https_proxy = "socks5://proxy:1080";
  auto bad = SelectProxy(Url("https://hub.example.com/"), env);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(MessageOf(bad.status()).find("HTTPS_PROXY"), std::string::npos) << bad.status();
  EXPECT_TRUE(SelectProxy(Url("https://hub.internal.example/"), env).ok());
}

// Restores the proxy variables a test changed.
class ProxyEnvironmentTest : public ::testing::Test {
 protected:
  ScopedProxyEnvironment environment_;
};

TEST_F(ProxyEnvironmentTest, LowercaseWinsAndEmptyCountsAsUnset) {
  setenv("HTTPS_PROXY", "http://upper:1", 1);
  setenv("HTTP_PROXY", "http://upper-plain:2", 1);
  setenv("NO_PROXY", "upper.example", 1);
  ProxyEnvironment env = ProxyEnvironment::Read();
  EXPECT_EQ(env.https_proxy, "http://upper:1");
  EXPECT_EQ(env.https_proxy_name, "HTTPS_PROXY");
  EXPECT_EQ(env.http_proxy, "http://upper-plain:2");
  EXPECT_EQ(env.no_proxy, "upper.example");

  setenv("https_proxy", "http://lower:3", 1);
  setenv("http_proxy", "", 1);  // empty: the uppercase one applies
  setenv("no_proxy", "lower.example", 1);
  env = ProxyEnvironment::Read();
  EXPECT_EQ(env.https_proxy, "http://lower:3");
  EXPECT_EQ(env.https_proxy_name, "https_proxy");
  EXPECT_EQ(env.http_proxy, "http://upper-plain:2");
  EXPECT_EQ(env.http_proxy_name, "HTTP_PROXY");
  EXPECT_EQ(env.no_proxy, "lower.example");

  auto chosen = ProxyFromEnvironment(Url("https://hub.example.com/"));
  ASSERT_TRUE(chosen.ok());
  ASSERT_TRUE(chosen->has_value());
  EXPECT_EQ((*chosen)->Address(), "lower:3");
  auto excepted = ProxyFromEnvironment(Url("https://a.lower.example/"));
  ASSERT_TRUE(excepted.ok());
  EXPECT_FALSE(excepted->has_value());
}

}  // namespace
}  // namespace outpost
