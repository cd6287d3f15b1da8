#include "hub/blob_store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <system_error>

#include "common/atomic_file.h"

namespace outpost::hub {
namespace {

namespace fs = std::filesystem;

constexpr size_t kReadChunk = 1 << 20;
// A temporary file this old belongs to an upload a crash abandoned; a
// younger one may be another hub process's upload in progress.
constexpr auto kStaleTemp = std::chrono::hours(24);

absl::Status ErrnoError(int err, std::string_view what, const fs::path& path) {
  return absl::ErrnoToStatus(err, StrCat(what, " ", path.string()));
}

absl::Status CheckName(std::string_view sha256) {
  if (IsSha256Hex(sha256)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      StrCat("not a SHA-256 (64 lowercase hex digits): \"", sha256.substr(0, 80), "\""));
}

fs::path DirOf(const fs::path& root, std::string_view sha256) {
  return root / "sha256" / std::string(sha256.substr(0, 2));
}

fs::path PathOf(const fs::path& root, std::string_view sha256) {
  return DirOf(root, sha256) / std::string(sha256);
}

// mkdir that is durable: the parent is fsynced when the directory is new.
absl::Status MakeDirDurable(const fs::path& dir) {
  if (::mkdir(dir.c_str(), 0755) == 0) return FsyncDirectory(dir.parent_path());
  if (errno == EEXIST) return absl::OkStatus();
  return ErrnoError(errno, "cannot create directory", dir);
}

absl::StatusOr<int> OpenForReading(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(StrCat("no blob ", path.filename().string()));
    return ErrnoError(errno, "cannot open", path);
  }
  return fd;
}

}  // namespace

bool IsSha256Hex(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// --- BlobWriter ---------------------------------------------------------

BlobWriter::BlobWriter(fs::path root, fs::path temp, int fd)
    : root_(std::move(root)), temp_(std::move(temp)), fd_(fd) {}

BlobWriter::~BlobWriter() { Discard(); }

void BlobWriter::Discard() {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  ::unlink(temp_.c_str());
}

absl::Status BlobWriter::Append(std::string_view data) {
  if (fd_ < 0 || failed_) {
    return absl::FailedPreconditionError("the blob upload is already committed or failed");
  }
  hash_.Update(data);
  size_ += static_cast<int64_t>(data.size());
  while (!data.empty()) {
    ssize_t n = ::write(fd_, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      failed_ = true;
      return ErrnoError(errno, "cannot write", temp_);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::StatusOr<BlobInfo> BlobWriter::Commit(std::optional<std::string_view> expected_sha256) {
  if (fd_ < 0 || failed_) {
    return absl::FailedPreconditionError("the blob upload is already committed or failed");
  }
  if (expected_sha256 && !IsSha256Hex(*expected_sha256)) {
    Discard();
    return CheckName(*expected_sha256);
  }
  BlobInfo info{hash_.FinishHex(), size_, false};
  if (expected_sha256 && *expected_sha256 != info.sha256) {
    Discard();
    return absl::DataLossError(StrCat("the uploaded content has SHA-256 ", info.sha256, " (",
                                      info.size, " bytes), not the expected ",
                                      expected_sha256->substr(0, 80)));
  }
  // The data must be on disk before the name points at it.
  if (::fsync(fd_) != 0 || ::fchmod(fd_, 0444) != 0) {
    absl::Status error = ErrnoError(errno, "cannot fsync", temp_);
    Discard();
    return error;
  }
  fs::path dir = DirOf(root_, info.sha256);
  fs::path final_path = PathOf(root_, info.sha256);
  absl::Status made = MakeDirDurable(dir);
  if (!made.ok()) {
    Discard();
    return made;
  }
  struct stat st;
  if (::stat(final_path.c_str(), &st) == 0 && st.st_size == info.size) {
    // Same name, same size: the same content (its name is its hash).
    Discard();
    info.already_present = true;
    return info;
  }
  if (::rename(temp_.c_str(), final_path.c_str()) != 0) {
    absl::Status error = ErrnoError(errno, "cannot rename a blob into", final_path);
    Discard();
    return error;
  }
  ::close(fd_);
  fd_ = -1;
  RETURN_IF_ERROR(FsyncDirectory(dir));
  return info;
}

// --- Blob ---------------------------------------------------------------

Blob::Blob(Blob&& other) noexcept : fd_(other.fd_), size_(other.size_) { other.fd_ = -1; }

Blob& Blob::operator=(Blob&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    size_ = other.size_;
    other.fd_ = -1;
  }
  return *this;
}

Blob::~Blob() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<std::string> Blob::ReadAt(int64_t offset, size_t length) const {
  if (offset < 0 || offset > size_) {
    return absl::InvalidArgumentError(
        StrCat("offset ", offset, " is outside the blob's ", size_, " bytes"));
  }
  length = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(length), size_ - offset));
  std::string out(length, '\0');
  size_t done = 0;
  while (done < length) {
    ssize_t n = ::pread(fd_, out.data() + done, length - done, offset + done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "cannot read a blob");
    }
    if (n == 0) break;  // cannot happen for an immutable file; do not spin
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return out;
}

// --- BlobStore ----------------------------------------------------------

absl::StatusOr<std::unique_ptr<BlobStore>> BlobStore::Open(const fs::path& root) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return absl::ErrnoToStatus(ec.value(), StrCat("cannot create ", root.string()));
  RETURN_IF_ERROR(MakeDirDurable(root / "sha256"));
  RETURN_IF_ERROR(MakeDirDurable(root / "tmp"));
  auto now = fs::file_time_type::clock::now();
  for (const auto& entry : fs::directory_iterator(root / "tmp", ec)) {
    auto modified = entry.last_write_time(ec);
    if (!ec && now - modified > kStaleTemp) fs::remove(entry.path(), ec);
  }
  return std::unique_ptr<BlobStore>(new BlobStore(root));
}

