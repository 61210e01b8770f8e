// SPDX-License-Identifier: Apache-2.0
// GrpcServer: the transport around StallmonService.
//
// - A unix socket by default (/run/stallmon/stallmond.sock): the directory is created if
//   missing, a stale socket left by a crashed daemon is replaced, a live one (another stallmond
//   answers on it) is an error; the socket gets mode 0660 (and optionally a group) once bound.
//   Until the chmod the socket has the process umask's mode (0755 under systemd's 0022: root
//   only), so the window never lets anyone in that the final mode would not.
// - Optionally TCP, only with mutual TLS: server certificate and key, and a CA that client
//   certificates must chain to. A client without a certificate fails the TLS handshake. With
//   tls_allowed_clients set, a certificate from that CA must also name an allowed client
//   (subject, CN or a SAN), else every call on the connection fails PERMISSION_DENIED.
// - Resource caps, so one client cannot exhaust the daemon: gRPC threads (grpc::ResourceQuota;
//   a call that finds none free fails at once with RESOURCE_EXHAUSTED "Server Threadpool
//   Exhausted"), request size, concurrent streams per connection, WatchFindings streams and
//   InspectDomain reads (service.h).
// - The standard grpc.health.v1.Health service ("" and "stallmon.v1.Stallmon": SERVING while
//   the daemon samples, NOT_SERVING when its sampling stalls and from shutdown on) and server
//   reflection (grpc.reflection.v1alpha).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/server/backend.h"

namespace grpc {
class Server;
}

namespace stallmon::server {

class FindingFeed;
class StallmonService;

struct ServerOptions {
  std::string unix_socket = "/run/stallmon/stallmond.sock";  // empty: no unix socket
  mode_t socket_mode = 0660;
  std::string socket_group;  // group name or number; empty: the daemon's group
  // "HOST:PORT" ("0.0.0.0:9443", "[::]:9443", "127.0.0.1:0" for any free port); empty: no TCP.
  std::string tcp_listen;
  std::string tls_cert_file;       // PEM server certificate (chain)
  std::string tls_key_file;        // PEM private key
  std::string tls_client_ca_file;  // PEM CA bundle client certificates must chain to
  // TCP clients allowed, each matched exactly against the client certificate's subject (as
  // gRPC prints it, e.g. "CN=ctl,O=ops"), its CN, or any of its SANs (DNS, URI, email, IP).
  // Empty: any certificate from tls_client_ca.
  std::vector<std::string> tls_allowed_clients;
  int max_watchers = 64;
  int max_inspect_in_flight = 2;  // distinct InspectDomain guest reads at once
  // gRPC server threads (pollers included; each call being served holds one). Must leave room
  // for max_watchers streams plus the unary calls: see kMinSpareThreads.
  int max_threads = 96;
  int max_request_bytes = 64 * 1024;    // largest request message accepted
  int max_streams_per_connection = 32;  // HTTP/2 concurrent streams; more wait on the client
  // Shutdown: in-flight calls get this long to finish before they are cancelled.
  std::chrono::milliseconds shutdown_grace{2000};
};

// Threads beyond max_watchers + max_inspect_in_flight that max_threads must leave for pollers
// and the cheap unary calls, so that the per-RPC caps (with their own messages) bind first.
inline constexpr int kMinSpareThreads = 4;

// The gRPC health service name of the API.
inline constexpr const char* kServiceName = "stallmon.v1.Stallmon";

class GrpcServer {
 public:
  // `backend` must outlive the server.
  GrpcServer(Backend& backend, ServerOptions options, uint64_t incarnation);
  ~GrpcServer();  // shutdown()
  GrpcServer(const GrpcServer&) = delete;
  GrpcServer& operator=(const GrpcServer&) = delete;

  // Binds, registers the finding listener, starts serving (health SERVING). Errors: kIo
  // (socket directory, bind failure), kInvalidArgument (TCP without all three TLS files, an
  // unreadable PEM file, an unknown socket group, a live socket of another daemon).
  Result<void> start();
  // Health status of "" and the API service (the daemon ties it to sampling liveness).
  void set_serving(bool serving);
  // Health NOT_SERVING, open WatchFindings streams end (UNAVAILABLE), in-flight calls get
  // shutdown_grace, then the listener is removed and the unix socket unlinked. Idempotent.
  void shutdown();

  int tcp_port() const { return tcp_port_; }  // the bound TCP port; 0 without TCP
  const ServerOptions& options() const { return options_; }
  int active_watchers() const;
  int inspect_calls() const;  // InspectDomain calls being served (reading or sharing a read)

 private:
  Backend& backend_;
  ServerOptions options_;
  uint64_t incarnation_;
  std::unique_ptr<FindingFeed> feed_;
  std::unique_ptr<StallmonService> service_;
  std::unique_ptr<grpc::Server> server_;
  bool listener_added_ = false;
  bool socket_bound_ = false;
  int tcp_port_ = 0;
};

// Prepares `path` for binding: creates its directory (mode 0755) if missing; if something is
// there already: a socket nobody answers on is removed (stale, from a crashed daemon), a socket
// that accepts a connection is an error ("another stallmond is serving ..."), anything else is
// an error (never unlinked). Exposed for tests.
Result<void> prepare_unix_socket(const std::string& path);

// The integer options with their config keys ("server." + key) and ranges, for the daemon's
// config parser and check_limits alike.
struct IntLimit {
  const char* key;
  int ServerOptions::*field;
  int min, max;
};
const std::vector<IntLimit>& int_limits();

// The numeric options in range and consistent (max_threads leaves kMinSpareThreads beyond the
// watchers and inspect reads); kInvalidArgument naming the option (its config key) otherwise.
Result<void> check_limits(const ServerOptions& options);

// Whether a client certificate, described by its subject, CN and SANs, is on `allowed`
// (exact match of any of them against any entry; an empty list allows everyone).
bool client_allowed(const std::vector<std::string>& allowed, const std::vector<std::string>& identities);

// Reads a whole file (PEM); kInvalidArgument naming the option when it cannot.
Result<std::string> read_pem_file(const std::string& path, const char* what);

}  // namespace stallmon::server
