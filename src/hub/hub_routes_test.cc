// The hub's routes: docs/openapi.yaml documents exactly the routes the hub
// registers, with the role each needs; and requests are screened by route
// before their bodies are read.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <set>

#include "bundle/test_support.h"
#include "hub/hub.h"

namespace outpost::hub {
namespace {

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

TEST(OpenApiTest, EveryRegisteredRouteIsDocumentedAndNothingElse) {
  bundle::testing::TempDir dir;
  HubOptions options;
  options.data_dir = dir.path();
  options.port = 0;
  options.insecure_http = true;
  auto hub = Hub::Create(options);
  ASSERT_TRUE(hub.ok()) << hub.status();
  YAML::Node doc = YAML::LoadFile(std::string(OUTPOST_SOURCE_DIR) + "/docs/openapi.yaml");
  ASSERT_TRUE(doc["paths"].IsMap());
  std::set<std::pair<std::string, std::string>> registered;
  for (const Hub::RouteInfo& route : (*hub)->Routes()) {
    registered.insert({Lower(route.method), route.pattern});
    YAML::Node op = doc["paths"][route.pattern][Lower(route.method)];
    ASSERT_TRUE(op.IsMap()) << route.method << " " << route.pattern
                            << " is registered but not in docs/openapi.yaml";
    EXPECT_EQ(op["x-outpost-role"].as<std::string>(""), route.access)
        << route.method << " " << route.pattern;
    EXPECT_TRUE(op["responses"].IsMap()) << route.pattern;
  }
  EXPECT_GT(registered.size(), 30u);
  for (const auto& path : doc["paths"]) {
    for (const auto& op : path.second) {
      std::pair<std::string, std::string> key{op.first.as<std::string>(),
                                              path.first.as<std::string>()};
      EXPECT_TRUE(registered.count(key))
          << key.first << " " << key.second << " is documented but the hub has no such route";
    }
  }
}

// The hub refuses what it would refuse anyway before reading a body: a
// client cannot make it buffer gigabytes by naming a release push.
TEST(HubHeaderCheckTest, AnonymousOrOversizedBodiesAreRefusedBeforeTheyAreRead) {
  bundle::testing::TempDir dir;
  HubOptions options;
  options.data_dir = dir.path();
  options.port = 0;
  options.insecure_http = true;
  auto hub = Hub::Create(options);
  ASSERT_TRUE(hub.ok()) << hub.status();
  (*hub)->Start();
  auto exchange = [&](const std::string& head) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((*hub)->port());
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(send(fd, head.data(), head.size(), 0), static_cast<ssize_t>(head.size()));
    timeval timeout{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);  // answered without the body
    close(fd);
    return n > 0 ? std::string(buf, n) : std::string();
  };
  std::string anonymous = exchange(
      "POST /api/v1/admin/releases HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000000\r\n\r\n");
  EXPECT_TRUE(anonymous.starts_with("HTTP/1.1 401")) << anonymous;
  std::string big = exchange(
      "POST /api/v1/device/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer odc_x\r\n"
      "Content-Length: 50000000\r\n\r\n");
  EXPECT_TRUE(big.starts_with("HTTP/1.1 413")) << big;
  (*hub)->Stop();
}

}  // namespace
}  // namespace outpost::hub
