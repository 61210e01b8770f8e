// SPDX-License-Identifier: Apache-2.0
// stallmond: the hypervisor-side vCPU stall monitor daemon. main() only parses the command line;
// app.cc runs the start-up steps.
#include <CLI/CLI.hpp>

#include "app.h"

int main(int argc, char** argv) {
  stallmon::daemon::App app;
  auto& o = app.options;
  CLI::App cli{"stallmond: watches the vCPU threads of libvirt/QEMU guests"};
  cli.add_option("-c,--connect", o.connect_uri, "libvirt URI")->capture_default_str();
  cli.add_option("--log-level", o.log_level, "trace, debug, info, warn, error, critical or off")
      ->capture_default_str();
  cli.add_flag("--once", o.once, "print the running domains and their vCPU threads, then exit");
  cli.add_option("--monitor-timeout-ms", o.monitor_timeout_ms, "deadline of one QEMU monitor command")
      ->capture_default_str()
      ->check(CLI::Range(100, 600000));
  cli.add_option("--once-timeout-ms", o.once_timeout_ms, "--once: how long to wait for libvirtd")
      ->capture_default_str()
      ->check(CLI::Range(100, 600000));
  CLI11_PARSE(cli, argc, argv);
  return stallmon::daemon::run(app);
}
