// The `outpost` command line (docs/cli.md): keys and bundles
// (docs/bundles.md "CLI"), and the hub's admin API (hub_commands.h).
//
// Exit codes, for every command:
//   0  success
//   1  refused: the bundle failed verification, or the hub answered with an
//      error or the operation failed (a watched rollout halted); the reason
//      (the hub's own message) is printed
//   2  usage error: bad flags, input files that are invalid (a key, a
//      self-test file, an existing output that must not be overwritten), no
//      hub URL or API token
//   3  I/O or system error (missing file, no space, permission denied), or
//      the hub cannot be reached (refused, timed out, TLS not trusted)
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
