#include "bundle/bundle.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <set>
#include <system_error>
#include <unordered_map>

#include "bundle/archive_reader.h"
#include "bundle/archive_writer.h"
#include "bundle/payload.h"
#include "common/atomic_file.h"
#include "common/fault_injection.h"
#include "common/sha256.h"

namespace outpost::bundle {

namespace internal {
struct VerifiedManifestAccess {
  static VerifiedManifest Make(Manifest manifest, std::string json, Signature signature) {
    return VerifiedManifest(std::move(manifest), std::move(json), std::move(signature));
  }
};
}  // namespace internal

namespace {

// Tar header, pax extension and padding of one entry, generously.
constexpr uint64_t kEntryOverhead = 16 * 1024;
constexpr uint64_t kBudgetSlack = uint64_t{4} << 20;
// Start writeback every so often while unpacking, so the final fsync does
// not wait for the whole file at once.
constexpr uint64_t kWritebackChunk = uint64_t{8} << 20;

uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  return a > std::numeric_limits<uint64_t>::max() - b ? std::numeric_limits<uint64_t>::max()
                                                      : a + b;
}

int64_t ParseCreated(const std::string& created) {
  struct tm tm = {};
  if (strptime(created.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm) == nullptr) return 0;
  return static_cast<int64_t>(timegm(&tm));
}

absl::StatusOr<std::unique_ptr<ArchiveReader>> OpenBundle(const std::filesystem::path& bundle,
                                                          const Limits& limits) {
  ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source, OpenFileSource(bundle));
  return ArchiveReader::Open(std::move(source), limits);
}

absl::StatusOr<VerifiedManifest> VerifyHead(const BundleHead& head, const TrustStore& trust,
                                            const DeviceFacts& facts, const Limits& limits) {
  if (!head.signature_json.has_value()) {
    return Refuse(Reason::kNoSignature,
                  "the bundle is not signed (no signature.json after manifest.json); sign it "
                  "with `outpost bundle sign`");
  }
  ASSIGN_OR_RETURN(Signature signature, ParseSignature(*head.signature_json));
  RETURN_IF_ERROR(VerifyManifestSignature(head.manifest_json, signature, trust));
  ASSIGN_OR_RETURN(Manifest manifest, ParseManifest(head.manifest_json));
  RETURN_IF_ERROR(CheckManifestLimits(manifest, limits));
  RETURN_IF_ERROR(CheckTarget(manifest, facts));
  return internal::VerifiedManifestAccess::Make(std::move(manifest), head.manifest_json,
                                                std::move(signature));
}

// Opens `bundle`, reads its head and checks it still is the verified one.
absl::StatusOr<std::unique_ptr<ArchiveReader>> ReopenVerified(const std::filesystem::path& bundle,
                                                              const VerifiedManifest& verified,
                                                              const Limits& limits,
                                                              BundleHead* head) {
  ASSIGN_OR_RETURN(std::unique_ptr<ArchiveReader> reader, OpenBundle(bundle, limits));
  ASSIGN_OR_RETURN(*head, ReadHead(*reader, limits));
  if (head->manifest_json != verified.manifest_json()) {
    return Refuse(Reason::kBadSignature,
                  StrCat("manifest.json in ", bundle.string(),
                         " is not the verified one (the file changed after Verify); verify it "
                         "again"));
  }
  return reader;
}

absl::Status ErrnoError(std::string_view what, const std::filesystem::path& path) {
  return absl::ErrnoToStatus(errno, StrCat(what, " ", path.string()));
}

// Writes payload files under a directory fd.
class DiskSink : public PayloadSink {
 public:
  DiskSink(int dir_fd, std::filesystem::path dest) : dir_fd_(dir_fd), dest_(std::move(dest)) {}
  ~DiskSink() override {
    if (fd_ >= 0) ::close(fd_);
  }

  absl::Status BeginFile(const FileEntry& file) override {
    current_ = dest_ / file.path;
    // O_EXCL|O_NOFOLLOW: never write through anything that was not created
    // by this unpack (the tree started empty).
    fd_ = ::openat(dir_fd_, file.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                   0600);
    if (fd_ < 0) return ErrnoError("cannot create", current_);
    written_ = 0;
    synced_ = 0;
    return absl::OkStatus();
  }

