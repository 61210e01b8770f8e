// SPDX-License-Identifier: Apache-2.0
// A minimal QMP client over a unix socket, for running stallmon without libvirt (a qemu started
// with `-qmp unix:/path,server,nowait`). Do NOT point it at a libvirt-managed qemu's socket:
// libvirt owns that monitor (a second client crashed libvirtd 9.0 in the testbed).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "stallmon/base/result.h"
#include "stallmon/introspect/ram_layout.h"

namespace stallmon::introspect {

// One QMP message (a line of JSON from qemu) as a reply to `command`: the "return" value as
// JSON text, nullopt for an event (skip it), kIo for an "error" reply, kCorrupt for anything
// else. Never throws, whatever the bytes.
Result<std::optional<std::string>> parse_qmp_reply(std::string_view message, std::string_view command);
// The "return" of human-monitor-command (a JSON string) as text.
Result<std::string> parse_hmp_return(std::string_view return_json);

class QmpSocket {
 public:
  // Connects, reads the greeting and negotiates capabilities (`qmp_capabilities`). Every
  // later read and write is bounded by `timeout` (kTimeout), so a qemu whose main loop is
  // stuck cannot hang the caller.
  static Result<std::unique_ptr<QmpSocket>> connect(const std::string& path,
                                                    std::chrono::milliseconds timeout);
  ~QmpSocket();
  QmpSocket(const QmpSocket&) = delete;
  QmpSocket& operator=(const QmpSocket&) = delete;

  // Sends one command (`arguments_json` is a JSON object text, or empty) and returns the
  // "return" member as JSON text. Asynchronous events received meanwhile are skipped; an
  // "error" reply gives kIo with QEMU's description. Replies are bounded (16 MiB).
  Result<std::string> execute(std::string_view command, std::string_view arguments_json = {});

  // Runs an HMP command through `human-monitor-command` and returns its text output.
  Result<std::string> hmp(std::string_view command_line);

  // An HmpCommand (for resolve_ram_layout) bound to this socket; the socket must outlive it.
  HmpCommand as_hmp();

 private:
  QmpSocket(int fd, std::chrono::milliseconds timeout) : fd_(fd), timeout_(timeout) {}
  Result<void> send_line(std::string_view text);
  Result<std::string> read_message();
  int fd_;
  std::chrono::milliseconds timeout_;
  std::string pending_;  // bytes received past the last complete message
};

}  // namespace stallmon::introspect
