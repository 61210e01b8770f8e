// SPDX-License-Identifier: Apache-2.0
// Runs a command with a deadline and captures its output (stallctl shells out to `virsh
// qemu-monitor-command` until the agent's libvirt library offers the same). A command still
// running at the deadline is killed: a hung QEMU monitor must never hang stallctl.
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
