// Resumable, verified artifact download (release bundles from the hub, by
// SHA-256, over flaky links): bytes land in `<dest>.part`, a retry or a later
// call (after an agent restart or power cut) continues from the .part's size
// with an HTTP Range request, and `dest` appears only once its size and
// SHA-256 match, by an atomic rename.
//
// Thread safety: Fetch() is thread-safe; two calls for the same `dest` at
// once are refused (the .part is locked), different dests run in parallel.
// Fetch() blocks its thread for the whole download, retries included.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace outpost::agent {

struct FetchProgress {
  uint64_t bytes_done = 0;   // bytes of the artifact in <dest>.part
  uint64_t bytes_total = 0;  // the expected size
};

struct FetchOptions {
  // Trust: PEM file of the CAs to trust *instead of* the system store (the
  // hub's pinned CA). Empty: system store.
  std::string ca_file;
  // Optional public-key pins, "sha256//BASE64[;sha256//...]": base64
  // SHA-256 of the server certificate's SubjectPublicKeyInfo (DER), as
  // `openssl x509 -pubkey | openssl pkey -pubin -outform der | openssl dgst
  // -sha256 -binary | base64` prints it.
  std::string pinned_public_key;
  // Sent as "Authorization: Bearer <token>". Empty: none. Redirects are
  // not followed (a 3xx is FailedPrecondition).
  std::string bearer_token;

  // Attempts after the first for retryable failures (connection errors,
  // cut transfers, stalls, HTTP 408/429/5xx). Each retry resumes.
  int max_retries = 8;
  // Full-jitter exponential backoff: before retry k (from 0) sleep a random
  // time in [0, min(backoff_max, backoff_base * 2^k)]. A Retry-After header
  // (seconds) raises the sleep, capped at backoff_max.
  std::chrono::milliseconds backoff_base{1000};
  std::chrono::milliseconds backoff_max{60000};

  std::chrono::milliseconds connect_timeout{15000};
  // An attempt is abandoned (and retried) when it moves fewer than
  // low_speed_bytes_per_second for low_speed_time: a stalled link fails
  // fast instead of hanging; there is no overall timeout (bundles are big).
  long low_speed_bytes_per_second = 1024;
  std::chrono::seconds low_speed_time{60};

  // Called on the fetching thread after each chunk is on disk (and once at
  // the start with the resumed size). bytes_done never decreases, except
  // when the fetcher starts over from zero: the server ignored the Range
  // request (answered 200) or a resumed .part failed its hash.
  std::function<void(const FetchProgress&)> progress;
  // Polled during the transfer and backoff sleeps; true aborts with
  // Cancelled, keeping the .part for a later call.
  std::function<bool()> cancelled;

  // Free bytes available to unprivileged writers on the filesystem of the
  // given directory; default statvfs (f_bavail * f_frsize). Injectable for tests.
  std::function<absl::StatusOr<uint64_t>(const std::filesystem::path&)> free_space_fn;
  // Free space the download must leave untouched (for logs, state, SQLite).
  uint64_t reserve_bytes = 0;
};

struct FetchResult {
  uint64_t resumed_from = 0;    // .part bytes reused at the start of the call
  uint64_t bytes_received = 0;  // body bytes taken from the network in this call
  int attempts = 0;             // HTTP requests made
};

// Downloads `url` to `dest` (replacing it), expecting exactly
// `expected_size` bytes whose SHA-256 is `expected_sha256_hex` (64 hex
// characters). `dest`'s directory must exist. Leaves `<dest>.part` behind on
// retryable failures and cancellation so a later call resumes; removes it
// when its content is proven wrong.
//
// Errors:
//   InvalidArgument     bad sha256 hex, malformed url or a scheme other
//                       than http/https
//   ResourceExhausted   not enough free space for the remaining bytes
//                       (checked before each request), or a write fails with
//                       ENOSPC/EDQUOT (injectable: fetch.part_write): the
//                       .part is kept; or the server sends or announces more
//                       than expected_size: the .part is removed
//   DataLoss            the downloaded bytes do not match the SHA-256, or the
//                       server's artifact is smaller than expected_size
//                       (.part removed)
//   NotFound            HTTP 404/410
//   Unauthenticated     HTTP 401
//   PermissionDenied    HTTP 403
//   FailedPrecondition  TLS verification failed (wrong CA or pin), another
//                       Fetch holds the .part, other HTTP 4xx/3xx
//   Unavailable         a retryable failure persisted after max_retries;
//                       the message has the last error
//   Cancelled           options.cancelled returned true
//   other codes         local I/O errors on dest's directory, from errno
//                       (absl::ErrnoToStatus: NotFound, PermissionDenied, ...)
absl::StatusOr<FetchResult> Fetch(std::string_view url, const std::filesystem::path& dest,
                                  std::string_view expected_sha256_hex, uint64_t expected_size,
                                  const FetchOptions& options);

// The SHA-256 of a whole file as 64 lowercase hex characters.
absl::StatusOr<std::string> Sha256File(const std::filesystem::path& path);

}  // namespace outpost::agent
