// The tar layer on its own: our writer against libarchive's reader, our
// reader against archives libarchive writes in the formats other tools use
// (pax, GNU), and damaged streams.
#include <archive.h>
#include <archive_entry.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zstd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "bundle/archive_reader.h"
#include "bundle/archive_writer.h"
#include "bundle/reason.h"
#include "bundle/test_support.h"

namespace outpost::bundle {
namespace {

using ::testing::HasSubstr;

std::string Compress(std::string_view tar) {
  std::string out(ZSTD_compressBound(tar.size()), '\0');
  size_t n = ZSTD_compress(out.data(), out.size(), tar.data(), tar.size(), 3);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

struct Member {
  std::string path;
  std::string data;
};

// Reads every member with our reader; the first error ends it.
absl::StatusOr<std::vector<Member>> ReadAllMembers(std::string_view bundle) {
  ASSIGN_OR_RETURN(auto reader, ArchiveReader::Open(MemorySource(bundle), Limits{}));
  std::vector<Member> members;
  while (true) {
    ArchiveEntry entry;
    ASSIGN_OR_RETURN(bool more, reader->Next(&entry));
    if (!more) return members;
    ASSIGN_OR_RETURN(std::string data, reader->ReadAll());
    EXPECT_EQ(data.size(), entry.size);
    members.push_back({entry.path, std::move(data)});
  }
}

// A plain (uncompressed) tar written by libarchive in `format`.
std::string LibarchiveTar(int format, const std::vector<Member>& members) {
  std::vector<char> buffer(1 << 20);
  size_t used = 0;
  struct archive* a = archive_write_new();
  archive_write_set_format(a, format);
  archive_write_add_filter_none(a);
  EXPECT_EQ(archive_write_open_memory(a, buffer.data(), buffer.size(), &used), ARCHIVE_OK);
  for (const Member& m : members) {
    struct archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, m.path.c_str());
    archive_entry_set_filetype(entry, AE_IFREG);
    archive_entry_set_perm(entry, 0644);
    archive_entry_set_size(entry, static_cast<la_int64_t>(m.data.size()));
    EXPECT_EQ(archive_write_header(a, entry), ARCHIVE_OK) << archive_error_string(a);
    archive_write_data(a, m.data.data(), m.data.size());
    archive_entry_free(entry);
  }
  archive_write_close(a);
  archive_write_free(a);
  return std::string(buffer.data(), used);
}

std::string LongPath(size_t components) {
  std::string path = "models";
  for (size_t i = 0; i < components; ++i) path += "/component-number-" + std::to_string(i);
  return path + "/model.onnx";
}

TEST(ArchiveTest, WriterOutputIsStandardTarWithPaxOnlyWhenNeeded) {
  testing::TempDir dir;
  std::filesystem::path path = dir.path() / "out.tar.zst";
  const std::vector<Member> members = {
      {"manifest.json", "{}"},
      {LongPath(5), std::string(1000, 'a')},  // > 100 bytes: ustar prefix + name
      {LongPath(14), std::string(513, 'b')},  // > 255 bytes: a pax path record
      {"config/empty.txt", ""}};
  {
    auto writer = ArchiveWriter::Create(path, 3, 1700000000);
    ASSERT_TRUE(writer.ok()) << writer.status();
    for (const Member& m : members) ASSERT_TRUE((*writer)->AddFile(m.path, m.data).ok());
    ASSERT_TRUE((*writer)->Commit().ok());
  }
  EXPECT_EQ(testing::ListWithLibarchive(path),
            (std::vector<std::string>{members[0].path, members[1].path, members[2].path,
                                      members[3].path}));
  std::string bytes = testing::ReadBytes(path);
  auto read = ReadAllMembers(bytes);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), members.size());
  for (size_t i = 0; i < members.size(); ++i) {
    EXPECT_EQ((*read)[i].path, members[i].path);
    EXPECT_EQ((*read)[i].data, members[i].data);
  }
  // A ustar-only archive: exactly one extended header per member that needs one.
  std::string tar(ZSTD_getFrameContentSize(bytes.data(), bytes.size()) == ZSTD_CONTENTSIZE_UNKNOWN
                      ? 4 << 20
                      : ZSTD_getFrameContentSize(bytes.data(), bytes.size()),
                  '\0');
  size_t n = ZSTD_decompress(tar.data(), tar.size(), bytes.data(), bytes.size());
  ASSERT_FALSE(ZSTD_isError(n)) << ZSTD_getErrorName(n);
  tar.resize(n);
  int pax_headers = 0;
  for (size_t at = 0; at + 512 <= tar.size(); at += 512) {
    if (tar.compare(at + 257, 5, "ustar") == 0 && tar[at + 156] == 'x') ++pax_headers;
  }
  EXPECT_EQ(pax_headers, 1);
  EXPECT_EQ(tar.size() % 512, 0u);
  EXPECT_EQ(tar.substr(tar.size() - 1024), std::string(1024, '\0'));
}