  absl::Status Write(std::string_view data) override {
    RETURN_IF_ERROR(OUTPOST_FAIL_WRITE_AT("bundle.unpack_write"));
    while (!data.empty()) {
      ssize_t n = ::write(fd_, data.data(), data.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("cannot write", current_);
      }
      data.remove_prefix(static_cast<size_t>(n));
      written_ += static_cast<uint64_t>(n);
    }
    if (written_ - synced_ >= kWritebackChunk) {
      // Asynchronous: queues the range for writeback and returns.
      ::sync_file_range(fd_, static_cast<off_t>(synced_), static_cast<off_t>(written_ - synced_),
                        SYNC_FILE_RANGE_WRITE);
      synced_ = written_;
    }
    return absl::OkStatus();
  }

  absl::Status EndFile(const FileEntry& file) override {
    if (::fchmod(fd_, file.executable ? 0755 : 0644) != 0)
      return ErrnoError("cannot chmod", current_);
    if (::fsync(fd_) != 0) return ErrnoError("cannot fsync", current_);
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) return ErrnoError("cannot close", current_);
    OUTPOST_CRASH_AT("bundle.mid_unpack");
    return absl::OkStatus();
  }

 private:
  int dir_fd_;
  std::filesystem::path dest_;
  std::filesystem::path current_;
  int fd_ = -1;
  uint64_t written_ = 0;
  uint64_t synced_ = 0;
};

class ArchiveSink : public PayloadSink {
 public:
  explicit ArchiveSink(ArchiveWriter& writer) : writer_(writer) {}
  absl::Status BeginFile(const FileEntry& file) override {
    return writer_.BeginFile(file.path, file.size, file.executable);
  }
  absl::Status Write(std::string_view data) override { return writer_.Write(data); }
  absl::Status EndFile(const FileEntry&) override { return writer_.EndFile(); }

 private:
  ArchiveWriter& writer_;
};

absl::Status FsyncAt(int dir_fd, const std::string& relative, const std::filesystem::path& shown) {
  int fd = ::openat(dir_fd, relative.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory", shown);
  int result = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (result != 0) {
    errno = err;
    return ErrnoError("cannot fsync directory", shown);
  }
  return absl::OkStatus();
}

// Everything after "dest exists, is empty and open as dir_fd".
absl::Status UnpackInto(const std::filesystem::path& bundle, const VerifiedManifest& verified,
                        const std::filesystem::path& dest, int dir_fd, const Limits& limits) {
  BundleHead head;
  ASSIGN_OR_RETURN(std::unique_ptr<ArchiveReader> reader,
                   ReopenVerified(bundle, verified, limits, &head));
  // Every directory the manifest implies, parents first (a prefix sorts
  // before its extensions).
  std::set<std::string> dirs;
  for (const FileEntry& file : verified.manifest().files) {
    for (size_t slash = file.path.find('/'); slash != std::string::npos;
         slash = file.path.find('/', slash + 1)) {
      dirs.insert(file.path.substr(0, slash));
    }
  }
  for (const std::string& dir : dirs) {
    if (::mkdirat(dir_fd, dir.c_str(), 0755) != 0) return ErrnoError("cannot create", dest / dir);
  }
  DiskSink sink(dir_fd, dest);
  RETURN_IF_ERROR(StreamPayload(*reader, head, verified.manifest(), limits, &sink));
  OUTPOST_CRASH_AT("bundle.before_fsync");
  // New names are durable only once their directories are synced.
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    RETURN_IF_ERROR(FsyncAt(dir_fd, *it, dest / *it));
  }
  if (::fsync(dir_fd) != 0) return ErrnoError("cannot fsync directory", dest);
  return absl::OkStatus();
}

}  // namespace

std::string HostArch() {
  struct utsname name;
  if (uname(&name) != 0) return "unknown";
  std::string machine = name.machine;
  if (machine == "arm64") return "aarch64";
  if (machine == "amd64") return "x86_64";
  return machine;
}

