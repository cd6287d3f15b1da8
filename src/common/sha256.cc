#include "common/sha256.h"

#include <cstdlib>

#if defined(OUTPOST_SHA256_SODIUM)
#include <sodium.h>
#else
#include <openssl/evp.h>
#endif

namespace outpost {

#if defined(OUTPOST_SHA256_SODIUM)

namespace {
crypto_hash_sha256_state* State(void* ctx) { return static_cast<crypto_hash_sha256_state*>(ctx); }
}  // namespace

Sha256::Sha256() : ctx_(new crypto_hash_sha256_state) { crypto_hash_sha256_init(State(ctx_)); }

Sha256::~Sha256() { delete State(ctx_); }

void Sha256::Update(const void* data, size_t size) {
  if (size == 0) return;
  crypto_hash_sha256_update(State(ctx_), static_cast<const unsigned char*>(data), size);
}

Sha256::Digest Sha256::Finish() {
  Digest digest;
  crypto_hash_sha256_final(State(ctx_), digest.data());
  crypto_hash_sha256_init(State(ctx_));
  return digest;
}

#else

namespace {

EVP_MD_CTX* Context(void* ctx) { return static_cast<EVP_MD_CTX*>(ctx); }

// EVP fails only when out of memory or with a broken OpenSSL install;
// neither is recoverable by a caller that wants a hash.
void CheckOpenSsl(int ok) {
  if (ok != 1) std::abort();
}

}  // namespace

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (ctx_ == nullptr) std::abort();
  CheckOpenSsl(EVP_DigestInit_ex(Context(ctx_), EVP_sha256(), nullptr));
}

Sha256::~Sha256() { EVP_MD_CTX_free(Context(ctx_)); }

void Sha256::Update(const void* data, size_t size) {
  if (size == 0) return;
  CheckOpenSsl(EVP_DigestUpdate(Context(ctx_), data, size));
}

Sha256::Digest Sha256::Finish() {
  Digest digest;
  unsigned int length = 0;
  CheckOpenSsl(EVP_DigestFinal_ex(Context(ctx_), digest.data(), &length));
  CheckOpenSsl(EVP_DigestInit_ex(Context(ctx_), EVP_sha256(), nullptr));
  return digest;
}

#endif

std::string Sha256::FinishHex() {
  Digest digest = Finish();
  return HexEncode(digest.data(), digest.size());
}

Sha256::Digest Sha256::Of(std::string_view data) {
  Sha256 hash;
  hash.Update(data);
  return hash.Finish();
}

std::string Sha256::HexOf(std::string_view data) {
  Digest digest = Of(data);
  return HexEncode(digest.data(), digest.size());
}

std::string HexEncode(const uint8_t* data, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(size * 2, '\0');
  for (size_t i = 0; i < size; ++i) {
    out[2 * i] = kDigits[data[i] >> 4];
    out[2 * i + 1] = kDigits[data[i] & 0xf];
  }
  return out;
}

}  // namespace outpost