absl::StatusOr<std::unique_ptr<BlobWriter>> BlobStore::NewWriter() {
  std::string name = (root_ / "tmp" / "upload-XXXXXX").string();
  int fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot create a temporary file in", root_ / "tmp");
  return std::unique_ptr<BlobWriter>(new BlobWriter(root_, name, fd));
}

absl::StatusOr<BlobInfo> BlobStore::Put(std::string_view data,
                                        std::optional<std::string_view> expected_sha256) {
  ASSIGN_OR_RETURN(auto writer, NewWriter());
  RETURN_IF_ERROR(writer->Append(data));
  return writer->Commit(expected_sha256);
}

absl::StatusOr<BlobInfo> BlobStore::PutStream(std::istream& in,
                                              std::optional<std::string_view> expected_sha256) {
  ASSIGN_OR_RETURN(auto writer, NewWriter());
  std::string buffer(kReadChunk, '\0');
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    RETURN_IF_ERROR(writer->Append(std::string_view(buffer.data(), in.gcount())));
  }
  if (in.bad()) return absl::DataLossError("reading the blob's input stream failed");
  return writer->Commit(expected_sha256);
}

absl::StatusOr<BlobInfo> BlobStore::PutFile(const fs::path& file,
                                            std::optional<std::string_view> expected_sha256) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open", file);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  ASSIGN_OR_RETURN(auto writer, NewWriter());
  std::string buffer(kReadChunk, '\0');
  while (true) {
    ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "cannot read", file);
    }
    if (n == 0) break;
    RETURN_IF_ERROR(writer->Append(std::string_view(buffer.data(), static_cast<size_t>(n))));
  }
  return writer->Commit(expected_sha256);
}

absl::StatusOr<Blob> BlobStore::Get(std::string_view sha256) const {
  RETURN_IF_ERROR(CheckName(sha256));
  ASSIGN_OR_RETURN(int fd, OpenForReading(PathOf(root_, sha256)));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    absl::Status error = ErrnoError(errno, "cannot stat", PathOf(root_, sha256));
    ::close(fd);
    return error;
  }
  return Blob(fd, st.st_size);
}

absl::StatusOr<bool> BlobStore::Has(std::string_view sha256) const {
  RETURN_IF_ERROR(CheckName(sha256));
  struct stat st;
  if (::stat(PathOf(root_, sha256).c_str(), &st) == 0) return true;
  if (errno == ENOENT) return false;
  return ErrnoError(errno, "cannot stat", PathOf(root_, sha256));
}

absl::StatusOr<int64_t> BlobStore::SizeOf(std::string_view sha256) const {
  RETURN_IF_ERROR(CheckName(sha256));
  struct stat st;
  if (::stat(PathOf(root_, sha256).c_str(), &st) == 0) return static_cast<int64_t>(st.st_size);
  if (errno == ENOENT) return absl::NotFoundError(StrCat("no blob ", sha256));
  return ErrnoError(errno, "cannot stat", PathOf(root_, sha256));
}

absl::Status BlobStore::Verify(std::string_view sha256) const {
  ASSIGN_OR_RETURN(Blob blob, Get(sha256));
  Sha256 hash;
  for (int64_t offset = 0; offset < blob.size(); offset += kReadChunk) {
    ASSIGN_OR_RETURN(std::string chunk, blob.ReadAt(offset, kReadChunk));
    if (chunk.empty()) break;
    hash.Update(chunk);
  }
  std::string actual = hash.FinishHex();
  if (actual != sha256) {
    return absl::DataLossError(StrCat("blob ", sha256, " is corrupt: its content hashes to ",
                                      actual, "; remove it and upload the artifact again"));
  }
  return absl::OkStatus();
}

absl::Status BlobStore::Remove(std::string_view sha256) {
  RETURN_IF_ERROR(CheckName(sha256));
  fs::path path = PathOf(root_, sha256);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return absl::NotFoundError(StrCat("no blob ", sha256));
    return ErrnoError(errno, "cannot remove", path);
  }
  return FsyncDirectory(path.parent_path());
}

absl::StatusOr<std::vector<std::string>> BlobStore::List() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& dir : fs::directory_iterator(root_ / "sha256", ec)) {
    if (!dir.is_directory(ec)) continue;
    for (const auto& entry : fs::directory_iterator(dir.path(), ec)) {
      std::string name = entry.path().filename().string();
      if (IsSha256Hex(name) && name.compare(0, 2, dir.path().filename().string()) == 0) {
        out.push_back(std::move(name));
      }
    }
    if (ec) break;
  }
  if (ec) return absl::ErrnoToStatus(ec.value(), StrCat("cannot list ", root_.string()));
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace outpost::hub
