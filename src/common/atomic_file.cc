#include "common/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

namespace outpost {
namespace {

absl::Status ErrnoError(int err, std::string_view what, const std::filesystem::path& path) {
  return absl::ErrnoToStatus(err, StrCat(what, " ", path.string()));
}

std::filesystem::path DirOf(const std::filesystem::path& path) {
  std::filesystem::path dir = path.parent_path();
  return dir.empty() ? std::filesystem::path(".") : dir;
}

// A unique name beside `path`, created by mkostemp; the caller owns `fd`.
absl::Status MakeTempBeside(const std::filesystem::path& path, std::string* temp_name, int* fd) {
  std::string name = (DirOf(path) / StrCat(".", path.filename().string(), ".tmp-XXXXXX")).string();
  int result = mkostemp(name.data(), O_CLOEXEC);
  if (result < 0) return ErrnoError(errno, "cannot create a temporary file beside", path);
  *temp_name = std::move(name);
  *fd = result;
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, std::string_view data, const std::filesystem::path& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "cannot write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status FsyncDirectory(const std::filesystem::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open directory", dir);
  int result = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (result != 0) return ErrnoError(err, "cannot fsync directory", dir);
  return absl::OkStatus();
}

absl::Status WriteFileAtomic(const std::filesystem::path& path, std::string_view data,
                             mode_t mode) {
  std::string temp;
  int fd = -1;
  RETURN_IF_ERROR(MakeTempBeside(path, &temp, &fd));
  absl::Status status = WriteAll(fd, data, path);
  // mkostemp creates 0600; fchmod sets the exact mode, umask aside.
  if (status.ok() && ::fchmod(fd, mode) != 0) status = ErrnoError(errno, "cannot chmod", temp);
  // Data must be on disk before the rename makes it visible, or a power cut
  // could leave an empty file under the final name.
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoError(errno, "cannot fsync", temp);
  if (::close(fd) != 0 && status.ok()) status = ErrnoError(errno, "cannot close", temp);
  if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    status = ErrnoError(errno, "cannot rename a temporary file to", path);
  }
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return status;
  }
  return FsyncDirectory(DirOf(path));
}

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoError(err, "cannot stat", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::FailedPreconditionError(StrCat(path.string(), " is not a regular file"));
  }
  std::string out;
  out.reserve(static_cast<size_t>(st.st_size));
  char buf[64 * 1024];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return ErrnoError(err, "cannot read", path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

absl::Status ReplaceSymlinkAtomic(const std::filesystem::path& link,
                                  const std::filesystem::path& target) {
  // symlink() cannot take a mkstemp-style name, so pick one and retry on the
  // rare collision.
  std::string temp;
  for (int attempt = 0;; ++attempt) {
    std::string pattern =
        (DirOf(link) / StrCat(".", link.filename().string(), ".tmp-XXXXXX")).string();
    int fd = mkostemp(pattern.data(), O_CLOEXEC);
    if (fd < 0) return ErrnoError(errno, "cannot create a temporary name beside", link);
    ::close(fd);
    ::unlink(pattern.c_str());
    if (::symlink(target.c_str(), pattern.c_str()) == 0) {
      temp = std::move(pattern);
      break;
    }
    if (errno != EEXIST || attempt >= 10) {
      return ErrnoError(errno, "cannot create a symlink beside", link);
    }
  }
  if (::rename(temp.c_str(), link.c_str()) != 0) {
    int err = errno;
    ::unlink(temp.c_str());
    if (err == EISDIR || err == ENOTEMPTY || err == EEXIST) {
      return absl::FailedPreconditionError(
          StrCat("cannot replace ", link.string(), ": it is a directory, not a symlink"));
    }
    return ErrnoError(err, "cannot rename a symlink to", link);
  }
  return FsyncDirectory(DirOf(link));
}

}  // namespace outpost
