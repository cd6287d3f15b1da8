#include "agent/hub_client.h"

#include <gtest/gtest.h>

namespace outpost::agent {
namespace {

TEST(InstallWindowTest, TimesOfDayParseStrictly) {
  EXPECT_EQ(ParseTimeOfDay("00:00"), 0);
  EXPECT_EQ(ParseTimeOfDay("02:30"), 2 * 3600 + 30 * 60);
  EXPECT_EQ(ParseTimeOfDay("23:59:59"), 86399);
  for (const char* bad : {"", "2:30", "24:00", "12:60", "12:00:60", "aa:bb", "12:00:00:00", "12"}) {
    EXPECT_FALSE(ParseTimeOfDay(bad).has_value()) << bad;
  }
}

TEST(InstallWindowTest, WindowsMayWrapPastMidnight) {
  InstallWindow night{22 * 3600, 4 * 3600, "22:00-04:00"};
  EXPECT_TRUE(night.Contains(23 * 3600));
  EXPECT_TRUE(night.Contains(0));
  EXPECT_TRUE(night.Contains(3 * 3600 + 3599));
  EXPECT_FALSE(night.Contains(4 * 3600));
  EXPECT_FALSE(night.Contains(12 * 3600));
  InstallWindow morning{2 * 3600, 4 * 3600, "02:00-04:00"};
  EXPECT_TRUE(morning.Contains(2 * 3600));
  EXPECT_FALSE(morning.Contains(4 * 3600));
  EXPECT_FALSE(morning.Contains(1 * 3600));
  EXPECT_TRUE((InstallWindow{5, 5, "all day"}.Contains(12345)));
}

}  // namespace
}  // namespace outpost::agent
