// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/qmp.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

namespace stallmon::introspect {
namespace {

constexpr size_t kMaxMessage = 16u << 20;
using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

}  // namespace

Result<std::unique_ptr<QmpSocket>> QmpSocket::connect(const std::string& path, std::chrono::milliseconds timeout) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) return Error(ErrorCode::kInvalidArgument, "QMP socket path too long");
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Error::io("socket", errno);
  std::unique_ptr<QmpSocket> s(new QmpSocket(fd, timeout));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS) {
    int err = errno;
    if (err == ENOENT) return Error(ErrorCode::kNotFound, "QMP socket " + path + " does not exist");
    return Error::io("connect " + path, err);
  }
  // Greeting: {"QMP": {...}}
  STALLMON_TRY(std::string greeting, s->read_message());
  auto g = nlohmann::json::parse(greeting, nullptr, false);
  if (g.is_discarded() || !g.is_object() || !g.contains("QMP")) {
    return Error(ErrorCode::kCorrupt, "QMP socket " + path + ": no QMP greeting");
  }
  auto caps = s->execute("qmp_capabilities");
  if (!caps.ok()) return std::move(caps).error().context("qmp_capabilities");
  return s;
}

QmpSocket::~QmpSocket() {
  if (fd_ >= 0) ::close(fd_);
}

Result<void> QmpSocket::send_line(std::string_view text) {
  auto deadline = Clock::now() + timeout_;
  std::string data(text);
  data += '\n';
  size_t off = 0;
  while (off < data.size()) {
    pollfd p{fd_, POLLOUT, 0};
    int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Error::io("QMP poll", errno);
    }
    if (r == 0) return Error(ErrorCode::kTimeout, "QMP write timed out");
    ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Error::io("QMP write", errno);
    }
    off += static_cast<size_t>(n);
  }
  return Ok();
}

Result<std::string> QmpSocket::read_message() {
  // QMP messages are single-line JSON objects terminated by "\r\n".
  auto deadline = Clock::now() + timeout_;
  for (;;) {
    size_t nl = pending_.find('\n');
    if (nl != std::string::npos) {
      std::string msg = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      if (!msg.empty() && msg.back() == '\r') msg.pop_back();
      if (msg.empty()) continue;
      return msg;
    }
    if (pending_.size() > kMaxMessage) return Error(ErrorCode::kLimit, "QMP message larger than 16 MiB");
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Error::io("QMP poll", errno);
    }
    if (r == 0) return Error(ErrorCode::kTimeout, "QMP read timed out");
    char buf[65536];
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Error::io("QMP read", errno);
    }
    if (n == 0) return Error(ErrorCode::kIo, "QMP connection closed");
    pending_.append(buf, static_cast<size_t>(n));
  }
}

Result<std::string> QmpSocket::execute(std::string_view command, std::string_view arguments_json) {
  nlohmann::json req = {{"execute", std::string(command)}};
  if (!arguments_json.empty()) {
    auto args = nlohmann::json::parse(arguments_json, nullptr, false);
    if (args.is_discarded() || !args.is_object()) return Error(ErrorCode::kInvalidArgument, "QMP arguments must be a JSON object");
    req["arguments"] = std::move(args);
  }
  STALLMON_TRY_VOID(send_line(req.dump()));
  // Replies arrive in order; skip events ({"event": ...}) in between. Bounded by the timeout
  // of each read and a message count.
  for (int i = 0; i < 10000; ++i) {
    STALLMON_TRY(std::string msg, read_message());
    STALLMON_TRY(std::optional<std::string> ret, parse_qmp_reply(msg, command));
    if (ret) return std::move(*ret);
  }
  return Error(ErrorCode::kLimit, "QMP: too many events before the reply");
}

Result<std::optional<std::string>> parse_qmp_reply(std::string_view message, std::string_view command) {
  auto j = nlohmann::json::parse(message, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error(ErrorCode::kCorrupt, "QMP: malformed reply");
  if (j.contains("event")) return std::optional<std::string>();
  if (auto ret = j.find("return"); ret != j.end()) {
    // dump() throws on invalid UTF-8 unless told to replace it.
    return std::optional<std::string>(ret->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }
  if (auto err = j.find("error"); err != j.end()) {
    std::string desc = "unknown error";
    if (err->is_object()) {
      if (auto d = err->find("desc"); d != err->end() && d->is_string()) desc = d->get<std::string>();
    }
    return Error(ErrorCode::kIo, "QMP " + std::string(command) + ": " + desc);
  }
  return Error(ErrorCode::kCorrupt, "QMP: reply without return or error");
}

Result<std::string> parse_hmp_return(std::string_view return_json) {
  auto j = nlohmann::json::parse(return_json, nullptr, false);
  if (j.is_discarded() || !j.is_string()) return Error(ErrorCode::kCorrupt, "HMP reply is not a string");
  return j.get<std::string>();
}

Result<std::string> QmpSocket::hmp(std::string_view command_line) {
  nlohmann::json args = {{"command-line", std::string(command_line)}};
  STALLMON_TRY(std::string ret, execute("human-monitor-command", args.dump()));
  return parse_hmp_return(ret);
}

HmpCommand QmpSocket::as_hmp() {
  return [this](std::string_view cmd) { return hmp(cmd); };
}

}  // namespace stallmon::introspect
