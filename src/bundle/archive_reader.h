// Internal to src/bundle: streaming reader of a bundle's .tar.zst container.
// zstd is decoded here (bounded window, counted bytes, decompression budget)
// and the tar layer is parsed here too: POSIX ustar with pax extended headers
// (path, linkpath, size) and GNU long names, as written by ArchiveWriter,
// libarchive, GNU tar and Python's tarfile. Nothing touches the disk.
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

  // Moves to the next entry (skipping what is left of the current one);
  // false at the end-of-archive marker. Only regular
  // files pass: links (kLink), devices, fifos, sockets, directories and
  // sparse files (kSpecialFile) are refused, then paths other than
  // manifest.json / signature.json that fail ValidateBundlePath. Corrupt
  // zstd or tar data (bad checksum, bad numbers, a pax header over 1 MiB,
  // a stream that ends without the end-of-archive marker):
  // kMalformedArchive; over budget: kDecompressionBomb; source errors keep
  // their I/O status.
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
  // Refills out_buffer_; false at the end of the zstd stream.
  absl::StatusOr<bool> Decompress();
  // Up to `max` bytes of tar stream (borrowed until the next call); empty
  // at its end.
  absl::StatusOr<std::string_view> Pull(size_t max);
  // Exactly `n` bytes of tar stream into `out`; *at_end (if given) is set
  // when the stream ended before the first byte.
  absl::Status ReadExact(char* out, size_t n, bool* at_end = nullptr);
  absl::Status Skip(uint64_t n);
  // Reads a pax/GNU metadata entry's data (at most kMaxMetadataBytes).
  absl::StatusOr<std::string> ReadMetadata(uint64_t size, std::string_view what);

  std::unique_ptr<ByteSource> source_;
  Limits limits_;
  ZSTD_DCtx_s* zstd_ = nullptr;
  std::unique_ptr<char[]> in_buffer_;
  std::unique_ptr<char[]> out_buffer_;
  size_t in_size_ = 0;
  size_t in_pos_ = 0;
  bool source_done_ = false;
  size_t frame_remaining_ = 0;  // last ZSTD_decompressStream hint; != 0 mid-frame
  size_t out_pos_ = 0;          // unread tar bytes are out_buffer_[out_pos_, out_size_)
  size_t out_size_ = 0;
  uint64_t compressed_ = 0;
  uint64_t decompressed_ = 0;
  uint64_t budget_ = 0;
  ArchiveEntry current_;
  bool pending_ = false;
  bool ended_ = false;           // the end-of-archive marker was read
  uint64_t data_remaining_ = 0;  // unread bytes of the current entry
  uint64_t padding_ = 0;         // zero bytes after them, to the next 512 boundary
};

}  // namespace outpost::bundle