TEST(ArchiveTest, ReadsPaxAndGnuArchivesFromOtherTools) {
  const std::vector<Member> members = {{"manifest.json", "{\"a\":1}"},
                                       {LongPath(12), std::string(70000, 'z')},
                                       {"config/x.yaml", "k: v\n"}};
  for (int format : {ARCHIVE_FORMAT_TAR_PAX_INTERCHANGE, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED,
                     ARCHIVE_FORMAT_TAR_GNUTAR, ARCHIVE_FORMAT_TAR_USTAR}) {
    std::vector<Member> want = members;
    if (format == ARCHIVE_FORMAT_TAR_USTAR) want.erase(want.begin() + 1);  // name too long
    auto read = ReadAllMembers(Compress(LibarchiveTar(format, want)));
    ASSERT_TRUE(read.ok()) << format << ": " << read.status();
    ASSERT_EQ(read->size(), want.size()) << format;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ((*read)[i].path, want[i].path) << format;
      EXPECT_TRUE((*read)[i].data == want[i].data) << format;
    }
  }
}

TEST(ArchiveTest, DamagedTarStreamsAreMalformed) {
  std::string tar = LibarchiveTar(ARCHIVE_FORMAT_TAR_PAX_RESTRICTED,
                                  {{"manifest.json", "{}"}, {"config/a.yaml", "a: 1\n"}});
  auto reason_of = [](std::string_view tar_bytes, std::string* message) {
    auto read = ReadAllMembers(Compress(tar_bytes));
    if (read.ok()) return Reason::kNone;
    *message = std::string(MessageOf(read.status()));
    return ReasonOf(read.status());
  };
  std::string message;
  std::string bad_checksum = tar;
  bad_checksum[2] ^= 1;  // the first header's name
  EXPECT_EQ(reason_of(bad_checksum, &message), Reason::kMalformedArchive);
  EXPECT_THAT(message, HasSubstr("checksum"));

  // Cut at a header boundary: no end-of-archive marker.
  EXPECT_EQ(reason_of(tar.substr(0, 1024), &message), Reason::kMalformedArchive);
  EXPECT_THAT(message, HasSubstr("end-of-archive"));
  // Cut inside a member's data.
  EXPECT_EQ(reason_of(tar.substr(0, 514), &message), Reason::kMalformedArchive);
  EXPECT_THAT(message, HasSubstr("truncated"));

  // Not tar at all, but zstd.
  EXPECT_EQ(reason_of(std::string(2048, 'x'), &message), Reason::kMalformedArchive);

  // A pax extended header over 1 MiB.
  std::string big;
  {
    std::vector<char> buffer(4 << 20);
    size_t used = 0;
    struct archive* a = archive_write_new();
    archive_write_set_format_pax(a);
    archive_write_open_memory(a, buffer.data(), buffer.size(), &used);
    struct archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, "config/a.yaml");
    archive_entry_set_filetype(entry, AE_IFREG);
    archive_entry_set_size(entry, 1);
    std::string comment(1500 * 1024, 'c');
    archive_entry_xattr_add_entry(entry, "user.a", comment.data(), 700 * 1024);
    archive_entry_xattr_add_entry(entry, "user.b", comment.data(), 700 * 1024);
    archive_write_header(a, entry);
    archive_write_data(a, "x", 1);
    archive_entry_free(entry);
    archive_write_close(a);
    archive_write_free(a);
    big.assign(buffer.data(), used);
  }
  EXPECT_EQ(reason_of(big, &message), Reason::kMalformedArchive);
  EXPECT_THAT(message, HasSubstr("pax extended header"));
}

}  // namespace
}  // namespace outpost::bundle
