// Incremental SHA-256 for content addressing and bundle file checks.
//
// Two builds of the same interface (src/common/CMakeLists.txt):
// outpost_sha256 on OpenSSL's EVP (SHA-NI / AVX2 code paths), measured ~5x
// faster than libsodium's portable crypto_hash_sha256 on the reference
// machine (560 vs 115 MB/s), for the hub, the CLI and outpost-serve, which
// hash 100 MB model weights; outpost_sha256_sodium on libsodium for
// outpost-agent, which links no OpenSSL (each OpenSSL library costs idle
// memory; docs/agent.md).
//
// Thread safety: a Sha256 object is not thread-safe; use one per thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace outpost {

class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t size);
  void Update(std::string_view data) { Update(data.data(), data.size()); }
  // Returns the digest of everything passed to Update since construction or
  // the last Finish, and starts over.
  Digest Finish();
  // Finish() as 64 lowercase hex characters.
  std::string FinishHex();

  // One-shot helpers.
  static Digest Of(std::string_view data);
  static std::string HexOf(std::string_view data);

 private:
  void* ctx_;  // EVP_MD_CTX or crypto_hash_sha256_state
};

// Lowercase hex of `size` bytes.
std::string HexEncode(const uint8_t* data, size_t size);

}  // namespace outpost
