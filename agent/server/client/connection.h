// SPDX-License-Identifier: Apache-2.0
// How stallctl reaches stallmond: options, channel creation, and the "not running" diagnosis.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

namespace stallmon::server::client {

inline constexpr const char* kDefaultSocket = "/run/stallmon/stallmond.sock";

struct ConnectOptions {
  std::string socket = kDefaultSocket;
  std::string tcp;  // HOST:PORT: TCP with mutual TLS instead of the socket
  std::string cert, key, ca;
  double timeout_s = 10;  // per call (not for --watch streams)
};

// --socket/--tcp/--cert/--key/--ca/--timeout on a subcommand.
void add_connect_options(CLI::App* cmd, ConnectOptions& o);

struct Connection {
  std::shared_ptr<grpc::Channel> channel;
  std::string target;  // for messages: the socket path or HOST:PORT
  bool tcp = false;
};

// Result of trying to set up a connection: either a channel, or a message and exit code.
struct Connected {
  Connection conn;
  int exit_code = 0;  // non-zero: `message` says why (already formatted for stderr)
  std::string message;
};

// Checks the socket first (missing → "stallmond is not running (no socket at PATH)", exit 3;
// refused → stale socket, exit 3; EACCES → exit 1) so the common cases get a clear message
// rather than a gRPC UNAVAILABLE; for TCP reads the PEM files.
Connected connect(const ConnectOptions& o);

// A context with the --timeout deadline.
std::unique_ptr<grpc::ClientContext> make_context(const ConnectOptions& o);

// Prints an RPC failure to stderr as "stallctl: WHAT: CODE: message" and returns the exit code
// (kExitNotRunning for UNAVAILABLE on a connection that never worked).
int report(const std::string& what, const grpc::Status& st, const Connection& c);

}  // namespace stallmon::server::client
