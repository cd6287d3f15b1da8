// System shared memory regions (the KServe v2 / Triton "system shared
// memory" extension): a client on the same machine puts tensors in a POSIX
// shared memory object, registers it once, and then names the region in its
// requests, so hundreds of KB of tensor data never cross the socket.
//
// Only offered on a loopback listener: registering a region maps a shared
// memory object of this process's user, which is not for remote clients.
//
// Thread safety: all methods are thread-safe. A region unregistered while a
// request uses it stays mapped until that request is done (shared_ptr).
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"

namespace outpost::serve {

// One registered, mapped region. Unmapped when the last holder lets go.
class SharedMemoryRegion {
 public:
  ~SharedMemoryRegion();
  SharedMemoryRegion(const SharedMemoryRegion&) = delete;
  SharedMemoryRegion& operator=(const SharedMemoryRegion&) = delete;

  const std::string& name() const { return name_; }
  const std::string& key() const { return key_; }
  size_t offset() const { return offset_; }
  size_t byte_size() const { return byte_size_; }
  // [offset, offset + size) within the region; InvalidArgument when out of bounds.
  absl::StatusOr<std::span<std::byte>> Slice(size_t offset, size_t size) const;

 private:
  friend class SharedMemoryRegistry;
  SharedMemoryRegion() = default;

  std::string name_;
  std::string key_;
  size_t offset_ = 0;
  size_t byte_size_ = 0;
  void* mapping_ = nullptr;  // page-aligned start of the mmap
  size_t mapping_size_ = 0;
  std::byte* data_ = nullptr;  // mapping_ + (offset_ - aligned offset)
};

class SharedMemoryRegistry {
 public:
  // Maps `byte_size` bytes at `offset` of the POSIX shared memory object
  // `key` ("/name"). Errors: InvalidArgument (bad key, size 0, range past the
  // object's end), NotFound (no such object), AlreadyExists (name taken).
  absl::Status Register(const std::string& name, const std::string& key, size_t offset,
                        size_t byte_size);
  // NotFound when no such region.
  absl::Status Unregister(const std::string& name);
  void UnregisterAll();

  // NotFound with the registered names when unknown.
  absl::StatusOr<std::shared_ptr<const SharedMemoryRegion>> Find(std::string_view name) const;
  std::vector<std::shared_ptr<const SharedMemoryRegion>> List() const;

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<const SharedMemoryRegion>, std::less<>> regions_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace outpost::serve
