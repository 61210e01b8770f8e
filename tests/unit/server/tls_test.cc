// SPDX-License-Identifier: Apache-2.0
// TCP is mutual TLS only: a client without a certificate, or with one from another CA, is
// refused in the handshake; a client with a certificate from the configured CA is served. With
// an allow-list, a certificate from that CA must also name an allowed client (subject, CN or
// SAN, whole names only), else every call, health checks included, is PERMISSION_DENIED. The
// unix socket keeps working alongside, allow-list or not.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

#include "grpc/health/v1/health.grpc.pb.h"
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
    serve();
  }

  // (Re)starts the server with this allow-list.
  void serve(std::vector<std::string> allowed_clients = {}) {
    server_.reset();
    ServerOptions o;
    o.tls_allowed_clients = std::move(allowed_clients);
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
    // A connection of its own: the handshake (and its certificate) is this call's.
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto ch = grpc::CreateCustomChannel(target_, creds, args);
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

TEST_F(TlsTest, EmptyAllowListServesAnyCertificateFromTheCa) {
  auto st = call(creds(certs_.intruder_cert, certs_.intruder_key));
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(domains_.domains_size(), 1);
}

TEST_F(TlsTest, AllowListServesAClientNamedBySubjectCnOrSan) {
  for (const std::string entry : {"CN=client", "client", "ctl.example.net", "spiffe://example.net/ctl"}) {
    SCOPED_TRACE(entry);
    serve({"someone-else", entry});
    auto st = call(creds(certs_.client_cert, certs_.client_key));
    ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
    EXPECT_EQ(domains_.domains_size(), 1);
    // A certificate from the same CA that names no allowed client.
    st = call(creds(certs_.intruder_cert, certs_.intruder_key));
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
    EXPECT_NE(st.error_message().find("CN=intruder"), std::string::npos) << st.error_message();
    EXPECT_NE(st.error_message().find("allowed_clients"), std::string::npos) << st.error_message();
    EXPECT_EQ(domains_.domains_size(), 0);
  }
}

TEST_F(TlsTest, AllowListMatchesWholeNamesOnly) {
  serve({"clien", "CN=client,O=ops", "example.net", "CN"});
  auto st = call(creds(certs_.client_cert, certs_.client_key));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  // The CA check still comes first: another CA's certificate fails the handshake.
  serve({"rogue"});
  st = call(creds(certs_.rogue_cert, certs_.rogue_key));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
}

TEST_F(TlsTest, AllowListCoversHealthAndLeavesTheUnixSocketAlone) {
  serve({"client"});
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateCustomChannel(target_, creds(certs_.intruder_cert, certs_.intruder_key), args));
  grpc::ClientContext c;
  c.set_deadline(std::chrono::system_clock::now() + 60s);
  grpc::health::v1::HealthCheckResponse hr;
  EXPECT_EQ(health->Check(&c, {}, &hr).error_code(), grpc::StatusCode::PERMISSION_DENIED);

  auto ch = grpc::CreateChannel("unix:" + dir_ + "/s.sock", grpc::InsecureChannelCredentials());
  grpc::ClientContext u;
  u.set_deadline(std::chrono::system_clock::now() + 60s);
  v1::ListDomainsResponse r;
  EXPECT_TRUE(v1::Stallmon::NewStub(ch)->ListDomains(&u, {}, &r).ok());
}

TEST(ClientAllowed, ExactMatchOfAnyIdentityEmptyListAllowsAll) {
  EXPECT_TRUE(client_allowed({}, {}));
  EXPECT_TRUE(client_allowed({}, {"CN=x"}));
  EXPECT_TRUE(client_allowed({"a", "x.example"}, {"CN=x", "x", "x.example"}));
  EXPECT_FALSE(client_allowed({"a"}, {}));
  EXPECT_FALSE(client_allowed({"x"}, {"CN=x", "xx", "x.example"}));
  EXPECT_FALSE(client_allowed({""}, {""}));  // no empty identity matches
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
