// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/qmp.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <thread>

namespace stallmon::introspect {
namespace {

// A scripted QMP server on a unix socket: for each expected command substring, a reply.
class FakeQmp {
 public:
  FakeQmp(std::vector<std::pair<std::string, std::string>> script, bool greet = true)
      : path_(::testing::TempDir() + "/stallmon_qmp_" + std::to_string(getpid()) + "_" + std::to_string(counter_++)) {
    ::unlink(path_.c_str());
    fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof a.sun_path - 1);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 1), 0);
    thread_ = std::thread([this, script = std::move(script), greet] {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      auto send = [c](const std::string& s) { (void)!::write(c, s.data(), s.size()); };
      if (greet) send("{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n");
      std::string buf;
      for (const auto& [expect, reply] : script) {
        while (buf.find('\n') == std::string::npos) {
          char tmp[4096];
          ssize_t n = ::read(c, tmp, sizeof tmp);
          if (n <= 0) { ::close(c); return; }
          buf.append(tmp, n);
        }
        std::string line = buf.substr(0, buf.find('\n'));
        buf.erase(0, line.size() + 1);
        received.push_back(line);
        if (line.find(expect) == std::string::npos) break;
        send(reply);
      }
      // Keep the connection open until the client closes it (timeouts are the client's job).
      char tmp[64];
      while (::read(c, tmp, sizeof tmp) > 0) {
      }
      ::close(c);
    });
  }
  ~FakeQmp() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
    ::unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }
  std::vector<std::string> received;

 private:
  static inline int counter_ = 0;
  std::string path_;
  int fd_ = -1;
  std::thread thread_;
};

TEST(QmpSocket, NegotiatesRunsHmpAndSkipsEvents) {
  std::vector<std::pair<std::string, std::string>> script = {
      {"qmp_capabilities", "{\"return\": {}}\r\n"},
      {"human-monitor-command",
       "{\"timestamp\": {}, \"event\": \"RTC_CHANGE\"}\r\n{\"return\": \"Host virtual address for 0x0 (pc.ram) is "
       "0x7f0000000000\\r\\n\"}\r\n"},
      {"query-status", "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\r\n"},
  };
  std::unique_ptr<QmpSocket> q;
  {
    FakeQmp server(script);
    auto s = QmpSocket::connect(server.path(), std::chrono::milliseconds(5000));
    ASSERT_TRUE(s.ok()) << s.error().to_string();
    auto hmp = (*s)->as_hmp();
    auto r = hmp("gpa2hva 0x0");
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(*r, "Host virtual address for 0x0 (pc.ram) is 0x7f0000000000\r\n");
    auto e = (*s)->execute("query-status");
    ASSERT_FALSE(e.ok());
    EXPECT_NE(e.error().message.find("nope"), std::string::npos);
    EXPECT_EQ((*s)->execute("x", "[1]").error().code, ErrorCode::kInvalidArgument);
    s->reset();  // closes the client before the server joins
  }
}

TEST(QmpSocket, SilentServerTimesOut) {
  FakeQmp server({}, /*greet=*/false);
  auto s = QmpSocket::connect(server.path(), std::chrono::milliseconds(100));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kTimeout);
}

TEST(QmpSocket, MissingSocket) {
  auto s = QmpSocket::connect("/nonexistent/qmp.sock", std::chrono::milliseconds(100));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kNotFound);
}

}  // namespace
}  // namespace stallmon::introspect
