#include "bundle/archive_reader.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <cstring>

#include "bundle/manifest.h"
#include "bundle/reason.h"

namespace outpost::bundle {
namespace {

// Big buffers: one read() and one decompress call move a megabyte, so a
// 100 MB bundle costs a few hundred syscalls, not tens of thousands.
constexpr size_t kInBufferSize = size_t{1} << 20;
constexpr size_t kOutBufferSize = size_t{1} << 20;
// Decompressed bytes allowed besides manifest.json before the manifest's
// sizes are known: signature.json, tar headers, padding, read-ahead.
constexpr uint64_t kHeadSlack = uint64_t{4} << 20;

class FileSource : public ByteSource {
 public:
  FileSource(int fd, std::filesystem::path path) : fd_(fd), path_(std::move(path)) {}
  ~FileSource() override { ::close(fd_); }

  absl::StatusOr<size_t> Read(char* buffer, size_t size) override {
    while (true) {
      ssize_t n = ::read(fd_, buffer, size);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno != EINTR) return absl::ErrnoToStatus(errno, StrCat("cannot read ", path_.string()));
    }
  }

 private:
  int fd_;
  std::filesystem::path path_;
};

class InMemorySource : public ByteSource {
 public:
  explicit InMemorySource(std::string_view data) : data_(data) {}
  absl::StatusOr<size_t> Read(char* buffer, size_t size) override {
    size_t n = std::min(size, data_.size());
    std::memcpy(buffer, data_.data(), n);
    data_.remove_prefix(n);
    return n;
  }

