// Internal to src/bundle: writes a bundle's .tar.zst container: a POSIX
// ustar archive, with a pax extended header only for an entry that needs one
// (a path that does not fit ustar's name/prefix fields or is not ASCII, a
// file of 8 GiB or more), compressed by zstd (level, checksums and worker
// threads under our control). The same layout libarchive's
// "pax_restricted" format wrote for earlier Outpost versions. Output goes to a temporary file
// beside the destination and appears under its name only on Commit (fsync, rename, fsync
// directory).
//
// Not thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

struct ZSTD_CCtx_s;

namespace outpost::bundle {

class ArchiveWriter {
 public:
  // `level`: zstd level 1..19. `mtime`: the time stamped on every entry
  // (a fixed value keeps builds reproducible). Errors: I/O errors from errno
  // (the directory of `path` must exist), InvalidArgument for the level.
  static absl::StatusOr<std::unique_ptr<ArchiveWriter>> Create(const std::filesystem::path& path,
                                                               int level, int64_t mtime);
  // Removes the temporary file unless Commit succeeded.
  ~ArchiveWriter();
  ArchiveWriter(const ArchiveWriter&) = delete;
  ArchiveWriter& operator=(const ArchiveWriter&) = delete;

  // A regular file of exactly `size` bytes, mode 0644 (0755 if executable).
  absl::Status BeginFile(std::string_view path, uint64_t size, bool executable);
  absl::Status Write(std::string_view data);
  // FailedPrecondition when fewer or more than `size` bytes were written.
  absl::Status EndFile();
  absl::Status AddFile(std::string_view path, std::string_view data, bool executable = false);

  // Ends the archive and the zstd stream, then makes the file durable and
  // visible at `path` (mode 0644).
  absl::Status Commit();
  // Compressed bytes written so far.
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  ArchiveWriter() = default;
  absl::Status Compress(std::string_view data, bool end);
  absl::Status WriteOut(std::string_view data);
  // One 512-byte ustar header.
  absl::Status WriteHeader(std::string_view name, char type, uint64_t size, int mode);

  std::filesystem::path path_;
  std::string temp_path_;
  int fd_ = -1;
  ZSTD_CCtx_s* zstd_ = nullptr;
  std::unique_ptr<char[]> out_buffer_;
  int64_t mtime_ = 0;
  uint64_t entry_size_ = 0;
  uint64_t entry_written_ = 0;
  std::string entry_path_;
  bool in_entry_ = false;
  bool committed_ = false;
  uint64_t bytes_written_ = 0;
};

}  // namespace outpost::bundle
