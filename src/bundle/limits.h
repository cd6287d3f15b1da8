// Bounds on what reading a bundle may cost (docs/bundles.md "Limits").
// Anything over a bound is refused with Reason::kDecompressionBomb before
// the work is done, so a hostile bundle cannot exhaust disk, memory or time.
#pragma once

#include <cstdint>

namespace outpost::bundle {

struct Limits {
  // Sum of the manifest's file sizes.
  uint64_t max_unpacked_bytes = uint64_t{16} << 30;
  uint64_t max_files = 10000;
  // manifest.json itself (self-test tensors live in it).
  uint64_t max_manifest_bytes = uint64_t{16} << 20;
  // Decompressed / compressed bytes of the whole stream, checked once more
  // than `ratio_check_after_bytes` have been decompressed (small text files
  // compress well and must not trip it).
  double max_compression_ratio = 200;
  uint64_t ratio_check_after_bytes = uint64_t{16} << 20;
  // zstd window (log2 bytes): the decoder's memory. 25 = 32 MiB, enough for
  // `zstd -19` and `--long=25`.
  int max_window_log = 25;
};

}  // namespace outpost::bundle
