// The `outpost` command line (docs/bundles.md "CLI"): keys and bundles.
//
// Exit codes, for every command:
//   0  success
//   1  the bundle was refused (verification failed; the reason is printed)
//   2  usage error: bad flags, or input files that are invalid (a key, a
//      self-test file, an existing output that must not be overwritten)
//   3  I/O or system error (missing file, no space, permission denied)
#pragma once

#include <iosfwd>

#include "common/status.h"

namespace outpost::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRefused = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitIo = 3;

// The exit code for a command that ended with `status`.
int ExitCodeFor(const absl::Status& status);

// Parses `argv` and runs the command, writing results to `out` and
// diagnostics to `err`. Returns the exit code.
int RunOutpost(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

}  // namespace outpost::cli
