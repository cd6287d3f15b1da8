// libFuzzer target for every JSON document a bundle carries or the CLI
// reads: manifest.json, signature.json, key files, self-test and baseline
// files. Each input goes through every parser. A manifest that parses must
// survive SerializeManifest -> ParseManifest unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "bundle/manifest.h"
#include "bundle/signing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<outpost::bundle::Manifest> manifest = outpost::bundle::ParseManifest(text);
  if (manifest.ok()) {
    std::string canonical = outpost::bundle::SerializeManifest(*manifest);
    absl::StatusOr<outpost::bundle::Manifest> again = outpost::bundle::ParseManifest(canonical);
    if (!again.ok() || !(*again == *manifest)) std::abort();
    (void)manifest->TotalSize();
  }
  (void)outpost::bundle::ParseSignature(text);
  (void)outpost::bundle::ParsePublicKey(text, "fuzz.pub");
  (void)outpost::bundle::ParsePrivateKey(text, "fuzz.key");
  (void)outpost::bundle::ParseSelfTests(text, "fuzz.json");
  (void)outpost::bundle::ParseBaselines(text, "fuzz.json");
  (void)outpost::bundle::ValidateBundlePath(text);
  return 0;
}
