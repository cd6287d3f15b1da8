#include "common/fault_injection.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <set>

namespace outpost::fault {
namespace {

class FaultInjectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    unsetenv("OUTPOST_CRASH_AT");
    unsetenv("OUTPOST_FAIL_WRITE_AT");
  }
  void TearDown() override {
    unsetenv("OUTPOST_CRASH_AT");
    unsetenv("OUTPOST_FAIL_WRITE_AT");
  }
};

TEST_F(FaultInjectionTest, ParsesPointAndCount) {
  std::string_view point;
  int nth = 0;
  EXPECT_TRUE(ParseFaultSpec("fetch.before_rename", &point, &nth));
  EXPECT_EQ(point, "fetch.before_rename");
  EXPECT_EQ(nth, 1);
  EXPECT_TRUE(ParseFaultSpec("fetch.part_written:12", &point, &nth));
  EXPECT_EQ(point, "fetch.part_written");
  EXPECT_EQ(nth, 12);
  EXPECT_FALSE(ParseFaultSpec("", &point, &nth));
  EXPECT_FALSE(ParseFaultSpec("x:", &point, &nth));
  EXPECT_FALSE(ParseFaultSpec("x:0", &point, &nth));
  EXPECT_FALSE(ParseFaultSpec("x:2b", &point, &nth));
  EXPECT_FALSE(ParseFaultSpec(":3", &point, &nth));
}

TEST_F(FaultInjectionTest, CrashPointKillsWithSigkillWhenNamed) {
  EXPECT_EXIT(
      {
        setenv("OUTPOST_CRASH_AT", "fetch.before_rename", 1);
        OUTPOST_CRASH_AT("fetch.part_written");
        OUTPOST_CRASH_AT("fetch.before_rename");
        _exit(0);
      },
      ::testing::KilledBySignal(SIGKILL), "");
}

TEST_F(FaultInjectionTest, CrashPointWaitsForTheNthHit) {
  EXPECT_EXIT(
      {
        setenv("OUTPOST_CRASH_AT", "fetch.part_written:3", 1);
        OUTPOST_CRASH_AT("fetch.part_written");
        OUTPOST_CRASH_AT("fetch.part_written");
        _exit(7);
      },
      ::testing::ExitedWithCode(7), "");
  EXPECT_EXIT(
      {
        setenv("OUTPOST_CRASH_AT", "fetch.part_written:3", 1);
        for (int i = 0; i < 3; ++i) OUTPOST_CRASH_AT("fetch.part_written");
        _exit(7);
      },
      ::testing::KilledBySignal(SIGKILL), "");
}

TEST_F(FaultInjectionTest, UnsetOrMalformedNeverCrashes) {
  OUTPOST_CRASH_AT("fetch.after_rename");
  setenv("OUTPOST_CRASH_AT", "fetch.after_rename:0", 1);
  OUTPOST_CRASH_AT("fetch.after_rename");
  setenv("OUTPOST_CRASH_AT", "fetch.after_renamed", 1);
  OUTPOST_CRASH_AT("fetch.after_rename");
  SUCCEED();
}

TEST_F(FaultInjectionTest, FailWriteReturnsEnospcFromTheNthHitOn) {
  EXPECT_TRUE(OUTPOST_FAIL_WRITE_AT("fetch.part_write").ok());
  setenv("OUTPOST_FAIL_WRITE_AT", "fetch.part_write:2", 1);
  EXPECT_TRUE(OUTPOST_FAIL_WRITE_AT("fetch.part_write").ok());
  absl::Status second = OUTPOST_FAIL_WRITE_AT("fetch.part_write");
  EXPECT_EQ(second.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(MessageOf(second).find("No space left on device"), std::string_view::npos);
  EXPECT_FALSE(OUTPOST_FAIL_WRITE_AT("fetch.part_write").ok());  // a full disk stays full
  // A new value restarts the count.
  setenv("OUTPOST_FAIL_WRITE_AT", "fetch.part_write:1", 1);
  EXPECT_FALSE(OUTPOST_FAIL_WRITE_AT("fetch.part_write").ok());
  unsetenv("OUTPOST_FAIL_WRITE_AT");
  EXPECT_TRUE(OUTPOST_FAIL_WRITE_AT("fetch.part_write").ok());
  // So does unsetting and setting the same value again.
  setenv("OUTPOST_FAIL_WRITE_AT", "fetch.part_write:2", 1);
  EXPECT_TRUE(OUTPOST_FAIL_WRITE_AT("fetch.part_write").ok());
  EXPECT_FALSE(OUTPOST_FAIL_WRITE_AT("fetch.part_write").ok());
  unsetenv("OUTPOST_FAIL_WRITE_AT");
  EXPECT_TRUE(OUTPOST_FAIL_WRITE_AT("fetch.part_write").ok());
  setenv("OUTPOST_FAIL_WRITE_AT", "fetch.part_write:2", 1);
  EXPECT_TRUE(OUTPOST_FAIL_WRITE_AT("fetch.part_write").ok());
}

TEST_F(FaultInjectionTest, EveryListedPointIsUnique) {
  std::set<std::string_view> seen;
  for (std::string_view p : kCrashPoints) EXPECT_TRUE(seen.insert(p).second) << p;
  for (std::string_view p : kFailWritePoints) EXPECT_TRUE(seen.insert(p).second) << p;
}

}  // namespace
}  // namespace outpost::fault
