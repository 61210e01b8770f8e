// SPDX-License-Identifier: Apache-2.0
// Makes gRPC's shutdown synchronous at the end of a test process.
//
// When gRPC's last reference is dropped on one of its own threads (a channel or server released
// in a callback), grpc_shutdown() hands the clean-up to a detached thread (GRPC_VERBOSITY=DEBUG
// prints "grpc_shutdown spawns clean-up thread"), which then joins gRPC's workers while main()
// is already running exit handlers. A worker that did TLS and exits after OpenSSL's atexit
// clean-up has deleted its thread-local keys loses its error queue (904 bytes, OpenSSL's
// ERR_STATE), and LeakSanitizer reports it against whichever TLS test ran in that process, now
// and then (CI, round 9: TlsTest.ClientWithCertificateFromTheCaIsServed).
//
// So the process holds a reference of its own from start to end and drops it on the main thread
// after the last test: the clean-up runs there, synchronously, before exit. A reference still
// held elsewhere 10 s later is a test failure, not something to race with.
#include <grpc/grpc.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace {

class GrpcQuiesce : public ::testing::Environment {
 public:
  void SetUp() override { grpc_init(); }
  void TearDown() override {
    grpc_shutdown_blocking();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (grpc_is_initialized() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_FALSE(grpc_is_initialized()) << "gRPC is still initialized 10 s after the last test: "
                                           "an object of the test still holds a gRPC reference";
  }
};

// Registered before main() (gtest_main) runs the tests.
[[maybe_unused]] const auto* const kRegistered = ::testing::AddGlobalTestEnvironment(new GrpcQuiesce);

}  // namespace
