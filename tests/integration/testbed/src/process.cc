#include "testbed/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

extern char** environ;

namespace stallmon::testbed {
namespace {

using Clock = std::chrono::steady_clock;

void make_pipe(int fds[2]) {
  if (pipe2(fds, O_CLOEXEC) != 0) {
    throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
  }
}

pid_t spawn(const std::vector<std::string>& argv, int in, int out, int err) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in, 0);
  posix_spawn_file_actions_adddup2(&fa, out, 1);
  posix_spawn_file_actions_adddup2(&fa, err, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    throw std::runtime_error("cannot run " + argv[0] + ": " + std::strerror(rc));
  }
  return pid;
}

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Reads what is available from fd into buf; returns false on EOF.
bool read_some(int fd, std::string& buf) {
  char tmp[65536];
  for (;;) {
    ssize_t n = read(fd, tmp, sizeof tmp);
    if (n > 0) {
      buf.append(tmp, static_cast<size_t>(n));
      return true;
    }
    if (n == 0) return false;
    if (errno == EINTR) continue;
    return errno == EAGAIN;
  }
}

int ms_left(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

}  // namespace

ProcessResult run_process(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  int out[2], err[2];
  make_pipe(out);
  make_pipe(err);
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t pid;
  try {
    pid = spawn(argv, devnull, out[1], err[1]);
  } catch (...) {
    close(out[0]);
    close(out[1]);
    close(err[0]);
    close(err[1]);
    close(devnull);
    throw;
  }
  close(out[1]);
  close(err[1]);
  close(devnull);
  ProcessResult r;
  auto deadline = Clock::now() + timeout;
  bool out_open = true, err_open = true;
  while (out_open || err_open) {
    pollfd p[2] = {{out_open ? out[0] : -1, POLLIN, 0}, {err_open ? err[0] : -1, POLLIN, 0}};
    int n = poll(p, 2, ms_left(deadline));
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) {
      r.timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    if (out_open && (p[0].revents & (POLLIN | POLLHUP))) out_open = read_some(out[0], r.out);
    if (err_open && (p[1].revents & (POLLIN | POLLHUP))) err_open = read_some(err[0], r.err);
  }
  close(out[0]);
  close(err[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.exit_code = r.timed_out ? -1 : decode_status(status);
  return r;
}

Child::Child(const std::vector<std::string>& argv) {
  int in[2], out[2], err[2];
  make_pipe(in);
  make_pipe(out);
  make_pipe(err);
  try {
    pid_ = spawn(argv, in[0], out[1], err[1]);
  } catch (...) {
    for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) close(fd);
    throw;
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  in_ = in[1];
  out_ = out[0];
  errfd_ = err[0];
  fcntl(errfd_, F_SETFL, O_NONBLOCK);
  signal(SIGPIPE, SIG_IGN);  // writing to a dead child's stdin must not kill the test
}

Child::Child(Child&& o) noexcept {
  *this = std::move(o);
}

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    if (pid_ > 0) wait(std::chrono::seconds(30));
    pid_ = o.pid_;
    in_ = o.in_;
    out_ = o.out_;
    errfd_ = o.errfd_;
    outbuf_ = std::move(o.outbuf_);
    err_ = std::move(o.err_);
    status_ = o.status_;
    o.pid_ = -1;
    o.in_ = o.out_ = o.errfd_ = -1;
  }
  return *this;
}

Child::~Child() {
  if (pid_ > 0) wait(std::chrono::seconds(30));
}

void Child::drain(int timeout_ms) {
  pollfd p[2] = {{out_, POLLIN, 0}, {errfd_, POLLIN, 0}};
  int n = poll(p, 2, timeout_ms);
  if (n <= 0) return;
  if (out_ >= 0 && (p[0].revents & (POLLIN | POLLHUP))) {
    if (!read_some(out_, outbuf_)) {
      close(out_);
      out_ = -1;
    }
  }
  if (errfd_ >= 0 && (p[1].revents & (POLLIN | POLLHUP))) {
    if (!read_some(errfd_, err_)) {
      close(errfd_);
      errfd_ = -1;
    }
  }
}

std::optional<std::string> Child::read_line(std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto nl = outbuf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = outbuf_.substr(0, nl);
      outbuf_.erase(0, nl + 1);
      return line;
    }
    if (out_ < 0 || ms_left(deadline) == 0) return std::nullopt;
    drain(ms_left(deadline));
  }
}

void Child::close_stdin() {
  if (in_ >= 0) {
    close(in_);
    in_ = -1;
  }
}

int Child::wait(std::chrono::milliseconds timeout) {
  if (status_) return *status_;
  if (pid_ <= 0) return -1;
  close_stdin();
  auto deadline = Clock::now() + timeout;
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) break;
    if (r < 0 && errno != EINTR) {
      status_ = -1;
      return -1;
    }
    if (ms_left(deadline) == 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    if (out_ >= 0 || errfd_ >= 0) {
      drain(50);
    } else {
      usleep(20000);
    }
  }
  // The pipes may be held open by a grandchild: do not wait for EOF forever.
  for (int i = 0; i < 20 && (out_ >= 0 || errfd_ >= 0); ++i) drain(100);
  for (int* fd : {&out_, &errfd_}) {
    if (*fd >= 0) {
      close(*fd);
      *fd = -1;
    }
  }
  status_ = decode_status(status);
  return *status_;
}

}  // namespace stallmon::testbed
