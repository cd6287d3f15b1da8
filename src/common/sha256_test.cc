#include "common/sha256.h"

#include <gtest/gtest.h>

#include <string>

namespace outpost {
namespace {

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256::HexOf(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256::HexOf("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256Test, IncrementalEqualsOneShotAndFinishRestarts) {
  std::string data(1 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 131 + 7);
  Sha256 hash;
  for (size_t offset = 0; offset < data.size(); offset += 4097) {
    hash.Update(std::string_view(data).substr(offset, 4097));
  }
  EXPECT_EQ(hash.FinishHex(), Sha256::HexOf(data));
  hash.Update("abc");
  EXPECT_EQ(hash.FinishHex(), Sha256::HexOf("abc"));
}

TEST(Sha256Test, HexEncode) {
  const uint8_t bytes[] = {0x00, 0x0f, 0xa0, 0xff};
  EXPECT_EQ(HexEncode(bytes, sizeof(bytes)), "000fa0ff");
}

}  // namespace
}  // namespace outpost
