// docs/openapi.yaml documents exactly the routes the hub registers, with
// the role each needs.
#include <gtest/gtest.h>
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

}  // namespace
}  // namespace outpost::hub
