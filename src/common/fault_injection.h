// Deterministic fault points for the fault-injection suite (tests/): a test
// runs the agent with an environment variable naming a point, and the agent
// dies or fails there, so every crash window of the update path can be
// replayed on purpose instead of by luck.
//
//   OUTPOST_CRASH_AT=<point>[:N]       SIGKILL the process at the N-th
//                                      (default first) time it reaches <point>.
//   OUTPOST_FAIL_WRITE_AT=<point>[:N]  from the N-th time on, the write at
//                                      <point> fails with ResourceExhausted
//                                      ("No space left on device") instead of
//                                      writing.
//
// Both are compiled in only with OUTPOST_TEST_HOOKS (CMake option, on by
// default); without it the macros cost nothing and read no environment.
// The variables are read at every hit (control-plane paths only), so a test
// may set and clear them in-process; the hit count restarts whenever the
// variable's value changes.
//
// Point names are checked at compile time against the lists below: a new
// point must be added here, which keeps this the complete, documented list.
//
// Crash points:
//   fetch.part_written    after each chunk appended to <dest>.part
//   fetch.before_rename   download verified, before <dest>.part -> <dest>
//   fetch.after_rename    after the rename and directory fsync
//   bundle.mid_unpack     bundle::Unpack: after each payload file is written
//                         and fsynced (the first hit leaves a half-unpacked
//                         tree)
//   bundle.before_fsync   bundle::Unpack: every file written, directories
//                         not yet fsynced
//   updater.*             one per step boundary of an install (updater.h
//                         lists where each one fires)
// Write points:
//   fetch.part_write      each chunk appended to <dest>.part
//   bundle.unpack_write   each chunk bundle::Unpack writes to a payload file
//   updater.state_write   each write of <state>/state.json
//
// Thread safety: the functions are thread-safe.
#pragma once

#include <string_view>

#include "common/status.h"

namespace outpost::fault {

inline constexpr std::string_view kCrashPoints[] = {
    // agent/fetcher.cc
    "fetch.part_written",
    "fetch.before_rename",
    "fetch.after_rename",
    // bundle/bundle.cc (Unpack)
    "bundle.mid_unpack",
    "bundle.before_fsync",
    // agent/updater.cc, in install order
    "updater.after_download",
    "updater.after_verify",
    "updater.before_unpack",
    "updater.after_unpack",
    "updater.after_start",
    "updater.after_ready",
    "updater.after_health",
    "updater.after_soak",
    "updater.before_switch",
    "updater.after_switch",
    "updater.before_commit_record",
    "updater.after_commit",
    "updater.rollback_started",
    "updater.mid_rollback",
    "updater.after_rollback",
    // agent/hub_link.cc: a telemetry batch sent, not yet acknowledged
    "telemetry.after_send",
    // agent/telemetry_queue.cc: pipeline results queued, not yet deleted
    // from the results database
    "telemetry.results_imported",
};

inline constexpr std::string_view kFailWritePoints[] = {
    "fetch.part_write",
    "bundle.unpack_write",
    "updater.state_write",
};

template <size_t N>
consteval std::string_view CheckedPoint(std::string_view name, const std::string_view (&known)[N]) {
  for (std::string_view k : known) {
    if (k == name) return name;
  }
  // Not a constant expression: a compile error naming this line.
  throw "unknown fault point: add it to the list in common/fault_injection.h";
}

// What the macros call. Exposed for tests; use the macros in code.
void CrashPoint(std::string_view name);
absl::Status FailWritePoint(std::string_view name);

// Parses "<point>[:N]"; false when malformed (N missing, zero or not a number).
bool ParseFaultSpec(std::string_view spec, std::string_view* point, int* nth);

}  // namespace outpost::fault

// CheckedPoint is consteval, so an unknown name fails the build.
#if defined(OUTPOST_TEST_HOOKS) && OUTPOST_TEST_HOOKS
#define OUTPOST_CRASH_AT(name) \
  ::outpost::fault::CrashPoint(::outpost::fault::CheckedPoint(name, ::outpost::fault::kCrashPoints))
#define OUTPOST_FAIL_WRITE_AT(name) \
  ::outpost::fault::FailWritePoint( \
      ::outpost::fault::CheckedPoint(name, ::outpost::fault::kFailWritePoints))
#else
#define OUTPOST_CRASH_AT(name) \
  static_cast<void>(::outpost::fault::CheckedPoint(name, ::outpost::fault::kCrashPoints))
#define OUTPOST_FAIL_WRITE_AT(name)                                                             \
  (static_cast<void>(::outpost::fault::CheckedPoint(name, ::outpost::fault::kFailWritePoints)), \
   ::absl::OkStatus())
#endif
