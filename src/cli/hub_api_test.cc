#include "cli/hub_api.h"

#include <gtest/gtest.h>

namespace outpost::cli {
namespace {

TEST(HubApiTest, EscapesPathsAndQueries) {
  EXPECT_EQ(UrlEscape("cam-1_a.b~"), "cam-1_a.b~");
  EXPECT_EQ(UrlEscape("a b/c?d"), "a%20b%2Fc%3Fd");
  EXPECT_EQ(QueryString({}), "");
  EXPECT_EQ(QueryString({{"site", ""}, {"labels", "a=1,b=2"}, {"status", "active"}}),
            "?labels=a%3D1%2Cb%3D2&status=active");
}

TEST(HubApiTest, RefusesBadUrlsAndEmptyTokens) {
  EXPECT_EQ(HubApi::Create({.url = "hub:7443", .token = "t"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HubApi::Create({.url = "https://hub", .token = ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto api = HubApi::Create({.url = "https://hub:7443/", .token = "t"});
  ASSERT_TRUE(api.ok());
  EXPECT_EQ((*api)->url(), "https://hub:7443");
  EXPECT_EQ(HubHttpStatusOf(absl::UnavailableError("x")), 0);
}

}  // namespace
}  // namespace outpost::cli