 private:
  std::string_view data_;
};

std::string_view TypeName(mode_t type) {
  switch (type) {
    case AE_IFDIR:
      return "a directory";
    case AE_IFCHR:
      return "a character device";
    case AE_IFBLK:
      return "a block device";
    case AE_IFIFO:
      return "a fifo";
    case AE_IFSOCK:
      return "a socket";
    default:
      return "not a regular file";
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ByteSource>> OpenFileSource(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, StrCat("cannot open ", path.string()));
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  return std::make_unique<FileSource>(fd, path);
}

std::unique_ptr<ByteSource> MemorySource(std::string_view data) {
  return std::make_unique<InMemorySource>(data);
}

ArchiveReader::ArchiveReader(std::unique_ptr<ByteSource> source, const Limits& limits)
    : source_(std::move(source)),
      limits_(limits),
      in_buffer_(new char[kInBufferSize]),
      out_buffer_(new char[kOutBufferSize]),
      budget_(limits.max_manifest_bytes + kHeadSlack) {}

ArchiveReader::~ArchiveReader() {
  if (archive_ != nullptr) archive_read_free(archive_);
  if (zstd_ != nullptr) ZSTD_freeDCtx(zstd_);
}

absl::StatusOr<std::unique_ptr<ArchiveReader>> ArchiveReader::Open(
    std::unique_ptr<ByteSource> source, const Limits& limits) {
  std::unique_ptr<ArchiveReader> reader(new ArchiveReader(std::move(source), limits));
  reader->zstd_ = ZSTD_createDCtx();
  if (reader->zstd_ == nullptr)
    return absl::ResourceExhaustedError("cannot allocate a zstd decoder");
  size_t set = ZSTD_DCtx_setParameter(reader->zstd_, ZSTD_d_windowLogMax, limits.max_window_log);
  if (ZSTD_isError(set)) {
    return absl::InvalidArgumentError(
        StrCat("max_window_log ", limits.max_window_log, ": ", ZSTD_getErrorName(set)));
  }
  reader->archive_ = archive_read_new();
  if (reader->archive_ == nullptr)
    return absl::ResourceExhaustedError("cannot allocate libarchive");
  // Tar only: the zstd layer is ours, and no other format may sneak in.
  archive_read_support_format_tar(reader->archive_);
  if (archive_read_open(reader->archive_, reader.get(), nullptr, &ArchiveReader::ReadCallback,
                        nullptr) != ARCHIVE_OK) {
    return reader->ArchiveError("not a bundle (.tar.zst)");
  }
  return reader;
}

ssize_t ArchiveReader::ReadCallback(struct archive*, void* self, const void** buffer) {
  return static_cast<ArchiveReader*>(self)->Decompress(buffer);
}

ssize_t ArchiveReader::Decompress(const void** buffer) {
  if (!callback_status_.ok()) return -1;
  while (true) {
    if (in_pos_ == in_size_ && !source_done_) {
      absl::StatusOr<size_t> n = source_->Read(in_buffer_.get(), kInBufferSize);
      if (!n.ok()) {
        callback_status_ = n.status();
        return -1;
      }
      in_pos_ = 0;
      in_size_ = *n;
      compressed_ += *n;
      if (*n == 0) source_done_ = true;
    }
    if (in_pos_ == in_size_ && source_done_) {
      if (frame_remaining_ != 0) {
        callback_status_ = Refuse(Reason::kMalformedArchive,
                                  "the zstd stream is truncated (incomplete download?)");
        return -1;
      }
      return 0;
    }
    ZSTD_inBuffer in{in_buffer_.get(), in_size_, in_pos_};
    ZSTD_outBuffer out{out_buffer_.get(), kOutBufferSize, 0};
    size_t result = ZSTD_decompressStream(zstd_, &out, &in);
    in_pos_ = in.pos;
    if (ZSTD_isError(result)) {
      if (ZSTD_getErrorCode(result) == ZSTD_error_frameParameter_windowTooLarge) {
        callback_status_ = Refuse(Reason::kDecompressionBomb,
                                  StrCat("the zstd stream needs a window over 2^",
                                         limits_.max_window_log, " bytes of decoder memory"));
      } else {
        callback_status_ = Refuse(Reason::kMalformedArchive,
                                  StrCat("not a valid zstd stream: ", ZSTD_getErrorName(result)));
      }
      return -1;
    }
    frame_remaining_ = result;
    if (out.pos == 0) continue;
    decompressed_ += out.pos;
    if (decompressed_ > budget_) {
      callback_status_ =
          Refuse(Reason::kDecompressionBomb,
                 StrCat("the archive decompresses to more than ", budget_,
                        " bytes, more than its manifest accounts for (limit max_unpacked_bytes ",
                        limits_.max_unpacked_bytes, ")"));
      return -1;
    }
    if (decompressed_ > limits_.ratio_check_after_bytes &&
        static_cast<double>(decompressed_) >
            limits_.max_compression_ratio * static_cast<double>(compressed_)) {
      callback_status_ =
          Refuse(Reason::kDecompressionBomb,
                 StrCat("compression ratio over the limit ", limits_.max_compression_ratio, " (",
                        decompressed_, " bytes from ", compressed_, ")"));
      return -1;
    }
    *buffer = out_buffer_.get();
    return static_cast<ssize_t>(out.pos);
  }
}

absl::Status ArchiveReader::ArchiveError(std::string_view what) {
  if (!callback_status_.ok()) return callback_status_;
  const char* message = archive_error_string(archive_);
  return Refuse(Reason::kMalformedArchive,
                StrCat(what, ": ", message != nullptr ? message : "unknown libarchive error"));
}

absl::StatusOr<bool> ArchiveReader::Next(ArchiveEntry* entry) {
  if (pending_) {
    pending_ = false;
    *entry = current_;
    return true;
  }
  struct archive_entry* header = nullptr;
  int result = archive_read_next_header(archive_, &header);
  if (result == ARCHIVE_EOF) return false;
  // ARCHIVE_WARN too: libarchive warns about damaged headers it skipped.
  if (result != ARCHIVE_OK) return ArchiveError("bad tar header");
  const char* name = archive_entry_pathname_utf8(header);
  if (name == nullptr) name = archive_entry_pathname(header);
  if (name == nullptr) return Refuse(Reason::kInvalidPath, "a tar entry has no name");
  std::string path(name);
  std::string quoted = StrCat("entry '", path, "'");

  const char* hardlink = archive_entry_hardlink(header);
  if (hardlink != nullptr) {
    return Refuse(Reason::kLink, StrCat(quoted, " is a hardlink to '", hardlink,
                                        "'; bundles hold regular files only"));
  }
  mode_t type = archive_entry_filetype(header);
  if (type == AE_IFLNK) {
    const char* target = archive_entry_symlink(header);
    return Refuse(Reason::kLink, StrCat(quoted, " is a symlink to '", target ? target : "",
                                        "'; bundles hold regular files only"));
  }
  if (type != AE_IFREG) {
    return Refuse(Reason::kSpecialFile,
                  StrCat(quoted, " is ", TypeName(type),
                         "; bundles hold regular files only (directories are implied by paths)"));
  }
  if (archive_entry_sparse_count(header) > 0) {
    return Refuse(Reason::kSpecialFile, StrCat(quoted, " is a sparse file"));
  }
  if (path != kManifestName && path != kSignatureName) {
    absl::Status valid = ValidateBundlePath(path);
    if (!valid.ok()) return Annotate(valid, "archive");
  }
  if (!archive_entry_size_is_set(header) || archive_entry_size(header) < 0) {
    return Refuse(Reason::kMalformedArchive, StrCat(quoted, " has no valid size"));
  }
  current_.path = std::move(path);
  current_.size = static_cast<uint64_t>(archive_entry_size(header));
  data_offset_ = 0;
  *entry = current_;
  return true;
}

void ArchiveReader::Unread() { pending_ = true; }

absl::StatusOr<std::string_view> ArchiveReader::ReadData() {
  while (true) {
    const void* block = nullptr;
    size_t size = 0;
    la_int64_t offset = 0;
    int result = archive_read_data_block(archive_, &block, &size, &offset);
    if (result == ARCHIVE_EOF) return std::string_view();
    if (result != ARCHIVE_OK) return ArchiveError(StrCat("cannot read '", current_.path, "'"));
    if (offset < 0 || static_cast<uint64_t>(offset) != data_offset_) {
      return Refuse(Reason::kSpecialFile, StrCat("entry '", current_.path, "' has holes (sparse)"));
    }
    if (size == 0) continue;
    data_offset_ += size;
    return std::string_view(static_cast<const char*>(block), size);
  }
}

absl::StatusOr<std::string> ArchiveReader::ReadAll() {
  std::string out;
  out.reserve(current_.size);
  while (true) {
    ASSIGN_OR_RETURN(std::string_view block, ReadData());
    if (block.empty()) break;
    out.append(block);
  }
  return out;
}

}  // namespace outpost::bundle
