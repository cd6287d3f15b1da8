#include "bundle/archive_writer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "common/atomic_file.h"

namespace outpost::bundle {
namespace {

constexpr size_t kOutBufferSize = size_t{1} << 20;
constexpr size_t kBlock = 512;
constexpr uint64_t kMaxOctalSize = (uint64_t{1} << 33) - 1;  // 11 octal digits

// Writes `value` as zero-padded octal in `width - 1` digits plus a NUL.
void PutOctal(char* field, size_t width, uint64_t value) {
  std::snprintf(field, width, "%0*llo", static_cast<int>(width - 1),
                static_cast<unsigned long long>(value));
}

// "LEN key=value\n", LEN counting the whole record, its own digits included.
void AppendPaxRecord(std::string* out, std::string_view key, std::string_view value) {
  size_t length = key.size() + value.size() + 3;  // ' ', '=', '\n'
  size_t digits = std::to_string(length).size();
  if (std::to_string(length + digits).size() > digits) ++digits;
  StrAppend(out, length + digits, " ", key, "=", value, "\n");
}

// Splits `path` into ustar's prefix (<= 155) and name (<= 100) fields at a
// '/'; false when it cannot.
bool SplitForUstar(std::string_view path, std::string_view* prefix, std::string_view* name) {
  if (path.size() <= 100) {
    *prefix = {};
    *name = path;
    return true;
  }
  for (size_t slash = path.find('/'); slash != std::string_view::npos;
       slash = path.find('/', slash + 1)) {
    if (slash <= 155 && path.size() - slash - 1 <= 100 && slash + 1 < path.size()) {
      *prefix = path.substr(0, slash);
      *name = path.substr(slash + 1);
      return true;
    }
  }
  return false;
}

absl::Status ErrnoError(std::string_view what, const std::string& path) {
  return absl::ErrnoToStatus(errno, StrCat(what, " ", path));
}

std::filesystem::path DirOf(const std::filesystem::path& path) {
  std::filesystem::path dir = path.parent_path();
  return dir.empty() ? std::filesystem::path(".") : dir;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ArchiveWriter>> ArchiveWriter::Create(
    const std::filesystem::path& path, int level, int64_t mtime) {
  if (level < 1 || level > ZSTD_maxCLevel()) {
    return absl::InvalidArgumentError(
        StrCat("zstd level ", level, " is out of range 1..", ZSTD_maxCLevel()));
  }
  std::unique_ptr<ArchiveWriter> writer(new ArchiveWriter());
  writer->path_ = path;
  writer->mtime_ = mtime;
  writer->out_buffer_.reset(new char[kOutBufferSize]);

  writer->zstd_ = ZSTD_createCCtx();
  if (writer->zstd_ == nullptr)
    return absl::ResourceExhaustedError("cannot allocate a zstd encoder");
  ZSTD_CCtx_setParameter(writer->zstd_, ZSTD_c_compressionLevel, level);
  // A frame checksum lets a reader tell corruption in transit from a bad
  // payload at once.
  ZSTD_CCtx_setParameter(writer->zstd_, ZSTD_c_checksumFlag, 1);
  // Two workers keep compression off the critical path of hashing and I/O;
  // a libzstd built without threads refuses this, which is fine.
  ZSTD_CCtx_setParameter(writer->zstd_, ZSTD_c_nbWorkers, 2);

  std::string pattern =
      (DirOf(path) / StrCat(".", path.filename().string(), ".tmp-XXXXXX")).string();
  writer->fd_ = mkostemp(pattern.data(), O_CLOEXEC);
  if (writer->fd_ < 0) return ErrnoError("cannot create a temporary file beside", path.string());
  writer->temp_path_ = std::move(pattern);

  return writer;
}

ArchiveWriter::~ArchiveWriter() {
  if (zstd_ != nullptr) ZSTD_freeCCtx(zstd_);
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_path_.empty()) ::unlink(temp_path_.c_str());
}

absl::Status ArchiveWriter::Compress(std::string_view data, bool end) {
  ZSTD_inBuffer in{data.data(), data.size(), 0};
  while (true) {
    ZSTD_outBuffer out{out_buffer_.get(), kOutBufferSize, 0};
    size_t remaining = ZSTD_compressStream2(zstd_, &out, &in, end ? ZSTD_e_end : ZSTD_e_continue);
    if (ZSTD_isError(remaining)) {
      return absl::InternalError(StrCat("zstd compression failed: ", ZSTD_getErrorName(remaining)));
    }
    if (out.pos > 0) RETURN_IF_ERROR(WriteOut(std::string_view(out_buffer_.get(), out.pos)));
    bool done = end ? remaining == 0 : in.pos == in.size;
    if (done) return absl::OkStatus();
  }
}

absl::Status ArchiveWriter::WriteOut(std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd_, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", temp_path_);
    }
    data.remove_prefix(static_cast<size_t>(n));
    bytes_written_ += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status ArchiveWriter::WriteHeader(std::string_view name, char type, uint64_t size, int mode) {
  std::string_view prefix, short_name;
  if (!SplitForUstar(name, &prefix, &short_name)) {
    return absl::InternalError(StrCat("tar header name '", name, "' does not fit"));
  }
  char header[kBlock] = {};
  std::memcpy(header, short_name.data(), short_name.size());
  PutOctal(header + 100, 8, static_cast<uint64_t>(mode));
  PutOctal(header + 108, 8, 0);  // uid
  PutOctal(header + 116, 8, 0);  // gid
  PutOctal(header + 124, 12, size <= kMaxOctalSize ? size : 0);
  PutOctal(header + 136, 12, static_cast<uint64_t>(std::max<int64_t>(mtime_, 0)) & kMaxOctalSize);
  std::memset(header + 148, ' ', 8);
  header[156] = type;
  std::memcpy(header + 257, "ustar", 6);
  std::memcpy(header + 263, "00", 2);
  if (!prefix.empty()) std::memcpy(header + 345, prefix.data(), prefix.size());
  unsigned checksum = 0;
  for (char c : header) checksum += static_cast<unsigned char>(c);
  std::snprintf(header + 148, 8, "%06o", checksum);
  header[155] = ' ';
  return Compress(std::string_view(header, kBlock), false);
}

absl::Status ArchiveWriter::BeginFile(std::string_view path, uint64_t size, bool executable) {
  if (in_entry_) return absl::FailedPreconditionError("BeginFile inside another file");
  if (path.empty() || path.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(StrCat("bad archive member name '", path, "'"));
  }
  std::string name(path);
  std::string_view prefix, short_name;
  bool ascii = std::all_of(name.begin(), name.end(),
                           [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  std::string pax;
  if (!ascii || !SplitForUstar(name, &prefix, &short_name)) AppendPaxRecord(&pax, "path", name);
  if (size > kMaxOctalSize) AppendPaxRecord(&pax, "size", std::to_string(size));
  std::string header_name = name;
  if (!pax.empty()) {
    // The ustar fields of a member with a pax header hold a placeholder.
    std::string base = std::filesystem::path(name).filename().string();
    if (base.size() > 80 || !ascii) base = "member";
    header_name = StrCat("PaxHeader/", base);
    RETURN_IF_ERROR(WriteHeader(header_name, 'x', pax.size(), 0644));
    pax.resize(pax.size() + (kBlock - pax.size() % kBlock) % kBlock, '\0');
    RETURN_IF_ERROR(Compress(pax, false));
    header_name = base;
  }
  RETURN_IF_ERROR(WriteHeader(header_name, '0', size, executable ? 0755 : 0644));
  entry_path_ = std::move(name);
  entry_size_ = size;
  entry_written_ = 0;
  in_entry_ = true;
  return absl::OkStatus();
}

absl::Status ArchiveWriter::Write(std::string_view data) {
  if (!in_entry_) return absl::FailedPreconditionError("Write outside a file");
  if (data.size() > entry_size_ - entry_written_) {
    return absl::FailedPreconditionError(
        StrCat(entry_path_, " grew while being archived (more than ", entry_size_, " bytes)"));
  }
  RETURN_IF_ERROR(Compress(data, false));
  entry_written_ += data.size();
  return absl::OkStatus();
}

absl::Status ArchiveWriter::EndFile() {
  if (!in_entry_) return absl::FailedPreconditionError("EndFile outside a file");
  in_entry_ = false;
  if (entry_written_ != entry_size_) {
    return absl::FailedPreconditionError(StrCat(entry_path_, " has ", entry_written_,
                                                " bytes, expected ", entry_size_,
                                                " (did it change while being archived?)"));
  }
  static constexpr char kZeros[kBlock] = {};
  return Compress(std::string_view(kZeros, (kBlock - entry_size_ % kBlock) % kBlock), false);
}

absl::Status ArchiveWriter::AddFile(std::string_view path, std::string_view data, bool executable) {
  RETURN_IF_ERROR(BeginFile(path, data.size(), executable));
  RETURN_IF_ERROR(Write(data));
  return EndFile();
}

absl::Status ArchiveWriter::Commit() {
  if (in_entry_) return absl::FailedPreconditionError("Commit inside a file");
  // The end-of-archive marker: two zero blocks (no padding to 10 KiB).
  static constexpr char kEnd[2 * kBlock] = {};
  RETURN_IF_ERROR(Compress(std::string_view(kEnd, sizeof(kEnd)), true));
  if (::fchmod(fd_, 0644) != 0) return ErrnoError("cannot chmod", temp_path_);
  // The bundle must be on disk before its name appears (power cut safety).
  if (::fsync(fd_) != 0) return ErrnoError("cannot fsync", temp_path_);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) return ErrnoError("cannot close", temp_path_);
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return ErrnoError(StrCat("cannot rename ", temp_path_, " to"), path_.string());
  }
  committed_ = true;
  return FsyncDirectory(DirOf(path_));
}

}  // namespace outpost::bundle
