// The dashboard's static files: what is served, with which headers, and
// that no request path reaches outside the folder.
#include "hub/web_assets.h"

#include <gtest/gtest.h>

#include "bundle/test_support.h"

namespace outpost::hub {
namespace {

namespace fs = std::filesystem;
namespace bhttp = boost::beast::http;
using bundle::testing::TempDir;
using bundle::testing::WriteBytes;

http::Request Get(std::string_view target, bhttp::verb verb = bhttp::verb::get) {
  http::Request request{verb, boost::beast::string_view(target.data(), target.size()), 11};
  return request;
}

std::string HeaderOf(const http::Response& response, bhttp::field field) {
  auto value = response[field];
  return std::string(value.data(), value.size());
}
std::string HeaderOf(const http::Response& response, const char* name) {
  auto value = response[name];
  return std::string(value.data(), value.size());
}

class WebAssetsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "web" / "assets");
    WriteBytes(dir_ / "web" / "index.html", "<!doctype html><title>Outpost</title>");
    WriteBytes(dir_ / "web" / "assets" / "app-ABCD1234.js", "console.log(1)");
    WriteBytes(dir_ / "web" / "assets" / "app-ABCD1234.css", "body{}");
    WriteBytes(dir_ / "secret.txt", "outside");
    fs::create_symlink(dir_ / "secret.txt", dir_ / "web" / "link.txt");
    auto assets = WebAssets::Load(dir_ / "web");
    ASSERT_TRUE(assets.ok()) << assets.status();
    assets_ = std::move(*assets);
  }

  http::Response Respond(std::string_view path, bhttp::verb verb = bhttp::verb::get) {
    return WebAssets::Respond(assets_.get(), Get(path, verb), path);
  }

  TempDir dir_;
  std::unique_ptr<WebAssets> assets_;
};

TEST_F(WebAssetsTest, RootRedirectsToTheDashboard) {
  for (const char* path : {"/", "/ui"}) {
    http::Response r = Respond(path);
    EXPECT_EQ(r.result(), http::Status::found) << path;
    EXPECT_EQ(HeaderOf(r, bhttp::field::location), "/ui/");
  }
  EXPECT_TRUE(WebAssets::Owns("/"));
  EXPECT_TRUE(WebAssets::Owns("/ui/x.js"));
  EXPECT_FALSE(WebAssets::Owns("/api/v1/health"));
  EXPECT_FALSE(WebAssets::Owns("/uix"));
}

TEST_F(WebAssetsTest, IndexIsRevalidatedAndHashedAssetsAreCachedForAYear) {
  http::Response index = Respond("/ui/");
  ASSERT_EQ(index.result(), http::Status::ok);
  EXPECT_EQ(index.body(), "<!doctype html><title>Outpost</title>");
  EXPECT_EQ(HeaderOf(index, bhttp::field::content_type), "text/html; charset=utf-8");
  EXPECT_EQ(HeaderOf(index, bhttp::field::cache_control), "no-cache");
  EXPECT_EQ(HeaderOf(index, "Content-Security-Policy"), std::string(kDashboardCsp));
  EXPECT_EQ(HeaderOf(index, "X-Content-Type-Options"), "nosniff");
  EXPECT_EQ(Respond("/ui/index.html").body(), index.body());

  http::Response js = Respond("/ui/assets/app-ABCD1234.js");
  EXPECT_EQ(js.result(), http::Status::ok);
  EXPECT_EQ(HeaderOf(js, bhttp::field::content_type), "text/javascript; charset=utf-8");
  EXPECT_EQ(HeaderOf(js, bhttp::field::cache_control), "public, max-age=31536000, immutable");
  EXPECT_EQ(HeaderOf(Respond("/ui/assets/app-ABCD1234.css"), bhttp::field::content_type),
            "text/css; charset=utf-8");

  // A revalidation with the ETag gets 304 and no body.
  http::Request again = Get("/ui/");
  again.set(bhttp::field::if_none_match, HeaderOf(index, bhttp::field::etag));
  http::Response not_modified = WebAssets::Respond(assets_.get(), again, "/ui/");
  EXPECT_EQ(not_modified.result(), http::Status::not_modified);
  EXPECT_TRUE(not_modified.body().empty());
}

TEST_F(WebAssetsTest, NothingOutsideTheFolderIsReachable) {
  for (const char* path : {"/ui/../secret.txt", "/ui/assets/../../secret.txt", "/ui//etc/passwd",
                           "/ui/%2e%2e/secret.txt", "/ui/..\\secret.txt"}) {
    http::Response r = Respond(path);
    EXPECT_EQ(r.result(), http::Status::bad_request) << path;
    EXPECT_NE(r.body().find("bad dashboard path"), std::string::npos) << r.body();
  }
  EXPECT_EQ(Respond("/ui/link.txt").result(), http::Status::not_found);  // a symlink
  EXPECT_EQ(Respond("/ui/secret.txt").result(), http::Status::not_found);
  EXPECT_EQ(Respond("/ui/assets").result(), http::Status::not_found);  // a folder
  EXPECT_EQ(assets_->file_count(), 3u);
}

TEST_F(WebAssetsTest, OnlyGetAndHead) {
  http::Response post = Respond("/ui/", bhttp::verb::post);
  EXPECT_EQ(post.result(), http::Status::method_not_allowed);
  EXPECT_EQ(HeaderOf(post, bhttp::field::allow), "GET, HEAD");
  http::Response head = Respond("/ui/", bhttp::verb::head);
  EXPECT_EQ(head.result(), http::Status::ok);
  EXPECT_TRUE(head.body().empty());
}

TEST(WebAssetsLoadTest, AMissingFolderOrIndexIsAClearError) {
  TempDir dir;
  EXPECT_EQ(WebAssets::Load(dir / "none").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(WebAssets::Load(dir.path()).status().code(), absl::StatusCode::kNotFound);
  // Not installed: a 404 that says how to get the dashboard.
  http::Response r = WebAssets::Respond(nullptr, Get("/ui/"), "/ui/");
  EXPECT_EQ(r.result(), http::Status::not_found);
  EXPECT_NE(r.body().find("dashboard"), std::string::npos);
  EXPECT_EQ(WebAssets::Respond(nullptr, Get("/"), "/").result(), http::Status::found);
}

}  // namespace
}  // namespace outpost::hub
