#include "bundle/builder.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <set>
#include <system_error>

#include "bundle/archive_writer.h"
#include "bundle/bundle.h"
#include "bundle/payload.h"
#include "common/atomic_file.h"
#include "common/sha256.h"

namespace outpost::bundle {
namespace {

constexpr size_t kReadBuffer = size_t{1} << 20;

struct Source {
  std::string bundle_path;
  std::filesystem::path file;
  bool executable = false;
};

// Reads `path` in big blocks, handing each to `consume`.
template <typename Consume>
absl::Status StreamFile(const std::filesystem::path& path, char* buffer, Consume consume) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, StrCat("cannot open ", path.string()));
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  absl::Status status;
  while (true) {
    ssize_t n = ::read(fd, buffer, kReadBuffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      status = absl::ErrnoToStatus(errno, StrCat("cannot read ", path.string()));
      break;
    }
    if (n == 0) break;
    status = consume(std::string_view(buffer, static_cast<size_t>(n)));
    if (!status.ok()) break;
  }
  ::close(fd);
  return status;
}

absl::Status AddSource(std::vector<Source>* sources, std::string bundle_path,
                       const std::filesystem::path& file, bool executable) {
  absl::Status valid = ValidateBundlePath(bundle_path);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(
        StrCat(file.string(), ": cannot be packed: ", MessageOf(valid)));
  }
  std::error_code ec;
  auto status = std::filesystem::symlink_status(file, ec);
  if (ec || status.type() == std::filesystem::file_type::not_found) {
    return absl::NotFoundError(StrCat(file.string(), ": no such file"));
  }
  if (status.type() == std::filesystem::file_type::symlink) {
    return absl::InvalidArgumentError(
        StrCat(file.string(), " is a symlink; bundles hold regular files only (copy the file)"));
  }
  if (status.type() != std::filesystem::file_type::regular) {
    return absl::InvalidArgumentError(StrCat(file.string(), " is not a regular file"));
  }
  sources->push_back({std::move(bundle_path), file, executable});
  return absl::OkStatus();
}

absl::Status CollectModels(const std::filesystem::path& dir, std::vector<Source>* sources) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::NotFoundError(StrCat("models directory ", dir.string(), " does not exist"));
  }
  std::vector<std::filesystem::path> files;
  for (std::filesystem::recursive_directory_iterator it(dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    auto type = it->symlink_status(ec).type();
    if (ec) break;
    if (type == std::filesystem::file_type::directory) continue;
    files.push_back(it->path());
  }
  if (ec) return absl::InternalError(StrCat("cannot list ", dir.string(), ": ", ec.message()));
  bool has_model = false;
  for (const auto& file : files) {
    std::filesystem::path relative = file.lexically_relative(dir);
    RETURN_IF_ERROR(AddSource(sources, StrCat("models/", relative.generic_string()), file, false));
    // <model>/<version>/model.onnx with a numeric version.
    auto parts = std::vector<std::filesystem::path>(relative.begin(), relative.end());
    if (parts.size() == 3 && parts[2] == "model.onnx") {
      std::string version = parts[1].string();
      has_model |= !version.empty() && std::all_of(version.begin(), version.end(),
                                                   [](char c) { return c >= '0' && c <= '9'; });
    }
  }
  if (!has_model) {
    return absl::InvalidArgumentError(
        StrCat("models directory ", dir.string(),
               " has no <model>/<version>/model.onnx (a model repository)"));
  }
  return absl::OkStatus();
}

int64_t CreatedTime(int64_t requested) {
  if (requested >= 0) return requested;
  const char* epoch = std::getenv("SOURCE_DATE_EPOCH");
  if (epoch != nullptr && *epoch != '\0') {
    char* end = nullptr;
    long long value = std::strtoll(epoch, &end, 10);
    if (end != nullptr && *end == '\0' && value >= 0) return value;
  }
  return static_cast<int64_t>(std::time(nullptr));
}

}  // namespace

