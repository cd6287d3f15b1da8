#include "bundle/archive_reader.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>
#include <optional>

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
constexpr size_t kBlock = 512;
// A pax extended header or GNU long name larger than this is refused (as
// libarchive does): names are short, and nothing else in one matters.
constexpr uint64_t kMaxMetadataBytes = uint64_t{1} << 20;

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
    if (n > 0) std::memcpy(buffer, data_.data(), n);
    data_.remove_prefix(n);
    return n;
  }

 private:
  std::string_view data_;
};

std::string_view TypeName(char type) {
  switch (type) {
    case '5':
    case 'D':
      return "a directory";
    case '3':
      return "a character device";
    case '4':
      return "a block device";
    case '6':
      return "a fifo";
    case 'S':
      return "a sparse file";
    default:
      return "not a regular file";
  }
}

// A NUL-terminated (or full-width) header field.
std::string_view Field(const char* header, size_t offset, size_t width) {
  std::string_view field(header + offset, width);
  return field.substr(0, field.find('\0'));
}

// A numeric header field: octal digits (leading spaces, ended by space or
// NUL), or GNU base-256 (high bit of the first byte set).
std::optional<uint64_t> Number(const char* header, size_t offset, size_t width) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(header + offset);
  if (bytes[0] & 0x80) {
    if (bytes[0] != 0x80) return std::nullopt;  // negative, or more than 64 bits of data
    uint64_t value = 0;
    for (size_t i = 1; i < width; ++i) {
      if (value >> 56) return std::nullopt;
      value = (value << 8) | bytes[i];
    }
    return value;
  }
  size_t i = 0;
  while (i < width && bytes[i] == ' ') ++i;
  uint64_t value = 0;
  for (; i < width && bytes[i] >= '0' && bytes[i] <= '7'; ++i) {
    if (value >> 60) return std::nullopt;
    value = value * 8 + (bytes[i] - '0');
  }
  for (; i < width; ++i) {
    if (bytes[i] != ' ' && bytes[i] != '\0') return std::nullopt;
  }
  return value;
}

bool ChecksumMatches(const char* header) {
  std::optional<uint64_t> stored = Number(header, 148, 8);
  if (!stored) return false;
  // The field itself counts as spaces; old writers summed signed chars.
  int64_t unsigned_sum = 0, signed_sum = 0;
  for (size_t i = 0; i < kBlock; ++i) {
    bool in_field = i >= 148 && i < 156;
    unsigned_sum += in_field ? ' ' : static_cast<unsigned char>(header[i]);
    signed_sum += in_field ? ' ' : static_cast<signed char>(header[i]);
  }
  return *stored == static_cast<uint64_t>(unsigned_sum) ||
         static_cast<int64_t>(*stored) == signed_sum;
}

uint64_t PaddingFor(uint64_t size) { return (kBlock - size % kBlock) % kBlock; }

// What pax extended headers ('x') say about the next entry.
struct PaxOverrides {
  std::optional<std::string> path;
  std::optional<std::string> linkpath;
  std::optional<uint64_t> size;
  bool sparse = false;
};

// Parses "LEN key=value\n" records.
absl::Status ParsePax(std::string_view data, PaxOverrides* out) {
  while (!data.empty()) {
    size_t space = data.find(' ');
    size_t length = 0;
    auto [p, ec] = std::from_chars(data.data(), data.data() + std::min(space, data.size()), length);
    if (space == std::string_view::npos || ec != std::errc() || p != data.data() + space ||
        length <= space + 1 || length > data.size() || data[length - 1] != '\n') {
      return Refuse(Reason::kMalformedArchive, "a pax extended header has a malformed record");
    }
    std::string_view record = data.substr(space + 1, length - space - 2);
    data.remove_prefix(length);
    size_t equals = record.find('=');
    if (equals == std::string_view::npos) {
      return Refuse(Reason::kMalformedArchive, "a pax extended header record has no '='");
    }
    std::string_view key = record.substr(0, equals);
    std::string_view value = record.substr(equals + 1);
    if (key == "path") {
      out->path = std::string(value);
    } else if (key == "linkpath") {
      out->linkpath = std::string(value);
    } else if (key == "size") {
      uint64_t size = 0;
      auto [q, ec2] = std::from_chars(value.data(), value.data() + value.size(), size);
      if (value.empty() || ec2 != std::errc() || q != value.data() + value.size()) {
        return Refuse(Reason::kMalformedArchive,
                      StrCat("a pax extended header has a bad size '", value, "'"));
      }
      out->size = size;
    } else if (key.starts_with("GNU.sparse.")) {
      out->sparse = true;
    }
  }
  return absl::OkStatus();
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
  return reader;
}

