// libFuzzer target for the bundle container (untrusted bytes from the
// network). The first byte picks the layer under attack: 0 = the rest is a
// tar, compressed here so mutations reach the tar parser; otherwise the
// rest is taken as .tar.zst as is. The bundle then goes through Verify
// (with a fixed trusted key, which signed the seed corpus) and, verified or
// not, through the payload checks with its own manifest.
#include <sodium.h>
#include <zstd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "bundle/archive_reader.h"
#include "bundle/bundle.h"
#include "bundle/payload.h"

namespace {

using namespace outpost::bundle;

const TrustStore& FuzzTrust() {
  static const TrustStore* trust = [] {
    if (sodium_init() < 0) std::abort();
    // Seed 0x42 x 32: the key that signed fuzz_corpus/archive.
    unsigned char seed[32], pk[32], sk[64];
    for (unsigned char& b : seed) b = 0x42;
    crypto_sign_seed_keypair(pk, sk, seed);
    PublicKey key;
    key.key_id = "fuzz";
    std::copy(pk, pk + 32, key.bytes.begin());
    auto* store = new TrustStore();
    (void)store->Add(key);
    return store;
  }();
  return *trust;
}

Limits FuzzLimits() {
  Limits limits;
  limits.max_manifest_bytes = 1 << 20;
  limits.max_unpacked_bytes = 64 << 20;
  limits.max_files = 1000;
  return limits;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  std::string bundle;
  if (data[0] == 0) {
    bundle.resize(ZSTD_compressBound(rest.size()));
    size_t n = ZSTD_compress(bundle.data(), bundle.size(), rest.data(), rest.size(), 1);
    if (ZSTD_isError(n)) return 0;
    bundle.resize(n);
  } else {
    bundle.assign(rest);
  }
  Limits limits = FuzzLimits();
  DeviceFacts facts{"x86_64", {"cpu"}, "0.1.0", 0};
  (void)VerifyBytes(bundle, FuzzTrust(), facts, limits);

  auto reader = ArchiveReader::Open(MemorySource(bundle), limits);
  if (!reader.ok()) return 0;
  auto head = ReadHead(**reader, limits);
  if (!head.ok()) return 0;
  auto manifest = ParseManifest(head->manifest_json);
  if (!manifest.ok()) return 0;
  (void)StreamPayload(**reader, *head, *manifest, limits, nullptr);
  return 0;
}
