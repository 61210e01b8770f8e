// SPDX-License-Identifier: Apache-2.0
#include "stallmon/server/server.h"

#include <errno.h>
#include <grp.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/auth_metadata_processor.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "stallmon/server/finding_feed.h"
#include "stallmon/server/service.h"

namespace stallmon::server {
namespace {

std::string errno_text(int e) { return std::strerror(e); }

Result<gid_t> lookup_group(const std::string& group) {
  if (!group.empty() && group.find_first_not_of("0123456789") == std::string::npos) {
    return static_cast<gid_t>(std::stoul(group));
  }
  std::vector<char> buf(16384);
  struct group gr{};
  struct group* found = nullptr;
  int rc = getgrnam_r(group.c_str(), &gr, buf.data(), buf.size(), &found);
  if (rc != 0 || found == nullptr) {
    return Error(ErrorCode::kInvalidArgument, "socket group '" + group + "' does not exist");
  }
  return found->gr_gid;
}

// Refuses, on every call of a TCP connection, a client certificate (already verified against
// the CA by the handshake) that names no allowed client. Runs inline in gRPC's transport
// (IsBlocking false): a set lookup, no I/O.
class ClientAllowList final : public grpc::AuthMetadataProcessor {
 public:
  explicit ClientAllowList(std::vector<std::string> allowed) : allowed_(std::move(allowed)) {}
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata&, grpc::AuthContext* context, OutputMetadata*, OutputMetadata*) override {
    std::vector<std::string> ids;
    std::string subject;
    if (context != nullptr) {
      for (const char* name : {GRPC_X509_SUBJECT_PROPERTY_NAME, GRPC_X509_CN_PROPERTY_NAME, GRPC_X509_SAN_PROPERTY_NAME}) {
        for (const auto& v : context->FindPropertyValues(name)) ids.emplace_back(v.data(), v.size());
      }
      auto s = context->FindPropertyValues(GRPC_X509_SUBJECT_PROPERTY_NAME);
      if (!s.empty()) subject.assign(s.front().data(), s.front().size());
    }
    if (client_allowed(allowed_, ids)) return grpc::Status::OK;
    // A refused client may retry in a loop: log the first refusals and then every 1000th.
    const uint64_t n = ++refusals_;
    if (n <= 10 || n % 1000 == 0) {
      spdlog::warn("TCP client refused ({} so far): certificate subject '{}' is not in server.tcp.allowed_clients", n,
                   subject);
    }
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "client certificate '" + subject + "' is not in stallmond's server.tcp.allowed_clients");
  }

 private:
  const std::vector<std::string> allowed_;
  std::atomic<uint64_t> refusals_{0};
};

Error bad_limit(const char* key, const std::string& why) {
  return Error(ErrorCode::kInvalidArgument, std::string("server.") + key + ": " + why);
}

}  // namespace

bool client_allowed(const std::vector<std::string>& allowed, const std::vector<std::string>& identities) {
  if (allowed.empty()) return true;
  return std::any_of(identities.begin(), identities.end(), [&](const std::string& id) {
    return !id.empty() && std::find(allowed.begin(), allowed.end(), id) != allowed.end();
  });
}

const std::vector<IntLimit>& int_limits() {
  static const std::vector<IntLimit> limits = {
      {"max_watchers", &ServerOptions::max_watchers, 1, 10000},
      {"max_inspect_in_flight", &ServerOptions::max_inspect_in_flight, 1, 64},
      {"max_threads", &ServerOptions::max_threads, 1 + kMinSpareThreads + 1, 20000},
      {"max_request_bytes", &ServerOptions::max_request_bytes, 1024, 16 << 20},
      {"max_streams_per_connection", &ServerOptions::max_streams_per_connection, 1, 10000},
  };
  return limits;
}

