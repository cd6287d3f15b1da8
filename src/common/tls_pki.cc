#include "common/tls_pki.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <ctime>
#include <memory>

#include "common/atomic_file.h"

namespace outpost::pki {
namespace {

namespace fs = std::filesystem;

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, Free>;
using CertPtr = std::unique_ptr<X509, Free>;
using BioPtr = std::unique_ptr<BIO, Free>;

constexpr long kDay = 24 * 3600;
constexpr long kCaLifetime = 20 * 365 * kDay;
constexpr long kServerLifetime = 825 * kDay;  // the longest browsers accept
constexpr long kRenewBefore = 30 * kDay;

absl::Status OpensslError(std::string_view what) {
  return absl::InternalError(StrCat("OpenSSL: ", what, " failed"));
}

std::string PemOf(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  char* data = nullptr;
  long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

std::string PemOf(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

absl::StatusOr<CertPtr> LoadCert(const fs::path& path) {
  ASSIGN_OR_RETURN(std::string pem, ReadFile(path));
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  CertPtr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return absl::InvalidArgumentError(StrCat(path.string(), ": not a PEM certificate"));
  return cert;
}

absl::StatusOr<KeyPtr> LoadKey(const fs::path& path) {
  ASSIGN_OR_RETURN(std::string pem, ReadFile(path));
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  KeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) return absl::InvalidArgumentError(StrCat(path.string(), ": not a PEM private key"));
  return key;
}

bool IsIpLiteral(const std::string& name) {
  unsigned char buf[16];
  return inet_pton(AF_INET, name.c_str(), buf) == 1 || inet_pton(AF_INET6, name.c_str(), buf) == 1;
}

std::vector<std::string> AllNames(const std::vector<std::string>& names) {
  std::vector<std::string> all = {"localhost", "127.0.0.1", "::1"};
  for (const std::string& name : names) {
    if (!name.empty() && std::find(all.begin(), all.end(), name) == all.end()) {
      all.push_back(name);
    }
  }
  return all;
}

absl::Status AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, Free> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return OpensslError(StrCat("adding extension ", OBJ_nid2sn(nid), "=", value));
  }
  return absl::OkStatus();
}

absl::StatusOr<CertPtr> NewCert(EVP_PKEY* key, const std::string& common_name, long lifetime) {
  CertPtr cert(X509_new());
  if (!cert) return OpensslError("X509_new");
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof(serial)) != 1) return OpensslError("RAND_bytes");
  serial[0] &= 0x7f;  // positive
  BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kDay);  // devices' clocks lag
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), lifetime);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("Outpost hub"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                             0);
  return cert;
}

absl::Status CreateCa(const ServerPki& pki) {
  KeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return OpensslError("EC key generation");
  ASSIGN_OR_RETURN(CertPtr cert, NewCert(key.get(), "Outpost hub CA", kCaLifetime));
  X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get()));
  RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE"));
  RETURN_IF_ERROR(
      AddExtension(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign"));
  RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_subject_key_identifier, "hash"));
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) == 0) return OpensslError("signing the CA");
  // Key first: a CA certificate without its key would be useless.
  RETURN_IF_ERROR(WriteFileAtomic(pki.ca_key, PemOf(key.get()), 0600));
  return WriteFileAtomic(pki.ca_cert, PemOf(cert.get()), 0644);
}

// True when `cert` covers every name and is not about to expire.
bool ServerCertUsable(X509* cert, const std::vector<std::string>& names) {
  time_t renew_at = time(nullptr) + kRenewBefore;
  if (X509_cmp_time(X509_get0_notAfter(cert), &renew_at) <= 0) return false;
  for (const std::string& name : names) {
    int ok = IsIpLiteral(name) ? X509_check_ip_asc(cert, name.c_str(), 0)
                               : X509_check_host(cert, name.c_str(), name.size(), 0, nullptr);
    if (ok != 1) return false;
  }
  return true;
}

absl::Status IssueServerCert(const ServerPki& pki, const std::vector<std::string>& names) {
  ASSIGN_OR_RETURN(CertPtr ca, LoadCert(pki.ca_cert));
  ASSIGN_OR_RETURN(KeyPtr ca_key, LoadKey(pki.ca_key));
  KeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return OpensslError("EC key generation");
  ASSIGN_OR_RETURN(CertPtr cert, NewCert(key.get(), names.back(), kServerLifetime));
  X509_set_issuer_name(cert.get(), X509_get_subject_name(ca.get()));
  std::string san;
  for (const std::string& name : names) {
    StrAppend(&san, san.empty() ? "" : ",", IsIpLiteral(name) ? "IP:" : "DNS:", name);
  }
  RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_subject_alt_name, san));
  RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_basic_constraints, "critical,CA:FALSE"));
  RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_key_usage,
                               "critical,digitalSignature,keyEncipherment"));
  RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_ext_key_usage, "serverAuth"));
  RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_authority_key_identifier, "keyid"));
  if (X509_sign(cert.get(), ca_key.get(), EVP_sha256()) == 0) {
    return OpensslError("signing the server certificate");
  }
  RETURN_IF_ERROR(WriteFileAtomic(pki.server_key, PemOf(key.get()), 0600));
  return WriteFileAtomic(pki.server_cert, PemOf(cert.get()) + PemOf(ca.get()), 0644);
}

}  // namespace

absl::StatusOr<ServerPki> EnsureServerPki(const fs::path& dir,
                                          const std::vector<std::string>& names) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(StrCat("creating ", dir.string(), ": ", ec.message()));
  fs::permissions(dir, fs::perms::owner_all, ec);  // keys live here
  ServerPki pki{dir / "ca.pem", dir / "ca.key", dir / "server.pem", dir / "server.key"};
  if (!fs::exists(pki.ca_cert) || !fs::exists(pki.ca_key)) {
    RETURN_IF_ERROR(CreateCa(pki));
    pki.created = true;
  }
  std::vector<std::string> all = AllNames(names);
  bool usable = false;
  if (!pki.created && fs::exists(pki.server_cert) && fs::exists(pki.server_key)) {
    absl::StatusOr<CertPtr> cert = LoadCert(pki.server_cert);
    usable = cert.ok() && ServerCertUsable(cert->get(), all);
  }
  if (!usable) RETURN_IF_ERROR(IssueServerCert(pki, all));
  return pki;
}

absl::StatusOr<std::string> CertificateFingerprint(const fs::path& pem_file) {
  ASSIGN_OR_RETURN(CertPtr cert, LoadCert(pem_file));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (X509_digest(cert.get(), EVP_sha256(), digest, &size) != 1) {
    return OpensslError("certificate digest");
  }
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned int i = 0; i < size; ++i) {
    if (i > 0) out.push_back(':');
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xf]);
  }
  return out;
}

}  // namespace outpost::pki
