// Content-addressed artifact store for the hub (release bundles), on disk:
//
//   <root>/sha256/ab/abcdef...   one read-only file per blob, named by the
//                                SHA-256 of its content (lowercase hex)
//   <root>/tmp/                  uploads in progress
//
// A blob is written to a temporary file while it is hashed, fsynced, then
// renamed to its name and the directory fsynced (see common/atomic_file.h):
// after a power cut a blob is either whole under its name or absent, and
// once Commit/Put returns OK it is on disk. Content and name always agree,
// so a second upload of the same bytes is recognised and costs no space.
//
// Several hub processes may share one root (a shared volume): writers
// never overwrite each other's files, and temporary files are only cleaned
// up when a day old.
//
// Errors common to the methods: InvalidArgument (a name that is not 64
// lowercase hex digits), and errno-based errors naming the path
// (PermissionDenied, ResourceExhausted for a full disk, ...).
//
// Thread safety: BlobStore is thread-safe. A BlobWriter or Blob is used by
// one thread at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <istream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/sha256.h"
#include "common/status.h"

namespace outpost::hub {

struct BlobInfo {
  std::string sha256;
  int64_t size = 0;
  bool already_present = false;  // the same content was stored before
};

// An upload in progress. Destroying it without Commit() discards the
// temporary file.
class BlobWriter {
 public:
  ~BlobWriter();
  BlobWriter(const BlobWriter&) = delete;
  BlobWriter& operator=(const BlobWriter&) = delete;

  // Appends to the blob. Errors: from write(2); FailedPrecondition after
  // Commit or a failed Append.
  absl::Status Append(std::string_view data);
  // Bytes appended so far.
  int64_t size() const { return size_; }

  // Makes the blob durable under its SHA-256 and returns it. With
  // expected_sha256, the content must hash to it or nothing is stored.
  // Errors: DataLoss (content does not match expected_sha256: a corrupt
  // upload), InvalidArgument (expected_sha256 is not 64 lowercase hex
  // digits), FailedPrecondition (already committed, or Append failed). The
  // upload is discarded on any error.
  absl::StatusOr<BlobInfo> Commit(std::optional<std::string_view> expected_sha256 = std::nullopt);

 private:
  friend class BlobStore;
  BlobWriter(std::filesystem::path root, std::filesystem::path temp, int fd);
  void Discard();

  const std::filesystem::path root_;
  const std::filesystem::path temp_;
  int fd_;
  bool failed_ = false;
  int64_t size_ = 0;
  Sha256 hash_;
};

// A stored blob open for reading; the content cannot change under it (a
// concurrent Remove only unlinks the name).
class Blob {
 public:
  Blob(Blob&& other) noexcept;
  Blob& operator=(Blob&& other) noexcept;
  ~Blob();

  int64_t size() const { return size_; }
  // The open descriptor (for sendfile); owned by the Blob.
  int fd() const { return fd_; }
  // Reads up to `length` bytes at `offset` (HTTP Range); fewer only at the
  // end. Errors: InvalidArgument (offset outside [0, size]), from pread(2).
  absl::StatusOr<std::string> ReadAt(int64_t offset, size_t length) const;

 private:
  friend class BlobStore;
  Blob(int fd, int64_t size) : fd_(fd), size_(size) {}

  int fd_;
  int64_t size_;
};

class BlobStore {
 public:
  // Creates <root>, <root>/sha256 and <root>/tmp as needed, and removes
  // temporary files older than a day (uploads a crash abandoned).
  // Errors: from mkdir(2) (PermissionDenied, NotFound, ...).
  static absl::StatusOr<std::unique_ptr<BlobStore>> Open(const std::filesystem::path& root);

  // Starts an upload.
  absl::StatusOr<std::unique_ptr<BlobWriter>> NewWriter();
  // Whole-blob conveniences over NewWriter/Append/Commit (same errors).
  absl::StatusOr<BlobInfo> Put(std::string_view data,
                               std::optional<std::string_view> expected_sha256 = std::nullopt);
  absl::StatusOr<BlobInfo> PutStream(
      std::istream& in, std::optional<std::string_view> expected_sha256 = std::nullopt);
  // Errors also: NotFound (no such file).
  absl::StatusOr<BlobInfo> PutFile(const std::filesystem::path& file,
                                   std::optional<std::string_view> expected_sha256 = std::nullopt);

  // Errors: NotFound.
  absl::StatusOr<Blob> Get(std::string_view sha256) const;
  absl::StatusOr<bool> Has(std::string_view sha256) const;
  // Errors: NotFound.
  absl::StatusOr<int64_t> SizeOf(std::string_view sha256) const;
  // Re-hashes a stored blob. Errors: NotFound, DataLoss (the content no
  // longer matches its name: the disk corrupted it; remove and re-upload).
  absl::Status Verify(std::string_view sha256) const;
  // Unlinks the blob (readers holding it open keep reading). Errors: NotFound.
  absl::Status Remove(std::string_view sha256);
  // Every stored blob's SHA-256, sorted (for garbage collection).
  absl::StatusOr<std::vector<std::string>> List() const;

  const std::filesystem::path& root() const { return root_; }

 private:
  explicit BlobStore(std::filesystem::path root) : root_(std::move(root)) {}

  const std::filesystem::path root_;
};

// Whether `s` is a SHA-256 in 64 lowercase hex digits.
bool IsSha256Hex(std::string_view s);

}  // namespace outpost::hub