absl::StatusOr<Manifest> BuildBundle(const BuildOptions& options,
                                     const std::filesystem::path& out) {
  Manifest manifest;
  manifest.release = options.release;
  manifest.sequence = options.sequence;
  manifest.target.arch = options.arch.empty() ? HostArch() : options.arch;
  manifest.target.accelerator = options.accelerator;
  manifest.target.min_agent_version = options.min_agent_version;
  int64_t created = CreatedTime(options.created_unix);
  manifest.created = FormatRfc3339(created);

  std::vector<Source> sources;
  RETURN_IF_ERROR(CollectModels(options.models_dir, &sources));
  for (const auto& config : options.config_files) {
    RETURN_IF_ERROR(
        AddSource(&sources, StrCat("config/", config.filename().string()), config, false));
  }
  if (!options.runtime_binary.empty()) {
    RETURN_IF_ERROR(AddSource(&sources, std::string(kRuntimePath), options.runtime_binary, true));
  }
  std::sort(sources.begin(), sources.end(),
            [](const Source& a, const Source& b) { return a.bundle_path < b.bundle_path; });
  for (size_t i = 1; i < sources.size(); ++i) {
    if (sources[i].bundle_path == sources[i - 1].bundle_path) {
      return absl::InvalidArgumentError(StrCat(sources[i - 1].file.string(), " and ",
                                               sources[i].file.string(), " would both be ",
                                               sources[i].bundle_path));
    }
  }
  if (!options.self_test_file.empty()) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(options.self_test_file));
    ASSIGN_OR_RETURN(manifest.self_tests, ParseSelfTests(text, options.self_test_file.string()));
  }
  if (!options.baseline_file.empty()) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(options.baseline_file));
    ASSIGN_OR_RETURN(manifest.baselines, ParseBaselines(text, options.baseline_file.string()));
  }

  std::unique_ptr<char[]> buffer(new char[kReadBuffer]);
  Sha256 hash;
  for (const Source& source : sources) {
    FileEntry entry{source.bundle_path, 0, "", source.executable};
    RETURN_IF_ERROR(StreamFile(source.file, buffer.get(), [&](std::string_view block) {
      hash.Update(block);
      entry.size += block.size();
      return absl::OkStatus();
    }));
    entry.sha256 = hash.FinishHex();
    manifest.files.push_back(std::move(entry));
  }

  // Check the manifest exactly as a device will, so that the build never
  // produces a bundle that every device refuses.
  std::string manifest_json = SerializeManifest(manifest);
  absl::StatusOr<Manifest> reparsed = ParseManifest(manifest_json);
  if (!reparsed.ok()) {
    return absl::InvalidArgumentError(StrCat("invalid bundle: ", MessageOf(reparsed.status())));
  }
  absl::Status limits = CheckManifestLimits(*reparsed, Limits{});
  if (!limits.ok()) {
    return absl::InvalidArgumentError(
        StrCat("devices would refuse this bundle: ", MessageOf(limits)));
  }

  ASSIGN_OR_RETURN(std::unique_ptr<ArchiveWriter> writer,
                   ArchiveWriter::Create(out, options.compression_level, created));
  RETURN_IF_ERROR(writer->AddFile(kManifestName, manifest_json));
  if (options.signing_key != nullptr) {
    RETURN_IF_ERROR(writer->AddFile(
        kSignatureName, SerializeSignature(SignManifest(manifest_json, *options.signing_key))));
  }
  for (size_t i = 0; i < sources.size(); ++i) {
    const FileEntry& entry = manifest.files[i];
    RETURN_IF_ERROR(writer->BeginFile(entry.path, entry.size, entry.executable));
    RETURN_IF_ERROR(StreamFile(sources[i].file, buffer.get(), [&](std::string_view block) {
      hash.Update(block);
      return writer->Write(block);
    }));
    RETURN_IF_ERROR(writer->EndFile());
    if (hash.FinishHex() != entry.sha256) {
      return absl::FailedPreconditionError(StrCat(
          sources[i].file.string(), " changed while the bundle was being built; build again"));
    }
  }
  RETURN_IF_ERROR(writer->Commit());
  return *std::move(reparsed);
}

}  // namespace outpost::bundle
