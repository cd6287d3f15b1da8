#include "common/tls_pki.h"

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "common/atomic_file.h"

namespace outpost::pki {
namespace {

namespace fs = std::filesystem;

class TlsPkiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/tls_pki_test_XXXXXX";
    dir_ = mkdtemp(dir_template);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

X509* ReadCert(const fs::path& path) {
  FILE* f = fopen(path.c_str(), "r");
  if (f == nullptr) return nullptr;
  X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
  fclose(f);
  return cert;
}

mode_t ModeOf(const fs::path& path) {
  struct stat st {};
  stat(path.c_str(), &st);
  return st.st_mode & 0777;
}

// The server certificate chains to the CA and covers `name`.
bool Verifies(const ServerPki& pki, const std::string& name) {
  X509* ca = ReadCert(pki.ca_cert);
  X509* leaf = ReadCert(pki.server_cert);
  X509_STORE* store = X509_STORE_new();
  X509_STORE_add_cert(store, ca);
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, leaf, nullptr);
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx);
  bool ip = name.find_first_not_of("0123456789.:") == std::string::npos;
  if (ip) {
    X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
  } else {
    X509_VERIFY_PARAM_set1_host(param, name.c_str(), name.size());
  }
  bool ok = X509_verify_cert(ctx) == 1;
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  X509_free(ca);
  X509_free(leaf);
  return ok;
}

TEST_F(TlsPkiTest, FirstStartCreatesCaAndServerCertificateCoveringLoopbackAndNames) {
  auto pki = EnsureServerPki(dir_ / "tls", {"hub.example.com", "10.0.0.7"});
  ASSERT_TRUE(pki.ok()) << pki.status();
  EXPECT_TRUE(pki->created);
  for (const char* name : {"localhost", "127.0.0.1", "::1", "hub.example.com", "10.0.0.7"}) {
    EXPECT_TRUE(Verifies(*pki, name)) << name;
  }
  EXPECT_FALSE(Verifies(*pki, "other.example.com"));
  EXPECT_EQ(ModeOf(pki->ca_key), 0600u);
  EXPECT_EQ(ModeOf(pki->server_key), 0600u);
  EXPECT_EQ(ModeOf(dir_ / "tls"), 0700u);
}

TEST_F(TlsPkiTest, RestartKeepsCaAndCertificateWhenNamesAreCovered) {
  auto first = EnsureServerPki(dir_, {"hub.local"});
  ASSERT_TRUE(first.ok()) << first.status();
  std::string ca = *ReadFile(first->ca_cert);
  std::string server = *ReadFile(first->server_cert);
  auto second = EnsureServerPki(dir_, {"hub.local"});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->created);
  EXPECT_EQ(*ReadFile(second->ca_cert), ca);
  EXPECT_EQ(*ReadFile(second->server_cert), server);
}

TEST_F(TlsPkiTest, NewNameReissuesServerCertificateUnderTheSameCa) {
  auto first = EnsureServerPki(dir_, {});
  ASSERT_TRUE(first.ok()) << first.status();
  std::string ca = *ReadFile(first->ca_cert);
  std::string server = *ReadFile(first->server_cert);
  auto second = EnsureServerPki(dir_, {"192.168.1.20"});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*ReadFile(second->ca_cert), ca);  // devices keep their pin
  EXPECT_NE(*ReadFile(second->server_cert), server);
  EXPECT_TRUE(Verifies(*second, "192.168.1.20"));
}

TEST_F(TlsPkiTest, CorruptCertificateIsReissuedAndCorruptCaKeyIsAnError) {
  auto first = EnsureServerPki(dir_, {});
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(WriteFileAtomic(first->server_cert, "garbage").ok());
  auto second = EnsureServerPki(dir_, {});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(Verifies(*second, "localhost"));
  ASSERT_TRUE(WriteFileAtomic(first->server_cert, "garbage").ok());
  ASSERT_TRUE(WriteFileAtomic(first->ca_key, "not a key", 0600).ok());
  auto third = EnsureServerPki(dir_, {});
  ASSERT_FALSE(third.ok());
  EXPECT_NE(third.status().message().find("ca.key"), absl::string_view::npos) << third.status();
}

TEST_F(TlsPkiTest, FingerprintIsColonSeparatedSha256) {
  auto pki = EnsureServerPki(dir_, {});
  ASSERT_TRUE(pki.ok()) << pki.status();
  auto fingerprint = CertificateFingerprint(pki->ca_cert);
  ASSERT_TRUE(fingerprint.ok()) << fingerprint.status();
  EXPECT_EQ(fingerprint->size(), 32u * 3 - 1);
  EXPECT_EQ((*fingerprint)[2], ':');
  EXPECT_FALSE(CertificateFingerprint(dir_ / "missing.pem").ok());
}

}  // namespace
}  // namespace outpost::pki
