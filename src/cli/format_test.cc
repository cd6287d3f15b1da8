#include "cli/format.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>

namespace outpost::cli {
namespace {

using json = nlohmann::json;

TEST(TableTest, PadsColumnsAndSaysNoneWhenEmpty) {
  Table table({"id", "site"});
  std::ostringstream empty;
  table.Print(empty);
  EXPECT_EQ(empty.str(), "ID  SITE\n(none)\n");
  table.AddRow({"cam-10", "berlin"});
  table.AddRow({"c", ""});
  std::ostringstream out;
  table.Print(out);
  EXPECT_EQ(out.str(), "ID      SITE\ncam-10  berlin\nc\n");
}

TEST(FormatTest, TimesSizesAndBars) {
  EXPECT_EQ(FormatTime(0), "-");
  EXPECT_EQ(FormatTime(1700000000000), "2023-11-14 22:13:20Z");
  EXPECT_EQ(FormatAgo(0, 5000), "never");
  EXPECT_EQ(FormatAgo(5000, 5000), "just now");
  EXPECT_EQ(FormatAgo(1000, 13000), "12s ago");
  EXPECT_EQ(FormatAgo(0 + 1, 1 + 600 * 1000), "10m ago");
  EXPECT_EQ(FormatAgo(1, 1 + 3 * 3600 * 1000), "3h ago");
  EXPECT_EQ(FormatAgo(1, 1 + 5 * 86400 * 1000ll), "5d ago");
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(3ull << 30), "3.0 GiB");
  EXPECT_EQ(ProgressBar(0.5, 10), "[#####.....]");
  EXPECT_EQ(ProgressBar(2.0, 4), "[####]");
  EXPECT_EQ(FormatLabels(json::object()), "-");
  EXPECT_EQ(FormatLabels({{"a", "1"}, {"b", "x"}}), "a=1,b=x");
}

TEST(FormatTest, JsonAccessNeverThrows) {
  json j = {{"s", "text"}, {"n", 42}, {"f", 1.5}, {"b", true}, {"null", nullptr}, {"a", {1, 2}}};
  EXPECT_EQ(Text(j, "s"), "text");
  EXPECT_EQ(Text(j, "n"), "42");
  EXPECT_EQ(Text(j, "b"), "true");
  EXPECT_EQ(Text(j, "null"), "");
  EXPECT_EQ(Text(j, "missing"), "");
  EXPECT_EQ(Text(json::array(), "s"), "");
  EXPECT_EQ(Int(j, "n"), 42);
  EXPECT_EQ(Int(j, "f"), 1);
  EXPECT_EQ(Int(j, "s"), 0);
  EXPECT_EQ(Array(j, "a").size(), 2u);
  EXPECT_TRUE(Array(j, "s").empty());
  EXPECT_TRUE(Object(j, "a").is_object());
}

TEST(FormatTest, UploadProgressPrintsALinePerTenthOffATerminal) {
  std::ostringstream err;
  UploadProgress progress(err, "uploading b", /*interactive=*/false);
  for (uint64_t sent = 0; sent <= 1000; sent += 50) progress.Update(sent, 1000);
  progress.Finish();
  std::string text = err.str();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 11);  // 0%, 10%, ... 100%
  EXPECT_NE(text.find("uploading b [####################] 100% (1000 B of 1000 B)\n"),
            std::string::npos)
      << text;
}

}  // namespace
}  // namespace outpost::cli
