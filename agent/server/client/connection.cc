// SPDX-License-Identifier: Apache-2.0
#include "connection.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "stallmon/server/client_commands.h"

namespace stallmon::server::client {
namespace {

bool read_file(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

const char* code_name(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "ERROR";
  }
}

}  // namespace

void add_connect_options(CLI::App* cmd, ConnectOptions& o) {
  cmd->add_option("--socket", o.socket, "stallmond's unix socket")
      ->envname("STALLMON_SOCKET")
      ->capture_default_str();
  auto* tcp = cmd->add_option("--tcp", o.tcp, "HOST:PORT of stallmond's TCP listener (mutual TLS)");
  cmd->add_option("--cert", o.cert, "client certificate (PEM) for --tcp")->needs(tcp);
  cmd->add_option("--key", o.key, "client private key (PEM) for --tcp")->needs(tcp);
  cmd->add_option("--ca", o.ca, "CA bundle (PEM) that signed stallmond's certificate, for --tcp")->needs(tcp);
  cmd->add_option("--timeout", o.timeout_s, "seconds to wait for an answer")->capture_default_str()->check(CLI::Range(0.1, 3600.0));
}

Connected connect(const ConnectOptions& o) {
  Connected r;
  if (!o.tcp.empty()) {
    if (o.cert.empty() || o.key.empty() || o.ca.empty()) {
      r.exit_code = kExitUsage;
      r.message = "--tcp needs --cert, --key and --ca (stallmond's TCP listener is mutual TLS only)";
      return r;
    }
    grpc::SslCredentialsOptions ssl;
    for (auto [path, dst] : {std::pair{&o.cert, &ssl.pem_cert_chain}, std::pair{&o.key, &ssl.pem_private_key},
                             std::pair{&o.ca, &ssl.pem_root_certs}}) {
      if (!read_file(*path, dst)) {
        r.exit_code = kExitFailure;
        r.message = "cannot read " + *path + ": " + std::strerror(errno);
        return r;
      }
    }
    r.conn.channel = grpc::CreateChannel(o.tcp, grpc::SslCredentials(ssl));
    r.conn.target = o.tcp;
    r.conn.tcp = true;
    return r;
  }
  r.conn.target = o.socket;
  // ENOENT / ECONNREFUSED: not running (exit 3); anything else (EACCES...): a failure.
  auto fail = [&](int e, const std::string& not_running, const std::string& verb) {
    if (!not_running.empty()) {
      r.exit_code = kExitNotRunning;
      r.message = "stallmond is not running (" + not_running + ")";
    } else {
      r.exit_code = kExitFailure;
      r.message = verb + " " + o.socket + ": " + std::strerror(e) +
                  (e == EACCES ? " (run as root or as a member of the socket's group)" : "");
    }
    return r;
  };
  struct stat st{};
  if (::stat(o.socket.c_str(), &st) != 0) {
    int e = errno;
    return fail(e, e == ENOENT ? "no socket at " + o.socket : "", "cannot use");
  }
  if (!S_ISSOCK(st.st_mode)) {
    r.exit_code = kExitFailure;
    r.message = o.socket + " is not a socket";
    return r;
  }
  // Probe once: gRPC would only say UNAVAILABLE after its own retries.
  sockaddr_un addr{};
  if (o.socket.size() >= sizeof addr.sun_path) {
    r.exit_code = kExitUsage;
    r.message = "socket path too long: " + o.socket;
    return r;
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, o.socket.c_str(), o.socket.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int rc = fd < 0 ? -1 : ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int e = errno;
  if (fd >= 0) ::close(fd);
  if (rc != 0) {
    return fail(e, e == ECONNREFUSED ? "stale socket at " + o.socket + ": connection refused" : "", "cannot connect to");
  }
  r.conn.channel = grpc::CreateChannel("unix:" + o.socket, grpc::InsecureChannelCredentials());
  return r;
}

std::unique_ptr<grpc::ClientContext> make_context(const ConnectOptions& o) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() +
                  std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000)));
  return c;
}

int report(const std::string& what, const grpc::Status& st, const Connection& c) {
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE && c.tcp) {
    std::fprintf(stderr, "stallctl: %s: cannot reach stallmond at %s: %s\n", what.c_str(), c.target.c_str(),
                 st.error_message().c_str());
    return kExitNotRunning;
  }
  std::fprintf(stderr, "stallctl: %s: %s: %s\n", what.c_str(), code_name(st.error_code()), st.error_message().c_str());
  return kExitFailure;
}

}  // namespace stallmon::server::client
