// The hub's own small PKI: on first start, with no certificate given, the
// hub creates a CA and a server certificate signed by it, so that TLS is on
// from the first minute without an operator running openssl. Devices pin
// the CA (it travels in their bootstrap file), not the server certificate,
// so the server certificate can be reissued (new names, renewal) without
// touching the fleet.
//
// Keys are ECDSA P-256, written 0600; certificates are PEM. Files are
// written atomically (temp, fsync, rename, fsync dir).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "common/status.h"

namespace outpost::pki {

struct ServerPki {
  std::filesystem::path ca_cert;      // PEM, public: goes into bootstrap files
  std::filesystem::path ca_key;       // 0600
  std::filesystem::path server_cert;  // PEM chain: server certificate then the CA
  std::filesystem::path server_key;   // 0600
  bool created = false;               // true when this call generated the CA
};

// Makes sure `dir` holds ca.pem, ca.key, server.pem and server.key. An
// existing CA is kept; the server certificate is (re)issued when missing,
// when it does not cover every name in `names`, or when it expires within
// 30 days. `names` are DNS names or IP addresses (IPv4/IPv6 literals); the
// certificate always covers localhost, 127.0.0.1 and ::1 too.
// Errors: I/O errors naming the path; Internal for OpenSSL failures.
absl::StatusOr<ServerPki> EnsureServerPki(const std::filesystem::path& dir,
                                          const std::vector<std::string>& names);

// SHA-256 fingerprint of the first certificate in a PEM file, as
// "AB:CD:..." (what operators compare by eye).
absl::StatusOr<std::string> CertificateFingerprint(const std::filesystem::path& pem_file);

}  // namespace outpost::pki
