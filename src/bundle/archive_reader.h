// Internal to src/bundle: streaming reader of a bundle's .tar.zst container.
// zstd is decoded here (bounded window, counted bytes, decompression budget);
// libarchive parses only the tar layer and never touches the disk.
//
// Not thread-safe; one reader per bundle read.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "bundle/limits.h"
#include "common/status.h"

struct archive;
struct ZSTD_DCtx_s;

namespace outpost::bundle {

// Where compressed bytes come from.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Up to `size` bytes into `buffer`; 0 at the end. Errors are I/O errors.
  virtual absl::StatusOr<size_t> Read(char* buffer, size_t size) = 0;
};

// NotFound/PermissionDenied/... from errno, naming the path.
absl::StatusOr<std::unique_ptr<ByteSource>> OpenFileSource(const std::filesystem::path& path);
// Borrows `data`, which must outlive the source.
std::unique_ptr<ByteSource> MemorySource(std::string_view data);

struct ArchiveEntry {
  std::string path;
  uint64_t size = 0;
};

class ArchiveReader {
 public:
  // Initial decompression budget: enough for manifest.json, signature.json
  // and slack; raise it with SetDecompressedBudget once sizes are known.
  static absl::StatusOr<std::unique_ptr<ArchiveReader>> Open(std::unique_ptr<ByteSource> source,
                                                             const Limits& limits);
  ~ArchiveReader();
  ArchiveReader(const ArchiveReader&) = delete;
  ArchiveReader& operator=(const ArchiveReader&) = delete;

  // Moves to the next entry; false at the end of the archive. Only regular
  // files pass: links (kLink), devices, fifos, sockets, directories and
  // sparse files (kSpecialFile) are refused, then paths other than
  // manifest.json / signature.json that fail ValidateBundlePath. Corrupt
  // zstd or tar data: kMalformedArchive; over budget: kDecompressionBomb;
  // source errors keep their I/O status.
  absl::StatusOr<bool> Next(ArchiveEntry* entry);
  // The next Next() returns the current entry again (its data unread).
  void Unread();
  // The current entry's next block of data (borrowed until the next call);
  // empty at the entry's end.
  absl::StatusOr<std::string_view> ReadData();
  // The whole current entry (the caller has bounded its size).
  absl::StatusOr<std::string> ReadAll();

  // Refuse (kDecompressionBomb) once more than `bytes` of tar stream have
  // been decompressed in total.
  void SetDecompressedBudget(uint64_t bytes) { budget_ = bytes; }
  uint64_t compressed_bytes() const { return compressed_; }
  uint64_t decompressed_bytes() const { return decompressed_; }

 private:
  ArchiveReader(std::unique_ptr<ByteSource> source, const Limits& limits);
  static ssize_t ReadCallback(struct archive* a, void* self, const void** buffer);
  ssize_t Decompress(const void** buffer);
  absl::Status ArchiveError(std::string_view what);

  std::unique_ptr<ByteSource> source_;
  Limits limits_;
  struct archive* archive_ = nullptr;
  ZSTD_DCtx_s* zstd_ = nullptr;
  std::unique_ptr<char[]> in_buffer_;
  std::unique_ptr<char[]> out_buffer_;
  size_t in_size_ = 0;
  size_t in_pos_ = 0;
  bool source_done_ = false;
  size_t frame_remaining_ = 0;  // last ZSTD_decompressStream hint; != 0 mid-frame
  uint64_t compressed_ = 0;
  uint64_t decompressed_ = 0;
  uint64_t budget_ = 0;
  absl::Status callback_status_;  // why the read callback failed
  ArchiveEntry current_;
  bool pending_ = false;
  uint64_t data_offset_ = 0;
};

}  // namespace outpost::bundle
