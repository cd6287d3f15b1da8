#include "cli/baseline.h"

#include <gtest/gtest.h>

namespace outpost::cli {
namespace {

constexpr std::string_view kScrape =
    "# TYPE outpost_output_score histogram\n"
    "outpost_output_score_bucket{model=\"cls\",version=\"1\",le=\"0.5\"} 2\n"
    "outpost_output_score_bucket{model=\"cls\",version=\"1\",le=\"0.9\"} 6\n"
    "outpost_output_score_bucket{model=\"cls\",version=\"1\",le=\"1\"} 10\n"
    "outpost_output_score_bucket{model=\"cls\",version=\"1\",le=\"+Inf\"} 10\n"
    "outpost_output_score_count{model=\"cls\",version=\"1\"} 10\n"
    "outpost_output_score_bucket{model=\"other\",version=\"1\",le=\"1\"} 0\n"
    "outpost_output_score_bucket{model=\"other\",version=\"1\",le=\"+Inf\"} 0\n";

TEST(BaselineTest, BinsFollowTheRuntimeBuckets) {
  absl::StatusOr<bundle::OutputBaseline> b = BaselineFromMetrics(kScrape, "cls", "", "prob");
  ASSERT_TRUE(b.ok()) << MessageOf(b.status());
  EXPECT_EQ(b->output, "prob");
  // lower = min(0, 0.5 - 0.4); upper = 1 + 0.1 (the +Inf bucket's bin).
  ASSERT_EQ(b->bin_edges.size(), 5u);
  EXPECT_DOUBLE_EQ(b->bin_edges[0], 0);
  EXPECT_DOUBLE_EQ(b->bin_edges[3], 1);
  EXPECT_NEAR(b->bin_edges[4], 1.1, 1e-12);
  EXPECT_EQ(b->proportions, (std::vector<double>{0.2, 0.4, 0.4, 0}));
  EXPECT_EQ(b->samples, 10u);
}

TEST(BaselineTest, ErrorsSayWhatIsMissing) {
  auto missing = BaselineFromMetrics(kScrape, "nope", "", "prob");
  EXPECT_TRUE(absl::IsFailedPrecondition(missing.status()));
  EXPECT_NE(MessageOf(missing.status()).find("model 'nope'"), std::string_view::npos);
  auto empty = BaselineFromMetrics(kScrape, "other", "", "prob");
  EXPECT_TRUE(absl::IsFailedPrecondition(empty.status()));
  auto wrong_version = BaselineFromMetrics(kScrape, "cls", "7", "prob");
  EXPECT_TRUE(absl::IsFailedPrecondition(wrong_version.status()));
  std::string two_versions =
      std::string(kScrape) +
      "outpost_output_score_bucket{model=\"cls\",version=\"2\",le=\"1\"} 1\n"
      "outpost_output_score_bucket{model=\"cls\",version=\"2\",le=\"+Inf\"} 1\n";
  auto ambiguous = BaselineFromMetrics(two_versions, "cls", "", "prob");
  EXPECT_TRUE(absl::IsInvalidArgument(ambiguous.status()));
  EXPECT_NE(MessageOf(ambiguous.status()).find("versions 1, 2"), std::string_view::npos);
  EXPECT_TRUE(BaselineFromMetrics(two_versions, "cls", "2", "prob").ok());
}

}  // namespace
}  // namespace outpost::cli
