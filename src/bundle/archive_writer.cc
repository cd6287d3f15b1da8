#include "bundle/archive_writer.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "common/atomic_file.h"

namespace outpost::bundle {
namespace {

constexpr size_t kOutBufferSize = size_t{1} << 20;

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

  writer->archive_ = archive_write_new();
  if (writer->archive_ == nullptr)
    return absl::ResourceExhaustedError("cannot allocate libarchive");
  // pax: long paths and files over 8 GiB; "restricted" writes the extended
  // header only when an entry needs it, so plain ustar readers cope.
  archive_write_set_format_pax_restricted(writer->archive_);
  archive_write_add_filter_none(writer->archive_);
  // No blocking: zstd buffers, and the archive ends right after its
  // end-of-archive blocks instead of padding to 10 KiB.
  archive_write_set_bytes_per_block(writer->archive_, 0);
  if (archive_write_open(writer->archive_, writer.get(), nullptr, &ArchiveWriter::WriteCallback,
                         nullptr) != ARCHIVE_OK) {
    return writer->ArchiveError("cannot start the archive");
  }
  return writer;
}

ArchiveWriter::~ArchiveWriter() {
  if (archive_ != nullptr) archive_write_free(archive_);
  if (zstd_ != nullptr) ZSTD_freeCCtx(zstd_);
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_path_.empty()) ::unlink(temp_path_.c_str());
}

ssize_t ArchiveWriter::WriteCallback(struct archive*, void* self, const void* buffer,
                                     size_t length) {
  auto* writer = static_cast<ArchiveWriter*>(self);
  if (!writer->callback_status_.ok()) return -1;
  absl::Status status =
      writer->Compress(std::string_view(static_cast<const char*>(buffer), length), false);
  if (!status.ok()) {
    writer->callback_status_ = std::move(status);
    return -1;
  }
  return static_cast<ssize_t>(length);
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

absl::Status ArchiveWriter::ArchiveError(std::string_view what) {
  if (!callback_status_.ok()) return callback_status_;
  const char* message = archive_error_string(archive_);
  return absl::InternalError(
      StrCat(what, ": ", message != nullptr ? message : "unknown libarchive error"));
}

absl::Status ArchiveWriter::BeginFile(std::string_view path, uint64_t size, bool executable) {
  if (in_entry_) return absl::FailedPreconditionError("BeginFile inside another file");
  struct archive_entry* entry = archive_entry_new();
  if (entry == nullptr) return absl::ResourceExhaustedError("cannot allocate a tar entry");
  std::string name(path);
  archive_entry_set_pathname(entry, name.c_str());
  archive_entry_set_filetype(entry, AE_IFREG);
  archive_entry_set_perm(entry, executable ? 0755 : 0644);
  archive_entry_set_size(entry, static_cast<la_int64_t>(size));
  archive_entry_set_mtime(entry, mtime_, 0);
  archive_entry_set_uid(entry, 0);
  archive_entry_set_gid(entry, 0);
  int result = archive_write_header(archive_, entry);
  archive_entry_free(entry);
  if (result != ARCHIVE_OK) return ArchiveError(StrCat("cannot write the tar header of ", name));
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
  while (!data.empty()) {
    la_ssize_t n = archive_write_data(archive_, data.data(), data.size());
    if (n <= 0) return ArchiveError(StrCat("cannot write the data of ", entry_path_));
    data.remove_prefix(static_cast<size_t>(n));
    entry_written_ += static_cast<uint64_t>(n);
  }
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
  if (archive_write_finish_entry(archive_) != ARCHIVE_OK) {
    return ArchiveError(StrCat("cannot finish ", entry_path_));
  }
  return absl::OkStatus();
}

absl::Status ArchiveWriter::AddFile(std::string_view path, std::string_view data, bool executable) {
  RETURN_IF_ERROR(BeginFile(path, data.size(), executable));
  RETURN_IF_ERROR(Write(data));
  return EndFile();
}

absl::Status ArchiveWriter::Commit() {
  if (in_entry_) return absl::FailedPreconditionError("Commit inside a file");
  if (archive_write_close(archive_) != ARCHIVE_OK) return ArchiveError("cannot end the archive");
  RETURN_IF_ERROR(Compress({}, true));
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
