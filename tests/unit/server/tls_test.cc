// SPDX-License-Identifier: Apache-2.0
// TCP is mutual TLS only: a client without a certificate, or with one from another CA, is
// refused in the handshake; a client with a certificate from the configured CA is served. The
// unix socket keeps working alongside.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

#include "hermetic_agent.h"
#include "stallmon/server/server.h"
#include "stallmon/v1/stallmon.grpc.pb.h"
#include "test_certs.h"

namespace stallmon::server {
namespace {

using namespace std::chrono_literals;
using testing::TestCerts;

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/stallmon-tls-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    certs_ = TestCerts::make(dir_);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  void SetUp() override {
    ASSERT_TRUE(certs_.error.empty()) << certs_.error;
    agent_.add("demo", "uuid-demo", 2);
    ServerOptions o;
    o.unix_socket = dir_ + "/s.sock";
    o.tcp_listen = "127.0.0.1:0";
    o.tls_cert_file = certs_.server_cert;
    o.tls_key_file = certs_.server_key;
    o.tls_client_ca_file = certs_.ca;
    o.shutdown_grace = 200ms;
    server_ = std::make_unique<GrpcServer>(agent_.backend, o, 7);
    auto r = server_->start();
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    ASSERT_GT(server_->tcp_port(), 0);
    target_ = "127.0.0.1:" + std::to_string(server_->tcp_port());
  }

  grpc::Status call(std::shared_ptr<grpc::ChannelCredentials> creds) {
    auto ch = grpc::CreateChannel(target_, creds);
    auto stub = v1::Stallmon::NewStub(ch);
    grpc::ClientContext c;
    // A hang guard: refused clients fail fast (UNAVAILABLE), long before it.
    c.set_deadline(std::chrono::system_clock::now() + 60s);
    domains_.Clear();
    return stub->ListDomains(&c, {}, &domains_);
  }
  static std::shared_ptr<grpc::ChannelCredentials> creds(const std::string& cert, const std::string& key) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = TestCerts::read(certs_.ca);
    if (!cert.empty()) {
      o.pem_cert_chain = TestCerts::read(cert);
      o.pem_private_key = TestCerts::read(key);
    }
    return grpc::SslCredentials(o);
  }

  static inline std::string dir_;
  static inline TestCerts certs_;
  testing::HermeticAgent agent_;
  std::unique_ptr<GrpcServer> server_;
  std::string target_;
  v1::ListDomainsResponse domains_;  // of the last call()
};

TEST_F(TlsTest, ClientWithCertificateFromTheCaIsServed) {
  auto st = call(creds(certs_.client_cert, certs_.client_key));
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  ASSERT_EQ(domains_.domains_size(), 1);
  EXPECT_EQ(domains_.domains(0).name(), "demo");
}

TEST_F(TlsTest, ClientWithoutCertificateIsRefused) {
  auto st = call(creds("", ""));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
}

TEST_F(TlsTest, ClientWithCertificateFromAnotherCaIsRefused) {
  auto st = call(creds(certs_.rogue_cert, certs_.rogue_key));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
}

TEST_F(TlsTest, PlaintextClientIsRefused) {
  auto st = call(grpc::InsecureChannelCredentials());
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
}

TEST_F(TlsTest, UnixSocketServesAlongside) {
  auto ch = grpc::CreateChannel("unix:" + dir_ + "/s.sock", grpc::InsecureChannelCredentials());
  auto stub = v1::Stallmon::NewStub(ch);
  grpc::ClientContext c;
  c.set_deadline(std::chrono::system_clock::now() + 60s);
  v1::ListDomainsResponse r;
  ASSERT_TRUE(stub->ListDomains(&c, {}, &r).ok());
  ASSERT_EQ(r.domains_size(), 1);
  EXPECT_EQ(r.domains(0).name(), "demo");
}

}  // namespace
}  // namespace stallmon::server
