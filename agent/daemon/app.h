// SPDX-License-Identifier: Apache-2.0
// stallmond's start-up as an ordered list of steps (Falco's app/ style): each step returns a
// StepResult that says whether to go on, stop successfully, or fail. Later issues add steps
// (sampler, diagnosis, gRPC server) without growing main().
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "domain_table.h"
#include "stallmon/libvirt/domain_watcher.h"

namespace stallmon::daemon {

struct Options {
  std::string connect_uri = "qemu:///system";
  std::string log_level = "info";
  bool once = false;
  int monitor_timeout_ms = 3000;
  int once_timeout_ms = 20000;  // --once: how long to wait for libvirtd and the first discovery
};

struct StepResult {
  enum Kind { kContinue, kExit } kind = kContinue;
  int exit_code = 0;
  std::string error;  // set when exit_code != 0

  static StepResult next() { return {}; }
  static StepResult exit(int code, std::string why = {}) { return {kExit, code, std::move(why)}; }
};


// Everything the steps share.
struct App {
  Options options;
  std::unique_ptr<libvirt::DomainWatcher> watcher;
  std::unique_ptr<DomainTablePrinter> printer;
};

struct Step {
  const char* name;
  StepResult (*run)(App&);
};

// The steps in order; main() runs them until one says exit.
const std::vector<Step>& startup_steps();

// Runs every step, then the shutdown actions. Returns the process exit code.
int run(App& app);

}  // namespace stallmon::daemon