Result<void> check_limits(const ServerOptions& o) {
  for (const auto& l : int_limits()) {
    const int v = o.*(l.field);
    if (v < l.min || v > l.max) {
      return bad_limit(l.key, "expected an integer " + std::to_string(l.min) + ".." + std::to_string(l.max));
    }
  }
  const int need = o.max_watchers + o.max_inspect_in_flight + kMinSpareThreads;
  if (o.max_threads < need) {
    return bad_limit("max_threads", "must be at least max_watchers + max_inspect_in_flight + " +
                                        std::to_string(kMinSpareThreads) + " = " + std::to_string(need) +
                                        " (each watcher and inspect holds a thread)");
  }
  for (const auto& a : o.tls_allowed_clients) {
    if (a.empty()) return bad_limit("tcp.allowed_clients", "entries must not be empty");
  }
  return {};
}

Result<void> prepare_unix_socket(const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return Error(ErrorCode::kInvalidArgument, "unix socket path must be absolute: '" + path + "'");
  }
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    return Error(ErrorCode::kInvalidArgument, "unix socket path too long (max " +
                                                  std::to_string(sizeof(addr.sun_path) - 1) + " bytes): " + path);
  }
  auto dir = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) {
    std::filesystem::create_directories(dir, ec);
    if (ec) return Error::io("creating " + dir.string() + ": " + ec.message(), ec.value());
    // 0755: clients need search permission; access control is the socket's own mode.
    ::chmod(dir.c_str(), 0755);
  }
  struct stat st{};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    return Error::io("stat " + path + ": " + errno_text(errno), errno);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return Error(ErrorCode::kInvalidArgument, path + " exists and is not a socket; not removing it");
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Error::io("socket: " + errno_text(errno), errno);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int err = errno;
  ::close(fd);
  if (rc == 0) {
    return Error(ErrorCode::kInvalidArgument, "another process (stallmond?) is serving " + path);
  }
  if (err != ECONNREFUSED && err != ENOENT) {
    return Error::io("probing " + path + ": " + errno_text(err), err);
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Error::io("removing stale socket " + path + ": " + errno_text(errno), errno);
  }
  spdlog::info("removed stale socket {}", path);
  return {};
}

Result<std::string> read_pem_file(const std::string& path, const char* what) {
  if (path.empty()) return Error(ErrorCode::kInvalidArgument, std::string(what) + " is required for TCP (mutual TLS)");
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error(ErrorCode::kInvalidArgument, std::string(what) + ": cannot read " + path + ": " + errno_text(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (s.find("-----BEGIN ") == std::string::npos) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + ": " + path + " is not PEM");
  }
  return s;
}

GrpcServer::GrpcServer(Backend& backend, ServerOptions options, uint64_t incarnation)
    : backend_(backend), options_(std::move(options)), incarnation_(incarnation) {}

GrpcServer::~GrpcServer() { shutdown(); }

int GrpcServer::active_watchers() const { return service_ ? service_->active_watchers() : 0; }
int GrpcServer::inspect_calls() const { return service_ ? service_->inspect_calls() : 0; }