absl::StatusOr<bool> ArchiveReader::Decompress() {
  while (true) {
    if (in_pos_ == in_size_ && !source_done_) {
      ASSIGN_OR_RETURN(size_t n, source_->Read(in_buffer_.get(), kInBufferSize));
      in_pos_ = 0;
      in_size_ = n;
      compressed_ += n;
      if (n == 0) source_done_ = true;
    }
    if (in_pos_ == in_size_ && source_done_) {
      if (frame_remaining_ != 0) {
        return Refuse(Reason::kMalformedArchive,
                      "the zstd stream is truncated (incomplete download?)");
      }
      return false;
    }
    ZSTD_inBuffer in{in_buffer_.get(), in_size_, in_pos_};
    ZSTD_outBuffer out{out_buffer_.get(), kOutBufferSize, 0};
    size_t result = ZSTD_decompressStream(zstd_, &out, &in);
    in_pos_ = in.pos;
    if (ZSTD_isError(result)) {
      if (ZSTD_getErrorCode(result) == ZSTD_error_frameParameter_windowTooLarge) {
        return Refuse(Reason::kDecompressionBomb,
                      StrCat("the zstd stream needs a window over 2^", limits_.max_window_log,
                             " bytes of decoder memory"));
      }
      return Refuse(Reason::kMalformedArchive,
                    StrCat("not a valid zstd stream: ", ZSTD_getErrorName(result)));
    }
    frame_remaining_ = result;
    if (out.pos == 0) continue;
    decompressed_ += out.pos;
    if (decompressed_ > budget_) {
      return Refuse(Reason::kDecompressionBomb,
                    StrCat("the archive decompresses to more than ", budget_,
                           " bytes, more than its manifest accounts for (limit max_unpacked_bytes ",
                           limits_.max_unpacked_bytes, ")"));
    }
    if (decompressed_ > limits_.ratio_check_after_bytes &&
        static_cast<double>(decompressed_) >
            limits_.max_compression_ratio * static_cast<double>(compressed_)) {
      return Refuse(Reason::kDecompressionBomb,
                    StrCat("compression ratio over the limit ", limits_.max_compression_ratio, " (",
                           decompressed_, " bytes from ", compressed_, ")"));
    }
    out_pos_ = 0;
    out_size_ = out.pos;
    return true;
  }
}

absl::StatusOr<std::string_view> ArchiveReader::Pull(size_t max) {
  if (out_pos_ == out_size_) {
    ASSIGN_OR_RETURN(bool more, Decompress());
    if (!more) return std::string_view();
  }
  size_t n = std::min(max, out_size_ - out_pos_);
  std::string_view bytes(out_buffer_.get() + out_pos_, n);
  out_pos_ += n;
  return bytes;
}

absl::Status ArchiveReader::ReadExact(char* out, size_t n, bool* at_end) {
  size_t done = 0;
  if (at_end != nullptr) *at_end = false;
  while (done < n) {
    ASSIGN_OR_RETURN(std::string_view bytes, Pull(n - done));
    if (bytes.empty()) {
      if (done == 0 && at_end != nullptr) {
        *at_end = true;
        return absl::OkStatus();
      }
      return Refuse(Reason::kMalformedArchive, "the tar stream is truncated");
    }
    std::memcpy(out + done, bytes.data(), bytes.size());
    done += bytes.size();
  }
  return absl::OkStatus();
}

