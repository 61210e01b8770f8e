// SPDX-License-Identifier: Apache-2.0
// GrpcServer: the transport around StallmonService.
//
// - A unix socket by default (/run/stallmon/stallmond.sock): the directory is created if
//   missing, a stale socket left by a crashed daemon is replaced, a live one (another stallmond
//   answers on it) is an error; the socket gets mode 0660 (and optionally a group) once bound.
//   Until the chmod the socket has the process umask's mode (0755 under systemd's 0022: root
//   only), so the window never lets anyone in that the final mode would not.
// - Optionally TCP, only with mutual TLS: server certificate and key, and a CA that client
//   certificates must chain to. A client without a certificate fails the TLS handshake.
// - The standard grpc.health.v1.Health service ("" and "stallmon.v1.Stallmon": SERVING while
//   the daemon samples, NOT_SERVING when its sampling stalls and from shutdown on) and server
//   reflection (grpc.reflection.v1alpha).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

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
  int max_watchers = 64;
  // Shutdown: in-flight calls get this long to finish before they are cancelled.
  std::chrono::milliseconds shutdown_grace{2000};
};

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

// Reads a whole file (PEM); kInvalidArgument naming the option when it cannot.
Result<std::string> read_pem_file(const std::string& path, const char* what);

}  // namespace stallmon::server
