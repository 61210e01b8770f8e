// SPDX-License-Identifier: Apache-2.0
// stallctl subcommands. Each registers itself on the CLI11 app and returns the process exit
// code from its run function: 0 success, 1 failure (message on stderr), 2 usage.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace stallmon::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Adds the subcommand; `run` is set to its action (called after parsing when it was chosen).
void add_inspect_command(CLI::App& app, std::function<int()>& run);
void add_dump_command(CLI::App& app, std::function<int()>& run);
void add_ram_layout_command(CLI::App& app, std::function<int()>& run);
void add_profile_command(CLI::App& app, std::function<int()>& run);

}  // namespace stallmon::cli
