// SPDX-License-Identifier: Apache-2.0
// stallctl: the operator's tool. `inspect` reads a guest kernel's state from a live qemu or an
// ELF core without stallmond; later subcommands talk to the daemon.
#include <cstdio>

#include "commands.h"
#include "stallmon/server/client_commands.h"

int main(int argc, char** argv) {
  CLI::App app{"stallctl: look inside a stalled guest from the host"};
  app.require_subcommand(1);
  std::function<int()> run;
  stallmon::cli::add_inspect_command(app, run);
  stallmon::cli::add_dump_command(app, run);
  stallmon::cli::add_ram_layout_command(app, run);
  stallmon::cli::add_profile_command(app, run);
  stallmon::server::client::register_client_commands(app, run);  // status, domains, vcpus, findings, inspect DOMAIN
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    (void)app.exit(e);
    return stallmon::cli::kExitUsage;
  }
  if (!run) return stallmon::cli::kExitUsage;
  return run();
}