absl::Status ArchiveReader::Skip(uint64_t n) {
  while (n > 0) {
    ASSIGN_OR_RETURN(
        std::string_view bytes,
        Pull(static_cast<size_t>(std::min<uint64_t>(n, std::numeric_limits<size_t>::max()))));
    if (bytes.empty()) return Refuse(Reason::kMalformedArchive, "the tar stream is truncated");
    n -= bytes.size();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ArchiveReader::ReadMetadata(uint64_t size, std::string_view what) {
  if (size > kMaxMetadataBytes) {
    return Refuse(Reason::kMalformedArchive,
                  StrCat("a ", what, " of ", size, " bytes (over ", kMaxMetadataBytes, ")"));
  }
  std::string data(static_cast<size_t>(size), '\0');
  RETURN_IF_ERROR(ReadExact(data.data(), data.size()));
  RETURN_IF_ERROR(Skip(PaddingFor(size)));
  return data;
}

absl::StatusOr<bool> ArchiveReader::Next(ArchiveEntry* entry) {
  if (pending_) {
    pending_ = false;
    *entry = current_;
    return true;
  }
  if (ended_) return false;
  RETURN_IF_ERROR(Skip(data_remaining_ + padding_));
  data_remaining_ = padding_ = 0;
  PaxOverrides pax;
  std::optional<std::string> long_name, long_link;
  char header[kBlock];
  while (true) {
    bool at_end = false;
    RETURN_IF_ERROR(ReadExact(header, kBlock, &at_end));
    if (at_end) {
      return Refuse(Reason::kMalformedArchive,
                    "the archive ends without an end-of-archive marker (truncated, or not a "
                    "bundle)");
    }
    if (std::all_of(header, header + kBlock, [](char c) { return c == '\0'; })) {
      ended_ = true;
      return false;
    }
    if (!ChecksumMatches(header)) {
      return Refuse(Reason::kMalformedArchive,
                    "bad tar header checksum (not a bundle, or a corrupt one)");
    }
    std::string_view magic(header + 257, 5);
    if (magic != "ustar") {
      return Refuse(Reason::kMalformedArchive, "not a POSIX (ustar) tar header");
    }
    const bool gnu = std::string_view(header + 257, 8) == std::string_view("ustar  \0", 8);
    const char type = header[156];
    std::optional<uint64_t> size = Number(header, 124, 12);
    if (!size) return Refuse(Reason::kMalformedArchive, "a tar header has a malformed size");
    if (type == 'x') {
      ASSIGN_OR_RETURN(std::string data, ReadMetadata(*size, "pax extended header"));
      RETURN_IF_ERROR(ParsePax(data, &pax));
      continue;
    }
    if (type == 'g') {  // global pax defaults: nothing in them applies to bundles
      ASSIGN_OR_RETURN(std::string ignored, ReadMetadata(*size, "pax global header"));
      continue;
    }
    if (type == 'L' || type == 'K') {
      ASSIGN_OR_RETURN(std::string data, ReadMetadata(*size, "GNU long name"));
      data.resize(std::strlen(data.c_str()));
      (type == 'L' ? long_name : long_link) = std::move(data);
      continue;
    }
    std::string path;
    if (pax.path) {
      path = std::move(*pax.path);
    } else if (long_name) {
      path = std::move(*long_name);
    } else {
      std::string_view prefix = gnu ? std::string_view() : Field(header, 345, 155);
      std::string_view name = Field(header, 0, 100);
      path = prefix.empty() ? std::string(name) : StrCat(prefix, "/", name);
    }
    if (path.empty()) return Refuse(Reason::kInvalidPath, "a tar entry has no name");
    if (path.find('\0') != std::string::npos) {
      return Refuse(Reason::kInvalidPath, "a tar entry's name holds a NUL byte");
    }
    std::string quoted = StrCat("entry '", path, "'");
    std::string link = pax.linkpath ? *pax.linkpath
                       : long_link  ? *long_link
                                    : std::string(Field(header, 157, 100));
    if (type == '1') {
      return Refuse(Reason::kLink, StrCat(quoted, " is a hardlink to '", link,
                                          "'; bundles hold regular files only"));
    }
    if (type == '2') {
      return Refuse(Reason::kLink, StrCat(quoted, " is a symlink to '", link,
                                          "'; bundles hold regular files only"));
    }
    if (type != '0' && type != '\0' && type != '7') {
      return Refuse(Reason::kSpecialFile,
                    StrCat(quoted, " is ", TypeName(type),
                           "; bundles hold regular files only (directories are implied by paths)"));
    }
    if (pax.sparse) return Refuse(Reason::kSpecialFile, StrCat(quoted, " is a sparse file"));
    if (path != kManifestName && path != kSignatureName) {
      absl::Status valid = ValidateBundlePath(path);
      if (!valid.ok()) return Annotate(valid, "archive");
    }
    current_.path = std::move(path);
    current_.size = pax.size.value_or(*size);
    data_remaining_ = current_.size;
    padding_ = PaddingFor(current_.size);
    *entry = current_;
    return true;
  }
}

void ArchiveReader::Unread() { pending_ = true; }

absl::StatusOr<std::string_view> ArchiveReader::ReadData() {
  if (data_remaining_ == 0) return std::string_view();
  ASSIGN_OR_RETURN(std::string_view bytes,
                   Pull(static_cast<size_t>(std::min<uint64_t>(data_remaining_, kOutBufferSize))));
  if (bytes.empty()) {
    return Refuse(Reason::kMalformedArchive,
                  StrCat("the archive ends inside '", current_.path, "' (truncated)"));
  }
  data_remaining_ -= bytes.size();
  return bytes;
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