Result<void> GrpcServer::start() {
  if (options_.unix_socket.empty() && options_.tcp_listen.empty()) {
    return Error(ErrorCode::kInvalidArgument, "no listener: set a unix socket or a TCP address");
  }
  if (auto r = check_limits(options_); !r.ok()) return r.error();
  std::optional<gid_t> gid;
  if (!options_.unix_socket.empty()) {
    if (!options_.socket_group.empty()) {
      auto g = lookup_group(options_.socket_group);
      if (!g.ok()) return g.error();
      gid = *g;
    }
    if (auto r = prepare_unix_socket(options_.unix_socket); !r.ok()) return r.error();
  }
  std::shared_ptr<grpc::ServerCredentials> tcp_creds;
  if (!options_.tcp_listen.empty()) {
    auto cert = read_pem_file(options_.tls_cert_file, "TLS server certificate (tls_cert)");
    if (!cert.ok()) return cert.error();
    auto key = read_pem_file(options_.tls_key_file, "TLS server key (tls_key)");
    if (!key.ok()) return key.error();
    auto ca = read_pem_file(options_.tls_client_ca_file, "TLS client CA (tls_client_ca)");
    if (!ca.ok()) return ca.error();
    // Mutual TLS only: a client that presents no certificate, or one that does not chain to
    // the CA, fails the handshake before any RPC.
    grpc::SslServerCredentialsOptions ssl(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = *ca;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    tcp_creds = grpc::SslServerCredentials(ssl);
    if (!options_.tls_allowed_clients.empty()) {
      tcp_creds->SetAuthMetadataProcessor(std::make_shared<ClientAllowList>(options_.tls_allowed_clients));
    }
  }

  // Both are process-wide switches read by the next BuildAndStart.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  feed_ = std::make_unique<FindingFeed>(backend_.revision());
  ServiceOptions so;
  so.incarnation = incarnation_;
  so.max_watchers = options_.max_watchers;
  so.max_inspect_in_flight = options_.max_inspect_in_flight;
  service_ = std::make_unique<StallmonService>(backend_, *feed_, so);

  grpc::ServerBuilder builder;
  if (!options_.unix_socket.empty()) {
    builder.AddListeningPort("unix:" + options_.unix_socket, grpc::InsecureServerCredentials());
  }
  if (tcp_creds) builder.AddListeningPort(options_.tcp_listen, tcp_creds, &tcp_port_);
  builder.RegisterService(service_.get());
  // Long-lived WatchFindings streams over TCP: ping idle connections so a vanished control
  // plane is noticed (and its stream thread freed) within about a minute and a half.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20'000);
  // A client cannot take more than these: threads (a call that finds none free is answered
  // RESOURCE_EXHAUSTED at once instead of queueing), request bytes, streams per connection.
  grpc::ResourceQuota quota("stallmond");
  quota.SetMaxThreads(options_.max_threads);
  builder.SetResourceQuota(quota);
  builder.SetMaxReceiveMessageSize(options_.max_request_bytes);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options_.max_streams_per_connection);
  backend_.add_finding_listener(feed_.get());
  listener_added_ = true;
  server_ = builder.BuildAndStart();
  if (!server_ || (tcp_creds && tcp_port_ == 0)) {
    shutdown();
    std::string what;
    if (!options_.unix_socket.empty()) what += "unix:" + options_.unix_socket;
    if (!options_.tcp_listen.empty()) what += (what.empty() ? "" : " / ") + options_.tcp_listen;
    return Error(ErrorCode::kIo, "cannot listen on " + what + " (address in use or not permitted?)");
  }
  if (!options_.unix_socket.empty()) {
    socket_bound_ = true;
    if (gid && ::chown(options_.unix_socket.c_str(), static_cast<uid_t>(-1), *gid) != 0) {
      int e = errno;
      shutdown();
      return Error::io("chown " + options_.unix_socket + ": " + errno_text(e), e);
    }
    if (::chmod(options_.unix_socket.c_str(), options_.socket_mode) != 0) {
      int e = errno;
      shutdown();
      return Error::io("chmod " + options_.unix_socket + ": " + errno_text(e), e);
    }
  }
  set_serving(true);
  return {};
}

void GrpcServer::set_serving(bool serving) {
  if (!server_) return;
  if (auto* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(serving);  // every service, "" included
    health->SetServingStatus(kServiceName, serving);
  }
}

void GrpcServer::shutdown() {
  if (server_) {
    if (auto* health = server_->GetHealthCheckService()) health->Shutdown();  // NOT_SERVING for good
  }
  if (feed_) feed_->shutdown();
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + options_.shutdown_grace);
    server_->Wait();
    server_.reset();
  }
  if (listener_added_) {
    backend_.remove_finding_listener(feed_.get());
    listener_added_ = false;
  }
  if (socket_bound_) {
    ::unlink(options_.unix_socket.c_str());
    socket_bound_ = false;
  }
}

}  // namespace stallmon::server
