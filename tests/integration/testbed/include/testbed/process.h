// Subprocesses for the testbed fixture: run-to-completion with a timeout, and long-running
// children that hold a stdin pipe (fault injectors, domain guards).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace stallmon::testbed {

struct ProcessResult {
  int exit_code = -1;  // exit status, or 128+signal; -1 if it timed out (then killed)
  bool timed_out = false;
  std::string out;
  std::string err;
};

// Runs argv (argv[0] looked up in PATH) with stdin from /dev/null, collects stdout/stderr.
// On timeout the child is killed with SIGKILL.
ProcessResult run_process(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);

// A child with a pipe on its stdin and stdout; closing stdin is the child's cue to finish.
// Every fd is close-on-exec, so other children never inherit the pipe ends.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv);
  ~Child();  // close_stdin() + wait (SIGKILL after 30 s)
  Child(Child&&) noexcept;
  Child& operator=(Child&&) noexcept;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  // Next stdout line (without '\n'), or nullopt on EOF/timeout.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout);
  void close_stdin();
  // Waits for exit; SIGKILL after timeout. Returns exit code (128+signal if killed).
  int wait(std::chrono::milliseconds timeout);
  // Everything the child wrote to stderr so far (drained on wait).
  const std::string& err() const { return err_; }

 private:
  void drain(int timeout_ms);
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1, errfd_ = -1;
  std::string outbuf_, err_;
  std::optional<int> status_;
};

}  // namespace stallmon::testbed
