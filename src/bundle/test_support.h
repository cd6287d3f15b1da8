// Test helpers for src/bundle and src/cli tests (header-only, test code
// only): temporary directories and hand-crafted .tar.zst archives written
// with libarchive's own zstd filter, independent of ArchiveWriter, so tests
// can build every kind of hostile bundle.
#pragma once

#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <zstd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "bundle/manifest.h"
#include "bundle/signing.h"
#include "common/sha256.h"

namespace outpost::bundle::testing {

class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "outpost-bundle-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void WriteBytes(const std::filesystem::path& path, std::string_view data) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  ASSERT_TRUE(out.good()) << path;
}

inline std::string ReadBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Deterministic pseudo-random bytes (incompressible, like model weights).
inline std::string RandomBytes(size_t size, uint32_t seed = 1) {
  std::string out(size, '\0');
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < size; ++i) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    out[i] = static_cast<char>(state >> 24);
  }
  return out;
}

struct CraftedEntry {
  CraftedEntry(std::string path, std::string data, mode_t type = AE_IFREG, std::string link = "",
               bool hardlink = false)
      : path(std::move(path)),
        data(std::move(data)),
        type(type),
        link(std::move(link)),
        hardlink(hardlink) {}

  std::string path;
  std::string data;
  mode_t type = AE_IFREG;
  std::string link;  // symlink target, or hardlink target when hardlink
  bool hardlink = false;
  int64_t declared_size = -1;  // header size; -1 = data.size()
  std::string xattr_value;     // written as a pax LIBARCHIVE.xattr.user.big header
};

// Writes `entries` as a pax tar compressed with libarchive's zstd filter.
inline void CraftBundle(const std::filesystem::path& path,
                        const std::vector<CraftedEntry>& entries) {
  struct archive* a = archive_write_new();
  ASSERT_EQ(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
  ASSERT_EQ(archive_write_add_filter_zstd(a), ARCHIVE_OK) << archive_error_string(a);
  ASSERT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK) << archive_error_string(a);
  for (const CraftedEntry& e : entries) {
    struct archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, e.path.c_str());
    archive_entry_set_perm(entry, 0644);
    if (e.hardlink) {
      archive_entry_set_filetype(entry, AE_IFREG);
      archive_entry_set_hardlink(entry, e.link.c_str());
      archive_entry_set_size(entry, 0);
    } else {
      archive_entry_set_filetype(entry, e.type);
      if (e.type == AE_IFLNK) archive_entry_set_symlink(entry, e.link.c_str());
      if (e.type == AE_IFREG) {
        archive_entry_set_size(
            entry, e.declared_size >= 0 ? e.declared_size : static_cast<int64_t>(e.data.size()));
      }
    }
    if (!e.xattr_value.empty()) {
      archive_entry_xattr_add_entry(entry, "user.big", e.xattr_value.data(), e.xattr_value.size());
    }
    ASSERT_EQ(archive_write_header(a, entry), ARCHIVE_OK) << archive_error_string(a);
    if (e.type == AE_IFREG && !e.hardlink && !e.data.empty()) {
      archive_write_data(a, e.data.data(), e.data.size());
    }
    archive_entry_free(entry);
  }
  ASSERT_EQ(archive_write_close(a), ARCHIVE_OK) << archive_error_string(a);
  archive_write_free(a);
}

// Entry names of a .tar.zst, read with libarchive's stock zstd + tar
// readers (what `tar --zstd -t` shows).
inline std::vector<std::string> ListWithLibarchive(const std::filesystem::path& path) {
  std::vector<std::string> names;
  struct archive* a = archive_read_new();
  archive_read_support_filter_zstd(a);
  archive_read_support_format_tar(a);
  if (archive_read_open_filename(a, path.c_str(), 1 << 16) != ARCHIVE_OK) {
    ADD_FAILURE() << archive_error_string(a);
    archive_read_free(a);
    return names;
  }
  struct archive_entry* entry;
  while (archive_read_next_header(a, &entry) == ARCHIVE_OK)
    names.push_back(archive_entry_pathname(entry));
  archive_read_free(a);
  return names;
}

// A file entry for `data` at `path`.
inline FileEntry EntryFor(std::string path, std::string_view data, bool executable = false) {
  return FileEntry{std::move(path), data.size(), Sha256::HexOf(data), executable};
}

inline Manifest SampleManifest(std::vector<FileEntry> files, uint64_t sequence = 5) {
  Manifest manifest;
  manifest.release = "release-1";
  manifest.sequence = sequence;
  manifest.created = "2024-06-01T12:00:00Z";
  manifest.target = {"x86_64", "cpu", "0.1.0"};
  manifest.files = std::move(files);
  return manifest;
}

}  // namespace outpost::bundle::testing
