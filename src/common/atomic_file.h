// Durable file updates for state that must survive a power cut at any
// instant (DESIGN.md "State and durability"): a reader sees either the old
// content or the new, never a mix, and once a call returns OK the change is
// on disk.
//
// Thread safety: the functions are thread-safe; concurrent writers of the
// same path each leave a whole file, the last rename wins.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <string_view>

#include "common/status.h"

namespace outpost {

// Replaces `path` with `data`: writes a temporary file in the same
// directory, fsyncs it, renames it over `path`, fsyncs the directory. The
// file gets exactly `mode` (not filtered by the umask). On error `path` is
// unchanged and the temporary file is removed.
// Errors (errno mapped by absl::ErrnoToStatus, message names the path):
// NotFound (directory missing), PermissionDenied, ResourceExhausted (ENOSPC,
// EDQUOT), others as Internal/FailedPrecondition.
absl::Status WriteFileAtomic(const std::filesystem::path& path, std::string_view data,
                             mode_t mode = 0644);

// Reads a whole regular file. Errors: NotFound, PermissionDenied,
// FailedPrecondition (not a regular file), others from errno.
absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path);

// Points `link` at `target` (created if missing, replaced if it is a
// symlink): creates a symlink under a temporary name in the same directory,
// renames it over `link`, fsyncs the directory. A reader resolving `link`
// always sees the old or the new target. `target` is stored as given
// (relative targets resolve against link's directory). Errors: NotFound
// (directory missing), FailedPrecondition (`link` is a directory), others
// from errno.
absl::Status ReplaceSymlinkAtomic(const std::filesystem::path& link,
                                  const std::filesystem::path& target);

// fsyncs a directory so a rename or create in it is durable.
absl::Status FsyncDirectory(const std::filesystem::path& dir);

}  // namespace outpost
