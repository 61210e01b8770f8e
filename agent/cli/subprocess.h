// SPDX-License-Identifier: Apache-2.0
// Runs a command with a deadline and captures its output. A command still running at the
// deadline is killed. stallctl itself no longer runs any command (it reaches libvirt read-only
// through the agent's libvirt layer, never through virsh or the QEMU monitor); the tests use this
// to drive stallctl and virsh with a bound.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "stallmon/base/result.h"

namespace stallmon::cli {

struct CommandOutput {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// kTimeout when the deadline passes (the child is SIGKILLed), kIo when it cannot be started.
// Output is capped at 64 MiB per stream.
Result<CommandOutput> run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);

}  // namespace stallmon::cli
