// SPDX-License-Identifier: Apache-2.0
// stallctl's daemon-talking subcommands: status, domains, vcpus DOMAIN, findings, and
// `inspect DOMAIN` (a positional DOMAIN added to the local `inspect` subcommand, which keeps
// --core/--qemu-pid/--domain for reading guests without the daemon).
//
// Each prints a table, or JSON with --json (the stallmon.v1 messages in proto3 JSON form, field
// names as in the .proto). Connection: --socket PATH (default /run/stallmon/stallmond.sock, or
// $STALLMON_SOCKET), or --tcp HOST:PORT with --cert/--key/--ca for mutual TLS.
//
// Exit codes: 0 ok, 1 failure (the RPC's error on stderr), 2 usage, 3 stallmond not running
// (no socket, connection refused, TCP unreachable).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace stallmon::server::client {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNotRunning = 3;

// Adds the subcommands to stallctl's app; `run` is set to the chosen one's action after parsing
// (the same convention as agent/cli/commands.h). Call after the local commands were added: it
// extends an existing `inspect` subcommand (and installs a final callback on `app` that routes
// `inspect DOMAIN` to the daemon).
void register_client_commands(CLI::App& app, std::function<int()>& run);

}  // namespace stallmon::server::client