absl::Status CheckTarget(const Manifest& manifest, const DeviceFacts& facts) {
  const Target& target = manifest.target;
  if (!facts.arch.empty() && target.arch != facts.arch) {
    return Refuse(Reason::kTargetMismatch,
                  StrCat("the bundle is for ", target.arch, ", this device is ", facts.arch));
  }
  if (!facts.accelerators.empty() && target.accelerator != "cpu" &&
      std::find(facts.accelerators.begin(), facts.accelerators.end(), target.accelerator) ==
          facts.accelerators.end()) {
    std::string have = "cpu";
    for (const std::string& a : facts.accelerators) {
      if (a != "cpu") StrAppend(&have, ", ", a);
    }
    return Refuse(Reason::kTargetMismatch, StrCat("the bundle needs accelerator ",
                                                  target.accelerator, ", this device has ", have));
  }
  if (!facts.agent_version.empty() && !target.min_agent_version.empty()) {
    absl::StatusOr<int> order = CompareVersions(facts.agent_version, target.min_agent_version);
    if (!order.ok()) {
      return absl::InvalidArgumentError(StrCat("agent version: ", MessageOf(order.status())));
    }
    if (*order < 0) {
      return Refuse(Reason::kTargetMismatch,
                    StrCat("the bundle needs agent ", target.min_agent_version,
                           " or newer, this agent is ", facts.agent_version));
    }
  }
  if (manifest.sequence < facts.sequence_floor) {
    return Refuse(Reason::kSequenceBelowFloor,
                  StrCat("release '", manifest.release, "' has sequence ", manifest.sequence,
                         ", below this device's floor ", facts.sequence_floor,
                         " (a downgrade or a replayed old bundle)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<BundleHead> ReadHead(ArchiveReader& reader, const Limits& limits) {
  BundleHead head;
  ArchiveEntry entry;
  ASSIGN_OR_RETURN(bool has_entry, reader.Next(&entry));
  if (!has_entry)
    return Refuse(Reason::kMalformedArchive, "the archive is empty (no manifest.json)");
  if (entry.path != kManifestName) {
    return Refuse(Reason::kMalformedArchive,
                  StrCat("the first member is '", entry.path, "'; manifest.json must come first"));
  }
  if (entry.size > limits.max_manifest_bytes) {
    return Refuse(Reason::kDecompressionBomb,
                  StrCat("manifest.json is ", entry.size, " bytes, over the limit ",
                         limits.max_manifest_bytes));
  }
  ASSIGN_OR_RETURN(head.manifest_json, reader.ReadAll());

  ASSIGN_OR_RETURN(has_entry, reader.Next(&entry));
  if (has_entry && entry.path == kSignatureName) {
    if (entry.size > kMaxSignatureBytes) {
      return Refuse(Reason::kBadSignature, StrCat("signature.json is ", entry.size,
                                                  " bytes; a signature is a few hundred"));
    }
    ASSIGN_OR_RETURN(head.signature_json, reader.ReadAll());
  } else if (has_entry) {
    reader.Unread();
  }
  return head;
}

absl::Status CheckManifestLimits(const Manifest& manifest, const Limits& limits) {
  if (manifest.files.size() > limits.max_files) {
    return Refuse(Reason::kDecompressionBomb, StrCat("the manifest lists ", manifest.files.size(),
                                                     " files, over the limit ", limits.max_files));
  }
  uint64_t total = manifest.TotalSize();
  if (total > limits.max_unpacked_bytes) {
    return Refuse(Reason::kDecompressionBomb,
                  StrCat("the manifest's files total ", total, " bytes, over the limit ",
                         limits.max_unpacked_bytes));
  }
  return absl::OkStatus();
}

absl::Status StreamPayload(ArchiveReader& reader, const BundleHead& head, const Manifest& manifest,
                           const Limits& limits, PayloadSink* sink) {
  RETURN_IF_ERROR(CheckManifestLimits(manifest, limits));
  // What the whole stream may decompress to: the head, the files, and
  // their headers. Anything beyond is not accounted for by the manifest.
  uint64_t budget = SaturatingAdd(limits.max_manifest_bytes, kMaxSignatureBytes);
  budget = SaturatingAdd(budget, kBudgetSlack);
  budget = SaturatingAdd(budget, manifest.TotalSize());
  budget = SaturatingAdd(budget, (manifest.files.size() + 2) * kEntryOverhead);
  reader.SetDecompressedBudget(budget);

  std::unordered_map<std::string_view, size_t> index;
  index.reserve(manifest.files.size());
  for (size_t i = 0; i < manifest.files.size(); ++i) index.emplace(manifest.files[i].path, i);
  std::vector<bool> seen(manifest.files.size(), false);
  size_t seen_count = 0;
  Sha256 hash;

  ArchiveEntry entry;
  while (true) {
    ASSIGN_OR_RETURN(bool has_entry, reader.Next(&entry));
    if (!has_entry) break;
    if (entry.path == kManifestName ||
        (entry.path == kSignatureName && head.signature_json.has_value())) {
      return Refuse(Reason::kDuplicateName, StrCat("the archive holds ", entry.path, " twice"));
    }
    if (entry.path == kSignatureName) {
      return Refuse(Reason::kMalformedArchive, "signature.json must directly follow manifest.json");
    }
    auto it = index.find(entry.path);
    if (it == index.end()) {
      return Refuse(Reason::kExtraFile, StrCat("the archive holds '", entry.path,
                                               "', which manifest.json does not list"));
    }
    const FileEntry& file = manifest.files[it->second];
    if (seen[it->second]) {
      return Refuse(Reason::kDuplicateName, StrCat("the archive holds '", file.path, "' twice"));
    }
    seen[it->second] = true;
    ++seen_count;
    if (entry.size != file.size) {
      return Refuse(Reason::kWrongSize, StrCat("'", file.path, "' is ", entry.size,
                                               " bytes, manifest.json says ", file.size));
    }
    if (sink != nullptr) RETURN_IF_ERROR(sink->BeginFile(file));
    uint64_t bytes = 0;
    while (true) {
      ASSIGN_OR_RETURN(std::string_view block, reader.ReadData());
      if (block.empty()) break;
      bytes += block.size();
      if (bytes > file.size) break;  // reported below
      hash.Update(block);
      if (sink != nullptr) RETURN_IF_ERROR(sink->Write(block));
    }
    if (bytes != file.size) {
      return Refuse(Reason::kWrongSize, StrCat("'", file.path, "' holds ", bytes,
                                               " bytes, manifest.json says ", file.size));
    }
    std::string digest = hash.FinishHex();
    if (digest != file.sha256) {
      return Refuse(Reason::kWrongHash, StrCat("'", file.path, "' has SHA-256 ", digest,
                                               ", manifest.json says ", file.sha256));
    }
    if (sink != nullptr) RETURN_IF_ERROR(sink->EndFile(file));
  }
  if (seen_count != manifest.files.size()) {
    std::string missing;
    size_t count = 0;
    for (size_t i = 0; i < manifest.files.size(); ++i) {
      if (seen[i]) continue;
      if (count++ < 3)
        StrAppend(&missing, missing.empty() ? "'" : ", '", manifest.files[i].path, "'");
    }
    if (count > 3) StrAppend(&missing, " and ", count - 3, " more");
    return Refuse(Reason::kFileMissing,
                  StrCat("manifest.json lists ", missing, ", missing from the archive"));
  }
  return absl::OkStatus();
}

absl::StatusOr<VerifiedManifest> Verify(const std::filesystem::path& bundle,
                                        const TrustStore& trust, const DeviceFacts& facts,
                                        const Limits& limits) {
  ASSIGN_OR_RETURN(std::unique_ptr<ArchiveReader> reader, OpenBundle(bundle, limits));
  ASSIGN_OR_RETURN(BundleHead head, ReadHead(*reader, limits));
  return VerifyHead(head, trust, facts, limits);
}

absl::StatusOr<VerifiedManifest> VerifyBytes(std::string_view bundle, const TrustStore& trust,
                                             const DeviceFacts& facts, const Limits& limits) {
  ASSIGN_OR_RETURN(std::unique_ptr<ArchiveReader> reader,
                   ArchiveReader::Open(MemorySource(bundle), limits));
  ASSIGN_OR_RETURN(BundleHead head, ReadHead(*reader, limits));
  return VerifyHead(head, trust, facts, limits);
}

absl::Status CheckPayload(const std::filesystem::path& bundle, const VerifiedManifest& verified,
                          const Limits& limits) {
  BundleHead head;
  ASSIGN_OR_RETURN(std::unique_ptr<ArchiveReader> reader,
                   ReopenVerified(bundle, verified, limits, &head));
  return StreamPayload(*reader, head, verified.manifest(), limits, nullptr);
}

absl::Status Unpack(const std::filesystem::path& bundle, const VerifiedManifest& verified,
                    const std::filesystem::path& dest_arg, const Limits& limits) {
  // "slot/" -> "slot", so that the parent fsynced below is the real one.
  std::filesystem::path dest = dest_arg.lexically_normal();
  if (!dest.has_filename() && dest.has_parent_path()) dest = dest.parent_path();
  bool created = false;
  struct stat st;
  if (::lstat(dest.c_str(), &st) != 0) {
    if (errno != ENOENT) return ErrnoError("cannot stat", dest);
    if (::mkdir(dest.c_str(), 0755) != 0) return ErrnoError("cannot create", dest);
    created = true;
  } else {
    std::error_code ec;
    if (!S_ISDIR(st.st_mode) || !std::filesystem::is_empty(dest, ec) || ec) {
      return absl::FailedPreconditionError(StrCat("cannot unpack into ", dest.string(),
                                                  ": it must be an empty directory or not exist"));
    }
  }
  int dir_fd = ::open(dest.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  absl::Status status = dir_fd < 0 ? ErrnoError("cannot open directory", dest)
                                   : UnpackInto(bundle, verified, dest, dir_fd, limits);
  if (dir_fd >= 0) ::close(dir_fd);
  if (status.ok() && created) {
    std::filesystem::path parent = dest.parent_path();
    status = FsyncDirectory(parent.empty() ? std::filesystem::path(".") : parent);
  }
  if (!status.ok()) {
    // Leave nothing half-written behind: the tree was empty before.
    std::error_code ec;
    if (created) {
      std::filesystem::remove_all(dest, ec);
    } else {
      for (std::filesystem::directory_iterator it(dest, ec), end; !ec && it != end;
           it.increment(ec)) {
        std::error_code ignored;
        std::filesystem::remove_all(it->path(), ignored);
      }
    }
  }
  return status;
}

absl::StatusOr<UnverifiedBundle> Inspect(const std::filesystem::path& bundle,
                                         const Limits& limits) {
  ASSIGN_OR_RETURN(std::unique_ptr<ArchiveReader> reader, OpenBundle(bundle, limits));
  ASSIGN_OR_RETURN(BundleHead head, ReadHead(*reader, limits));
  UnverifiedBundle out;
  ASSIGN_OR_RETURN(out.manifest, ParseManifest(head.manifest_json));
  if (head.signature_json.has_value()) {
    ASSIGN_OR_RETURN(out.signature, ParseSignature(*head.signature_json));
  }
  out.manifest_json = std::move(head.manifest_json);
  return out;
}

absl::Status SignBundle(const std::filesystem::path& in, const PrivateKey& key,
                        const std::filesystem::path& out, int level, const Limits& limits) {
  ASSIGN_OR_RETURN(std::unique_ptr<ArchiveReader> reader, OpenBundle(in, limits));
  ASSIGN_OR_RETURN(BundleHead head, ReadHead(*reader, limits));
  ASSIGN_OR_RETURN(Manifest manifest, ParseManifest(head.manifest_json));
  RETURN_IF_ERROR(CheckManifestLimits(manifest, limits));
  Signature signature = SignManifest(head.manifest_json, key);
  ASSIGN_OR_RETURN(std::unique_ptr<ArchiveWriter> writer,
                   ArchiveWriter::Create(out, level, ParseCreated(manifest.created)));
  RETURN_IF_ERROR(writer->AddFile(kManifestName, head.manifest_json));
  RETURN_IF_ERROR(writer->AddFile(kSignatureName, SerializeSignature(signature)));
  // The old signature (if any) is dropped; StreamPayload must not see it as
  // a payload entry, and ReadHead already consumed it.
  ArchiveSink sink(*writer);
  RETURN_IF_ERROR(StreamPayload(*reader, head, manifest, limits, &sink));
  return writer->Commit();
}

}  // namespace outpost::bundle
