#include "serve/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace outpost::serve {

SharedMemoryRegion::~SharedMemoryRegion() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_size_);
}

absl::StatusOr<std::span<std::byte>> SharedMemoryRegion::Slice(size_t offset, size_t size) const {
  if (offset > byte_size_ || size > byte_size_ - offset) {
    return absl::InvalidArgumentError(StrCat("shared memory region '", name_, "' holds ",
                                             byte_size_, " bytes; offset ", offset, " + size ",
                                             size, " is past its end"));
  }
  return std::span<std::byte>(data_ + offset, size);
}

absl::Status SharedMemoryRegistry::Register(const std::string& name, const std::string& key,
                                            size_t offset, size_t byte_size) {
  if (name.empty()) return absl::InvalidArgumentError("the region name must not be empty");
  if (key.size() < 2 || key[0] != '/' || key.find('/', 1) != std::string::npos ||
      key.size() > 255) {
    return absl::InvalidArgumentError(
        StrCat("shared memory key '", key, "' must look like \"/name\" (one leading slash)"));
  }
  if (byte_size == 0) return absl::InvalidArgumentError("byte_size must be > 0");
  {
    absl::ReaderMutexLock lock(&mu_);
    if (regions_.count(name)) {
      return absl::AlreadyExistsError(
          StrCat("shared memory region '", name, "' is already registered; unregister it first"));
    }
  }
  int fd = shm_open(key.c_str(), O_RDWR, 0);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) {
      return absl::NotFoundError(StrCat("no shared memory object '", key, "' (create it first)"));
    }
    return absl::InvalidArgumentError(
        StrCat("cannot open shared memory object '", key, "': ", std::strerror(err)));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || offset > static_cast<size_t>(st.st_size) ||
      byte_size > static_cast<size_t>(st.st_size) - offset) {
    close(fd);
    return absl::InvalidArgumentError(StrCat("shared memory object '", key, "' has ",
                                             static_cast<int64_t>(st.st_size), " bytes; offset ",
                                             offset, " + byte_size ", byte_size, " does not fit"));
  }
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t aligned = offset / page * page;
  std::unique_ptr<SharedMemoryRegion> region(new SharedMemoryRegion());
  region->mapping_size_ = byte_size + (offset - aligned);
  void* mapping = mmap(nullptr, region->mapping_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                       static_cast<off_t>(aligned));
  int err = errno;
  close(fd);  // the mapping keeps the object alive
  if (mapping == MAP_FAILED) {
    return absl::InvalidArgumentError(
        StrCat("cannot map shared memory object '", key, "': ", std::strerror(err)));
  }
  region->mapping_ = mapping;
  region->data_ = static_cast<std::byte*>(mapping) + (offset - aligned);
  region->name_ = name;
  region->key_ = key;
  region->offset_ = offset;
  region->byte_size_ = byte_size;

  absl::MutexLock lock(&mu_);
  auto [it, inserted] = regions_.emplace(name, std::move(region));
  if (!inserted) {
    return absl::AlreadyExistsError(
        StrCat("shared memory region '", name, "' is already registered; unregister it first"));
  }
  return absl::OkStatus();
}

absl::Status SharedMemoryRegistry::Unregister(const std::string& name) {
  std::shared_ptr<const SharedMemoryRegion> released;  // unmapped outside the lock
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(name);
  if (it == regions_.end()) {
    return absl::NotFoundError(StrCat("no shared memory region '", name, "' is registered"));
  }
  released = std::move(it->second);
  regions_.erase(it);
  return absl::OkStatus();
}

void SharedMemoryRegistry::UnregisterAll() {
  std::map<std::string, std::shared_ptr<const SharedMemoryRegion>, std::less<>> released;
  absl::MutexLock lock(&mu_);
  released.swap(regions_);
}

absl::StatusOr<std::shared_ptr<const SharedMemoryRegion>> SharedMemoryRegistry::Find(
    std::string_view name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = regions_.find(name);
  if (it != regions_.end()) return it->second;
  std::string known;
  for (const auto& [n, r] : regions_) StrAppend(&known, known.empty() ? "" : ", ", n);
  return absl::NotFoundError(StrCat("no shared memory region '", name, "' is registered",
                                    known.empty() ? "" : "; registered: ", known));
}

std::vector<std::shared_ptr<const SharedMemoryRegion>> SharedMemoryRegistry::List() const {
  std::vector<std::shared_ptr<const SharedMemoryRegion>> out;
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [name, region] : regions_) out.push_back(region);
  return out;
}

}  // namespace outpost::serve
